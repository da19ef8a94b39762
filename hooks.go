package aside

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// testHooks let tests force interleavings and switch on deliberately broken
// variants, so that each test of a guarantee is seen to fail without it.
// This is the one place they live; the protocol calls them at the same
// points whatever the read path (Get, GetMany, refresh). nil in production:
// every method is nil-safe and costs one comparison.
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
	// take it.
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
	// T20: an invalidation neither waits for a replay of earlier failed
	// ones that is running, nor fails when theirs fails (as in v1).
	UnorderedReplay bool
	BeforeReplay    func() // once a replay holds the queue, before it writes

}

func (h *testHooks) afterLoad(rk string) {
	if h != nil && h.AfterLoad != nil {
		h.AfterLoad(rk)
	}
}

func (h *testHooks) beforeFill(rk string) {
	if h != nil && h.BeforeFill != nil {
		h.BeforeFill(rk)
	}
}

func (h *testHooks) beforeJoin(rk string) {
	if h != nil && h.BeforeJoin != nil {
		h.BeforeJoin(rk)
	}
}

func (h *testHooks) beforePoll(rk string) {
	if h != nil && h.BeforePoll != nil {
		h.BeforePoll(rk)
	}
}

func (h *testHooks) beforeL1Fill(key string) {
	if h != nil && h.BeforeL1Fill != nil {
		h.BeforeL1Fill(key)
	}
}

func (h *testHooks) beforeApply() {
	if h != nil && h.BeforeApply != nil {
		h.BeforeApply()
	}
}

func (h *testHooks) beforeBatchClaim() {
	if h != nil && h.BeforeBatchClaim != nil {
		h.BeforeBatchClaim()
	}
}

func (h *testHooks) afterBatchRead(keys []string) {
	if h != nil && h.AfterBatchRead != nil {
		h.AfterBatchRead(keys)
	}
}

func (h *testHooks) batchEveryRead() bool { return h != nil && h.BatchEveryRead }
func (h *testHooks) joinSentBatch() bool  { return h != nil && h.JoinSentBatch }
func (h *testHooks) batchOnCaller() bool  { return h != nil && h.BatchOnCaller }
func (h *testHooks) oneBatch() bool       { return h != nil && h.OneBatch }

func (h *testHooks) unorderedReplay() bool { return h != nil && h.UnorderedReplay }

func (h *testHooks) beforeReplay() {
	if h != nil && h.BeforeReplay != nil {
		h.BeforeReplay()
	}
}

func (h *testHooks) unconditionalFill() bool { return h != nil && h.UnconditionalFill }
func (h *testHooks) keepLease() bool         { return h != nil && h.KeepLeaseOnError }
func (h *testHooks) keepOwedLeases() bool    { return h != nil && h.KeepOwedLeases }
func (h *testHooks) longLeases() bool        { return h != nil && h.LongLeases }
func (h *testHooks) noLeaseRenewal() bool    { return h != nil && h.NoLeaseRenewal }
func (h *testHooks) tokensAfterLoad() bool   { return h != nil && h.TokensAfterLoad }
func (h *testHooks) joinAnyResult() bool     { return h != nil && h.JoinAnyResult }
func (h *testHooks) budgetOnlyAcross() bool  { return h != nil && h.BudgetOnlyAcross }
func (h *testHooks) acquireOnCaller() bool   { return h != nil && h.AcquireOnCaller }
func (h *testHooks) degradedBackward() bool  { return h != nil && h.DegradedBackward }
func (h *testHooks) noFillWake() bool        { return h != nil && h.NoFillWake }
func (h *testHooks) ownLeaseScript() bool    { return h != nil && h.OwnLeaseScript }
func (h *testHooks) shareScriptHit() bool    { return h != nil && h.ShareScriptHit }
func (h *testHooks) shareLocalWait() bool    { return h != nil && h.ShareLocalWait }
func (h *testHooks) resendAllScripts() bool  { return h != nil && h.ResendAllScripts }
func (h *testHooks) forgetEnded() bool       { return h != nil && h.ForgetEnded }

func (h *testHooks) afterFill(rk string) {
	if h != nil && h.AfterFill != nil {
		h.AfterFill(rk)
	}
}

func (h *testHooks) leaseScriptArrival(rk string, shared bool) {
	if h != nil && h.LeaseScriptArrival != nil {
		h.LeaseScriptArrival(rk, shared)
	}
}

// pollDelays returns the pollers' first and longest interval.
func (h *testHooks) pollDelays() (first, most time.Duration) {
	if h != nil && h.PollEvery > 0 {
		return h.PollEvery, h.PollEvery
	}
	return pollFirst, pollMax
}
func (h *testHooks) uncheckedL1() bool    { return h != nil && h.UncheckedL1 }
func (h *testHooks) callTagsOnly() bool   { return h != nil && h.CallTagsOnly }
func (h *testHooks) keylessPublish() bool { return h != nil && h.KeylessPublish }
func (h *testHooks) noHeartbeat() bool    { return h != nil && h.NoHeartbeat }
func (h *testHooks) noAckWait() bool      { return h != nil && h.NoAckWait }
func (h *testHooks) noLeaseCheck() bool   { return h != nil && h.NoLeaseCheck }
func (h *testHooks) subscribeVia() redis.UniversalClient {
	if h == nil {
		return nil
	}
	return h.SubscribeVia
}
func (h *testHooks) counterTokens() bool  { return h != nil && h.CounterTokens }
func (h *testHooks) callerProbe() bool    { return h != nil && h.CallerProbe }
func (h *testHooks) cutAtOpTimeout() bool { return h != nil && h.CutAtOpTimeout }
func (h *testHooks) rawMissValue() bool   { return h != nil && h.RawMissValue }
func (h *testHooks) persistentTags() bool { return h != nil && h.PersistentTags }
func (h *testHooks) noTagExtension() bool { return h != nil && h.NoTagExtension }
func (h *testHooks) waitsAsMisses() bool  { return h != nil && h.WaitsAsMisses }
func (h *testHooks) noNodeBreakers() bool { return h != nil && h.NoNodeBreakers }
func (h *testHooks) purgeOnePass() bool   { return h != nil && h.PurgeOnePass }

func (h *testHooks) afterPurgeScan() {
	if h != nil && h.AfterPurgeScan != nil {
		h.AfterPurgeScan()
	}
}
func (h *testHooks) callerDone() bool    { return h != nil && h.CallerDone }
func (h *testHooks) countEachRead() bool { return h != nil && h.CountEachRead }
func (h *testHooks) readFirst() bool     { return h != nil && h.ReadFirst }
