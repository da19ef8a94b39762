package aside

import (
	"time"

	"github.com/asidecache/aside/internal/bus"
	"github.com/asidecache/aside/internal/l1"
	"github.com/redis/go-redis/v9"
)

// testHooks are the tests' side of the seams (seams.go): they force
// interleavings and switch on deliberately broken variants, so that each
// test of a guarantee is seen to fail without it. The protocol reaches the
// same points whatever the read path (Get, GetMany, refresh). Compiled only
// into tests.
type testHooks struct {
	// Interleavings: after a load, before and after its fill (the flight
	// not yet ended), before a poll read, between a Redis read and its L1
	// fill.
	AfterLoad, BeforeFill, AfterFill, BeforePoll func(rk string)
	BeforeJoin                                   func(rk string) // a caller that found a lease held, before it looks for the attempt here
	BeforeL1Fill                                 func(key string)
	BeforeApply                                  func() // before a heard invalidation is applied
	// Coalesced reads: every read goes in a batch (none on its own), so that
	// tests can drive the batch path; before a batch's own goroutine claims
	// it to send it (readers gather meanwhile, up to batchReaders: the one
	// that fills it sends it); once its answer is in, before its readers
	// take it, with the keys it read (each once).
	BatchEveryRead   bool
	BeforeBatchClaim func()
	AfterBatchRead   func(keys []string)
	// ReadFirst: reads never start with the lease script, whatever the
	// cache's recent misses (read.go), for tests of the read step's own
	// interleavings. (A call starts with it through LeaseFirstCall.)
	ReadFirst bool

	// Broken variants of the lease protocol.
	UnconditionalFill bool // T1/T2: write a loaded value even if its lease was revoked
	KeepLeaseOnError  bool // T6: a failed load keeps its lease; waiters sit out the budget
	KeepOwedLeases    bool // T22: a lease whose fill or release did not reach Redis stays until it expires
	LongLeases        bool // T25: leases live LoadTimeout and more, unrenewed: a dead or restored lease is waited on for seconds
	NoLeaseRenewal    bool // T26: short leases are not renewed: a live holder of a long load loses its lease
	TokensAfterLoad   bool // T4: read tag tokens after the load instead of before
	Naive             bool // T3: plain cache-aside with one singleflight per key (export_test.go)
	JoinAnyResult     bool // T12: a joiner takes the flight's not-found without checking it
	BudgetOnlyAcross  bool // WaitBudget bounds waits on other processes only
	AcquireOnCaller   bool // the lease script runs on the caller's ctx; a lease taken as it ends is orphaned
	DegradedBackward  bool // T15: degraded reads join a load already running
	NoFillWake        bool // T19: a fill that callers wait on does not announce itself; they learn of it by polling
	JoinSentBatch     bool // T21: a read joins a batch already sent that reads its key, and takes its answer
	BatchOnCaller     bool // a batch is sent on its first reader's context: that reader's cancellation fails the others' reads
	OneBatch          bool // T27: on a Cluster, reads of every master share one batch: a stalled master delays the others' keys
	OwnLeaseScript    bool // every miss sends its own lease script, none shares another's on the wire
	ShareScriptHit    bool // a call that shares another's lease script takes its hit, read before it arrived
	ShareLocalWait    bool // a call that shares another's lease script takes its WAIT on a flight of this process, and joins it
	ResendAllScripts  bool // after a NOSCRIPT, a pipeline's entry scripts all go again, those that ran too
	ForgetEnded       bool // an attempt that ended is no longer found by token: a caller whose read saw its lease polls Redis
	// LeaseScriptArrival is called when a lone call's miss comes to the lease
	// script: shared, it waits for another call's script on the wire;
	// otherwise it is about to send its own.
	LeaseScriptArrival func(rk string, shared bool)
	// PollEvery, when set, replaces the pollers' intervals: a test of the
	// wake-up makes them long, so that only the announcement can be quick.
	PollEvery time.Duration

	// Broken variants of L1 and the bus.
	UncheckedL1    bool // T8: fill L1 without the generation check
	CallTagsOnly   bool // T11: guard an entry by the tags the call named only, in L1 and when a refresh rewrites it
	KeylessPublish bool // T17: publishes (the tell script too) routed as go-redis routes a keyless command
	NoHeartbeat    bool // T16: trust the subscription's connection, not heartbeats
	NoAckWait      bool // T18: an invalidation returns without waiting for other Stores' L1
	NoLeaseCheck   bool // T18: an L1 hit does not check the Store's lease
	// SubscribeVia, when set, carries the bus's subscriptions until a
	// heartbeat goes unheard: a client of one fixed node, as when go-redis
	// resubscribes to a node it has not yet learnt is no longer master (T16).
	SubscribeVia redis.UniversalClient

	// Broken variants of the Store.
	CounterTokens  bool   // T5: tag tokens are counters, which eviction can make valid again
	PurgeOnePass   bool   // T24: Purge scans once: a fill that lands behind the scan survives it
	AfterPurgeScan func() // after each SCAN of a Purge, before its UNLINKs
	CutAtOpTimeout bool   // T23: every Redis call ends at the op timeout: none waits out a stall
	RawMissValue   bool   // a miss returns the loader's value, not the one its hits will decode
	PersistentTags bool   // tag keys are created without a life, and never given one
	NoTagExtension bool   // a fill does not extend the life of the tag keys its entry recorded
	WaitsAsMisses  bool   // a read answered by another caller's load stays counted as a miss
	NoNodeBreakers bool   // T28: no node's breaker opens: a hung master's keys cost every read a call's timeout
	CallerProbe    bool   // T10: the breaker's probe runs on the caller's ctx and keeps its slot when cut short
	CallerDone     bool   // an op context's Done is the caller's: dials and pool waits outlast the op timeout
	CountEachRead  bool   // every Redis read of a call counts an outcome: a waited miss is a hit as well
	// T29: an invalidation reaches the versions of the caches this Store
	// created only, not the other versions in use (a rolling deploy's).
	OwnVersionsOnly bool
	// An invalidation that fewer replicas than WithReplicaWait asks
	// acknowledged returns as if all had.
	IgnoreReplicas bool
	// T20: an invalidation neither waits for a replay of earlier failed
	// ones that is running, nor fails when theirs fails (as in v1).
	UnorderedReplay bool
	BeforeReplay    func() // once a replay holds the queue, before it writes

}

