package aside

import "time"

// seams are where a test watches the protocol at a point of its choosing,
// or takes one of its protections out to see the test of that protection
// fail without it. Production leaves them nil: each costs one comparison.
// The tests' side — TestHooks, every variant named and documented — is in
// hooks_test.go; only the names of the points and variants live here. The
// bus and the L1 tier have seams of their own (internal/bus, internal/l1),
// installed from the same hooks.
type seams interface {
	reached(p point, name string) // the protocol is at p for name (a Redis key, an L1 key, or "")
	on(v variant) bool            // variant v is switched on
	batchRead(keys []string)      // a coalesced batch's answer is in, before its readers take it
	leaseScriptArrival(rk string, shared bool)
	pollEvery() time.Duration // replaces the pollers' intervals when > 0
}

// point names a place in the protocol where a test may interleave.
type point uint8

// The points (hooks_test.go says where each is reached).
const (
	pAfterLoad point = iota
	pBeforeFill
	pBeforeJoin
	pBeforePoll
	pAfterFill
	pBeforeBatchClaim
	pBeforeReplay
	pAfterPurgeScan
)

// variant names a protection a test can take out, or a path a test can
// force (vBatchEveryRead, vReadFirst).
type variant uint8

// The variants (hooks_test.go documents each, with the test it fails).
const (
	vBatchEveryRead variant = iota
	vJoinSentBatch
	vBatchOnCaller
	vOneBatch
	vUnorderedReplay
	vUnconditionalFill
	vKeepLease
	vKeepOwedLeases
	vLongLeases
	vNoLeaseRenewal
	vTokensAfterLoad
	vJoinAnyResult
	vBudgetOnlyAcross
	vAcquireOnCaller
	vDegradedBackward
	vOwnLeaseScript
	vShareScriptHit
	vShareLocalWait
	vResendAllScripts
	vForgetEnded
	vCallTagsOnly
	vCounterTokens
	vCallerProbe
	vCutAtOpTimeout
	vRawMissValue
	vPersistentTags
	vNoTagExtension
	vWaitsAsMisses
	vNoNodeBreakers
	vPurgeOnePass
	vCallerDone
	vCountEachRead
	vReadFirst
	vOwnVersionsOnly
	vIgnoreReplicas
)

// reach tells h that the protocol is at p.
func reach(h seams, p point, name string) {
	if h != nil {
		h.reached(p, name)
	}
}

// variantOn reports whether h switched variant v on.
func variantOn(h seams, v variant) bool { return h != nil && h.on(v) }

func afterBatchRead(h seams, keys []string) {
	if h != nil {
		h.batchRead(keys)
	}
}

func leaseScriptArrival(h seams, rk string, shared bool) {
	if h != nil {
		h.leaseScriptArrival(rk, shared)
	}
}

// pollDelays returns the pollers' first and longest interval.
func pollDelays(h seams) (first, most time.Duration) {
	if h != nil {
		if d := h.pollEvery(); d > 0 {
			return d, d
		}
	}
	return pollFirst, pollMax
}
