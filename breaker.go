package aside

import (
	"sync/atomic"
	"time"
)

// BreakerState is the state of a Store's circuit breaker.
type BreakerState int32

// The breaker's states. While Open, reads go straight to the loader and
// nothing is written; once the cooldown has passed the Store sends one probe
// of its own (HalfOpen), whose outcome closes or reopens the breaker.
const (
	BreakerClosed BreakerState = iota
	BreakerOpen
	BreakerHalfOpen
)

// String returns closed, open or half-open.
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return "unknown"
}

// breaker judges whether Redis can serve. It is lock-free: allow is on
// every request's path.
//
//	closed    --threshold consecutive outages, one not a timeout-->      open
//	closed    --a timeout, then its check unanswered-->                  open
//	open      --cooldown passed, first allow starts probe-->             half-open
//	half-open --probe answered--> closed   --probe failed--> open
//	half-open --probe cut short--> open, due at once
//
// Slow is not dead. A late answer is what a 300 ms stall, a busy box or a
// GC pause produce as much as a hung server; sending every read to the
// loaders for it moves the outage to the database, the thing the cache
// protects. So every call waits for its answer for the op timeout and the
// stall tolerance (WithStallTolerance; 4 op timeouts by default), on the
// connection it was sent on (opContext), and one that times out even so
// starts a check — one PING allowed the op timeout, one at a time — and the
// breaker opens only if that goes unanswered too (on a Cluster, if no
// master answers it: a stalled master costs its own keys only). An error
// that says the server is gone (refused, reset, closed) counts towards the
// threshold, which opens the breaker at once, as a failed check does.
//
// The probe is a PING on a context of the Store's, sent by the first caller
// after the cooldown: no caller's cancellation can cut it short, so the
// breaker closes within cooldown + op timeout of Redis being healthy (given
// one call), whatever callers do with their contexts.
type breaker struct {
	threshold int32
	cooldown  time.Duration
	// checkWeight is what an unanswered check counts as (the op timeouts
	// it waited); 0: no checks, a timeout counts as any failure does.
	checkWeight int32
	now         func() time.Time
	onChange    func(BreakerState)

	state    atomic.Int32
	failures atomic.Int32
	dead     atomic.Bool               // the current run of failures had one that was not a timeout
	check    atomic.Pointer[slowCheck] // the check of a timeout in flight, if any
	openedAt atomic.Int64              // UnixNano; a probe is due once cooldown has passed
}

// slowCheck is one check of whether Redis, which let a call time out, is
// slow or dead; done is closed once the verdict is in the breaker's state.
type slowCheck struct{ done chan struct{} }

// defaultStallTolerance is the stall tolerance in op timeouts: 400 ms with
// the default op timeout, longer than the stalls a busy Redis or a failover
// of a few hundred milliseconds cause.
const defaultStallTolerance = 4

func newBreaker(threshold int, cooldown time.Duration, onChange func(BreakerState)) *breaker {
	return &breaker{threshold: int32(threshold), cooldown: cooldown, now: time.Now, onChange: onChange}
}

func (b *breaker) State() BreakerState { return BreakerState(b.state.Load()) }

// allow reports whether a Redis call may be made now, and whether the
// caller must start the probe (exactly one caller is told so per cooldown).
func (b *breaker) allow() (use, probe bool) {
	switch BreakerState(b.state.Load()) {
	case BreakerClosed:
		return true, false
	case BreakerOpen:
		due := b.now().UnixNano()-b.openedAt.Load() >= int64(b.cooldown)
		return false, due && b.transition(BreakerOpen, BreakerHalfOpen)
	}
	return false, false // half-open: the probe is in flight
}

// success records a call that Redis answered (a value, a miss, or an error
// reply about that one command).
func (b *breaker) success() {
	if b.failures.Load() != 0 { // a read first: every hit passes here, a store would bounce the cache line between cores
		b.failures.Store(0)
		b.dead.Store(false)
	}
}

// failure records an outage. An error that says the server is gone counts
// towards the threshold, at which the breaker opens. A timeout instead asks
// whether Redis is slow or dead: failure returns the check the caller must
// start, when none is in flight.
func (b *breaker) failure(timeout bool) (start *slowCheck) {
	n := b.failures.Add(1)
	if !timeout || b.checkWeight == 0 {
		b.dead.Store(true)
	}
	if b.dead.Load() {
		if n >= b.threshold {
			b.open(BreakerClosed)
		}
		return nil
	}
	if b.check.Load() != nil {
		return nil
	}
	c := &slowCheck{done: make(chan struct{})}
	if !b.check.CompareAndSwap(nil, c) {
		return nil
	}
	return c
}

// checked records the verdict of check c: Redis answered (slow, not dead),
// or it did not, which counts as checkWeight failures more — the time the
// check waited would have seen as many timeouts — and opens the breaker
// once the threshold is reached.
func (b *breaker) checked(c *slowCheck, answered bool) {
	switch {
	case answered:
		b.success() // the count starts again
	case b.failures.Add(b.checkWeight) >= b.threshold:
		b.open(BreakerClosed)
	}
	b.check.CompareAndSwap(c, nil)
	close(c.done)
}

// probed records the probe's answer.
func (b *breaker) probed(ok bool) {
	if !ok {
		b.open(BreakerHalfOpen)
		return
	}
	b.failures.Store(0)
	b.dead.Store(false)
	b.transition(BreakerHalfOpen, BreakerClosed)
}

// probeAbandoned gives the probe slot back without a verdict: the next
// caller starts a probe at once.
func (b *breaker) probeAbandoned() {
	b.openedAt.Store(b.now().Add(-b.cooldown).UnixNano())
	b.transition(BreakerHalfOpen, BreakerOpen)
}

func (b *breaker) open(from BreakerState) {
	b.openedAt.Store(b.now().UnixNano())
	if b.transition(from, BreakerOpen) {
		b.failures.Store(0)
		b.dead.Store(false)
	}
}

func (b *breaker) transition(from, to BreakerState) bool {
	if !b.state.CompareAndSwap(int32(from), int32(to)) {
		return false
	}
	if b.onChange != nil {
		b.onChange(to)
	}
	return true
}