// reached calls the hook of point p, if set.
func (h *testHooks) reached(p point, name string) {
	call := func(f func(string)) {
		if f != nil {
			f(name)
		}
	}
	call0 := func(f func()) {
		if f != nil {
			f()
		}
	}
	switch p {
	case pAfterLoad:
		call(h.AfterLoad)
	case pBeforeFill:
		call(h.BeforeFill)
	case pBeforeJoin:
		call(h.BeforeJoin)
	case pBeforePoll:
		call(h.BeforePoll)
	case pAfterFill:
		call(h.AfterFill)
	case pBeforeBatchClaim:
		call0(h.BeforeBatchClaim)
	case pBeforeReplay:
		call0(h.BeforeReplay)
	case pAfterPurgeScan:
		call0(h.AfterPurgeScan)
	}
}

// on reports whether variant v is switched on.
func (h *testHooks) on(v variant) bool {
	switch v {
	case vBatchEveryRead:
		return h.BatchEveryRead
	case vJoinSentBatch:
		return h.JoinSentBatch
	case vBatchOnCaller:
		return h.BatchOnCaller
	case vOneBatch:
		return h.OneBatch
	case vUnorderedReplay:
		return h.UnorderedReplay
	case vUnconditionalFill:
		return h.UnconditionalFill
	case vKeepLease:
		return h.KeepLeaseOnError
	case vKeepOwedLeases:
		return h.KeepOwedLeases
	case vLongLeases:
		return h.LongLeases
	case vNoLeaseRenewal:
		return h.NoLeaseRenewal
	case vTokensAfterLoad:
		return h.TokensAfterLoad
	case vJoinAnyResult:
		return h.JoinAnyResult
	case vBudgetOnlyAcross:
		return h.BudgetOnlyAcross
	case vAcquireOnCaller:
		return h.AcquireOnCaller
	case vDegradedBackward:
		return h.DegradedBackward
	case vOwnLeaseScript:
		return h.OwnLeaseScript
	case vShareScriptHit:
		return h.ShareScriptHit
	case vShareLocalWait:
		return h.ShareLocalWait
	case vResendAllScripts:
		return h.ResendAllScripts
	case vForgetEnded:
		return h.ForgetEnded
	case vCallTagsOnly:
		return h.CallTagsOnly
	case vOwnVersionsOnly:
		return h.OwnVersionsOnly
	case vIgnoreReplicas:
		return h.IgnoreReplicas
	case vCounterTokens:
		return h.CounterTokens
	case vCallerProbe:
		return h.CallerProbe
	case vCutAtOpTimeout:
		return h.CutAtOpTimeout
	case vRawMissValue:
		return h.RawMissValue
	case vPersistentTags:
		return h.PersistentTags
	case vNoTagExtension:
		return h.NoTagExtension
	case vWaitsAsMisses:
		return h.WaitsAsMisses
	case vNoNodeBreakers:
		return h.NoNodeBreakers
	case vPurgeOnePass:
		return h.PurgeOnePass
	case vCallerDone:
		return h.CallerDone
	case vCountEachRead:
		return h.CountEachRead
	case vReadFirst:
		return h.ReadFirst
	}
	return false
}

func (h *testHooks) batchRead(keys []string) {
	if h.AfterBatchRead != nil {
		h.AfterBatchRead(keys)
	}
}

func (h *testHooks) leaseScriptArrival(rk string, shared bool) {
	if h.LeaseScriptArrival != nil {
		h.LeaseScriptArrival(rk, shared)
	}
}

func (h *testHooks) pollEvery() time.Duration { return h.PollEvery }

// busSeams are the hooks' side of the bus's seams (internal/bus).
type busSeams struct{ h *testHooks }

func (b busSeams) Variant(v bus.Variant) bool {
	switch v {
	case bus.KeylessPublish:
		return b.h.KeylessPublish
	case bus.NoHeartbeat:
		return b.h.NoHeartbeat
	case bus.NoAckWait:
		return b.h.NoAckWait
	case bus.NoLeaseCheck:
		return b.h.NoLeaseCheck
	case bus.NoFillWake:
		return b.h.NoFillWake
	}
	return false
}

func (b busSeams) BeforeApply() {
	if b.h.BeforeApply != nil {
		b.h.BeforeApply()
	}
}

func (b busSeams) SubscribeVia() redis.UniversalClient { return b.h.SubscribeVia }

// L1Seams are the hooks' side of the L1 tier's seams (internal/l1); New
// installs them on the tier of a cache created from a Store with hooks.
func (h *testHooks) L1Seams() l1.Seams { return l1Seams{h} }

type l1Seams struct{ h *testHooks }

func (l l1Seams) BeforeFill(key string) {
	if l.h.BeforeL1Fill != nil {
		l.h.BeforeL1Fill(key)
	}
}

func (l l1Seams) Unchecked() bool { return l.h.UncheckedL1 }
