package aside

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
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

// usable reports whether this call may use Redis: the breaker lets it, and
// no failed invalidation waits to be replayed (or this call replayed them).
func (s *Store) usable(ctx context.Context) bool {
	return s.redisUp(ctx) && (s.pending.n.Load() == 0 || s.replayPending(ctx))
}

// redisUp reports whether the breaker lets a call through now. The caller
// that finds a probe due sends it — on a context of the Store's, which its
// own cancellation cannot cut short — and uses Redis if it answered.
func (s *Store) redisUp(ctx context.Context) bool {
	use, probe := s.breaker.allow()
	if probe {
		s.probe(ctx)
		use = s.breaker.State() == BreakerClosed
	}
	return use
}

// probe sends the breaker's PING and records its answer. ctx is not used
// for the call, only by the broken variant the tests switch on.
func (s *Store) probe(ctx context.Context) {
	pctx := context.Background()
	if s.hooks.callerProbe() {
		pctx = ctx
	}
	octx, cancel := s.quickContext(pctx)
	defer cancel()
	err := s.rdb.Ping(octx).Err()
	switch {
	case cutShort(octx, err):
		if !s.hooks.callerProbe() { // the broken variant keeps the slot: stuck half-open
			s.breaker.probeAbandoned()
		}
	case isOutage(err):
		s.breaker.probed(false)
	default:
		s.breaker.probed(true)
	}
}

// record is the one place where the outcome of a Redis call is recorded: in
// the breaker, and — for a failure — in st's counters when st is not nil,
// and as an event. The
// call's own result decides. A call that its caller cut short (octx ended
// for a cause other than the op timeout) says nothing about Redis and is not
// recorded.
func (s *Store) record(octx context.Context, err error, st *counters, cache string) {
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		s.breaker.success()
		return
	case cutShort(octx, err):
		return
	case isOutage(err):
		if c := s.breaker.failure(isTimeout(err) || s.nodes != nil); c != nil {
			s.checkSlow(c)
		}
	default: // an error reply about this command (OOM, NOPERM): the server answers
		s.breaker.success()
	}
	if st != nil {
		st.redisErrors.Add(1)
		if isTimeout(err) {
			st.redisTimeouts.Add(1)
		}
	}
	s.emit(Event{Kind: EventRedisError, Cache: cache, Err: err})
}

// cutShort reports whether a failed call was ended by its caller's context
// rather than by Redis or the op timeout.
func cutShort(octx context.Context, err error) bool {
	if err == nil {
		return false
	}
	ctx := caller(octx)
	if ctx.Err() == nil && isTimeout(err) {
		// The socket deadline was the caller's: the socket can time out a
		// moment before the context's own timer marks it done.
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < 2*time.Millisecond {
			<-ctx.Done()
		}
	}
	return ctx.Err() != nil
}

// isTimeout reports whether err is a deadline: the op timeout, or a socket
// timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// isOutage reports whether err means Redis could not serve the call, as
// opposed to a miss or an error reply about this one command (OOM, NOPERM,
// WRONGTYPE), which a working server sends and which must not open the
// breaker.
func isOutage(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return false
	}
	var reply redis.Error
	if errors.As(err, &reply) {
		for _, p := range []string{"LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY"} {
			if redis.HasErrorPrefix(err, p) {
				return true
			}
		}
		return false
	}
	return true
}

// loadDegraded serves calls while Redis cannot be used: from the loader,
// writing nothing. A lone key shares its load with the other callers of
// this process, forward only (see forwardLoad); a batch makes one loader
// call of its own, which starts after each of its callers arrived.
func (c *Cache[T]) loadDegraded(ctx context.Context, calls []*call[T], src source[T]) {
	for _, cl := range calls {
		cl.outcome = OutcomeDegraded
	}
	if len(calls) == 1 && src.one != nil {
		v, err := c.forwardLoad(ctx, calls[0].rk, src.one)
		calls[0].finish(v, err)
		return
	}
	keys := make([]string, len(calls))
	for i, cl := range calls {
		keys[i] = cl.key
	}
	for i, o := range c.loadFrom(context.WithoutCancel(ctx), src, keys) {
		calls[i].finish(o.v, o.err)
	}
}

// degradedKey is the degraded loads of one key: the one running, and the
// one queued behind it, which callers that arrive meanwhile join.
type degradedKey[T any] struct {
	running, queued *degradedLoad[T]
}

type degradedLoad[T any] struct {
	load Loader[T]
	done chan struct{}
	v    T // written before done is closed
	err  error
}

// forwardLoad shares degraded loads of a key, forward only: a caller joins
// a load that has not started yet — the one queued behind the running load
// — never one already running, which may have read the source before
// another process's invalidation. So at most two loads of a key run or
// wait per process, and none that a caller gets began before it arrived.
func (c *Cache[T]) forwardLoad(ctx context.Context, rk string, load Loader[T]) (T, error) {
	if c.hooks.degradedBackward() { // the broken variant: join whatever runs
		ch := c.hooks.flights.DoChan(rk, func() (any, error) { return timed(context.WithoutCancel(ctx), c, load, nil) })
		r := <-ch
		v, _ := r.Val.(T)
		return v, r.Err
	}
	c.mu.Lock()
	k := c.degraded[rk]
	if k == nil {
		k = &degradedKey[T]{}
		c.degraded[rk] = k
	}
	var l *degradedLoad[T]
	switch {
	case k.running == nil:
		l = &degradedLoad[T]{load: load, done: make(chan struct{})}
		k.running = l
		c.runDegraded(ctx, rk, k, l)
	case k.queued == nil:
		l = &degradedLoad[T]{load: load, done: make(chan struct{})}
		k.queued = l
	default:
		l = k.queued
	}
	c.mu.Unlock()
	select {
	case <-l.done:
		return l.v, l.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// runDegraded starts l, and when it ends the load queued behind it. Called
// with c.mu held.
func (c *Cache[T]) runDegraded(ctx context.Context, rk string, k *degradedKey[T], l *degradedLoad[T]) {
	ctx = context.WithoutCancel(ctx)
	run := func() {
		l.v, l.err = timed(ctx, c, l.load, nil)
		c.mu.Lock()
		k.running, k.queued = k.queued, nil
		if k.running != nil {
			c.runDegraded(ctx, rk, k, k.running)
		} else {
			delete(c.degraded, rk)
		}
		c.mu.Unlock()
		close(l.done)
	}
	if !c.store.goTracked(run) {
		go run() // closed Store: the callers still get their values
	}
}
