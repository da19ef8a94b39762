// Package health decides whether Redis — and, on a Cluster or a Ring, each
// of its nodes — can serve: circuit breakers that tell a slow Redis from a
// dead one. It knows nothing of caches: the root package feeds it the
// outcome of every call and asks it before each.
package health

import (
	"sync/atomic"
	"time"
)

// State is a breaker's state.
type State int32

// The states. While Open, no call is made; once the cooldown has passed the
// first caller is told to probe (HalfOpen), and the probe's outcome closes
// or reopens the breaker.
const (
	Closed State = iota
	Open
	HalfOpen
)

// String returns closed, open or half-open.
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return "unknown"
}

// Config is what a breaker is built with.
type Config struct {
	Threshold int           // consecutive outages that open it
	Cooldown  time.Duration // how long it stays open before a probe
	// CheckWeight is what an unanswered check of a timeout counts as (the
	// op timeouts it waited); 0: no checks, a timeout counts as any outage.
	CheckWeight int32
	Now         func() time.Time // the clock of the cooldown; time.Now if nil
	OnChange    func(State)      // called on every transition, synchronously
}

// Breaker judges whether Redis (or one node of it) can serve. It is
// lock-free: Allow is on every request's path.
//
//	closed    --threshold consecutive outages, one not a timeout-->      open
//	closed    --a timeout, then its check unanswered-->                  open
//	open      --cooldown passed, first Allow starts probe-->             half-open
//	half-open --probe answered--> closed   --probe failed--> open
//	half-open --probe cut short--> open, due at once
//
// Slow is not dead. A late answer is what a stall, a busy box or a GC pause
// produce as much as a hung server; sending every read to the loaders for
// it moves the outage to the database, the thing the cache protects. So a
// timeout does not count as an outage by itself: it asks for a check (one at
// a time, run by the caller), and only a check that goes unanswered counts,
// as CheckWeight outages. An error that says the server is gone (refused,
// reset, closed) counts at once.
//
// The probe is the caller's to send after Allow told it to, on a context no
// caller can cancel, so that the breaker closes within cooldown + one call
// of Redis being healthy whatever callers do with their contexts.
type Breaker struct {
	threshold   int32
	cooldown    time.Duration
	checkWeight int32 // see Config
	now         func() time.Time
	onChange    func(State)

	state    atomic.Int32
	failures atomic.Int32
	dead     atomic.Bool           // the current run of failures had one that was not a timeout
	check    atomic.Pointer[Check] // the check of a timeout in flight, if any
	openedAt atomic.Int64          // UnixNano; a probe is due once cooldown has passed
}

// Check is one check of whether Redis, which let a call time out, is
// slow or dead; done is closed once the verdict is in the breaker's state.
type Check struct{ done chan struct{} }

func NewBreaker(c Config) *Breaker {
	now := c.Now
	if now == nil {
		now = time.Now
	}
	return &Breaker{threshold: int32(c.Threshold), cooldown: c.Cooldown, checkWeight: c.CheckWeight, now: now, onChange: c.OnChange}
}

// State is the breaker's state now.
func (b *Breaker) State() State { return State(b.state.Load()) }

// Allow reports whether a Redis call may be made now, and whether the
// caller must start the probe (exactly one caller is told so per cooldown).
func (b *Breaker) Allow() (use, probe bool) {
	switch State(b.state.Load()) {
	case Closed:
		return true, false
	case Open:
		due := b.now().UnixNano()-b.openedAt.Load() >= int64(b.cooldown)
		return false, due && b.transition(Open, HalfOpen)
	}
	return false, false // half-open: the probe is in flight
}

// Clean reports whether the breaker is closed with no failure counted: a
// success would change nothing.
func (b *Breaker) Clean() bool { return b.State() == Closed && b.failures.Load() == 0 }

// Success records a call that Redis answered (a value, a miss, or an error
// reply about that one command).
func (b *Breaker) Success() {
	if b.failures.Load() != 0 { // a read first: every hit passes here, a store would bounce the cache line between cores
		b.failures.Store(0)
		b.dead.Store(false)
	}
}

// Failure records an outage. An error that says the server is gone counts
// towards the threshold, at which the breaker opens. A timeout instead asks
// whether Redis is slow or dead: Failure returns the check the caller must
// start, when none is in flight.
func (b *Breaker) Failure(timeout bool) (start *Check) {
	n := b.failures.Add(1)
	if !timeout || b.checkWeight == 0 {
		b.dead.Store(true)
	}
	if b.dead.Load() {
		if n >= b.threshold {
			b.open(Closed)
		}
		return nil
	}
	if b.check.Load() != nil {
		return nil
	}
	c := &Check{done: make(chan struct{})}
	if !b.check.CompareAndSwap(nil, c) {
		return nil
	}
	return c
}

// Checked records the verdict of check c: Redis answered (slow, not dead),
// or it did not, which counts as checkWeight failures more — the time the
// check waited would have seen as many timeouts — and opens the breaker
// once the threshold is reached.
func (b *Breaker) Checked(c *Check, answered bool) {
	switch {
	case answered:
		b.Success() // the count starts again
	case b.failures.Add(b.checkWeight) >= b.threshold:
		b.open(Closed)
	}
	b.check.CompareAndSwap(c, nil)
	close(c.done)
}

// Probed records the probe's answer.
func (b *Breaker) Probed(ok bool) {
	if !ok {
		b.open(HalfOpen)
		return
	}
	b.failures.Store(0)
	b.dead.Store(false)
	b.transition(HalfOpen, Closed)
}

// ProbeAbandoned gives the probe slot back without a verdict: the next
// caller starts a probe at once.
func (b *Breaker) ProbeAbandoned() {
	b.openedAt.Store(b.now().Add(-b.cooldown).UnixNano())
	b.transition(HalfOpen, Open)
}

func (b *Breaker) open(from State) {
	b.openedAt.Store(b.now().UnixNano())
	if b.transition(from, Open) {
		b.failures.Store(0)
		b.dead.Store(false)
	}
}

func (b *Breaker) transition(from, to State) bool {
	if !b.state.CompareAndSwap(int32(from), int32(to)) {
		return false
	}
	if b.onChange != nil {
		b.onChange(to)
	}
	return true
}
