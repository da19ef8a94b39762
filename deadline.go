package aside

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// The deadline of one Redis call. go-redis bounds a call by its context in
// two ways: the socket's read and write deadlines come from Deadline
// (ContextTimeoutEnabled; without it [NewStore] demands socket timeouts
// within the op timeout), and every wait that is not on a socket — for a
// connection from a full pool, for a dial and between dial retries (five
// dials 100 ms apart by default when Redis refuses connections) — ends
// when Done closes. A timer per call would close Done, at five allocations
// and a timer-heap update on every hit; instead the calls whose deadlines
// fall in the same millisecond share one channel, closed by one timer.

// opContext derives the context of one Redis call: the caller's values,
// with a deadline no later than the call timeout — the op timeout and the
// stall tolerance. A call that Redis answers late (a stall, a busy
// machine) is answered on the connection it was sent on, in its turn:
// abandoning it at the op timeout would close that connection (go-redis
// closes one whose read timed out) and send the call again, after the
// stall, behind every other call's, on a new one.
func (s *Store) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if variantOn(s.hooks, vCutAtOpTimeout) {
		return s.contextWithin(ctx, s.opTimeout) // the broken variant: no call waits out a stall
	}
	return s.contextWithin(ctx, s.opTimeout+s.stallTolerance)
}

// quickContext is opContext for a question to a Redis that is in doubt —
// the breaker's probe, the check of a timeout: it is answered within the
// op timeout or taken as unanswered.
func (s *Store) quickContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return s.contextWithin(ctx, s.opTimeout)
}

// contextWithin derives a call's context with a deadline no later than
// timeout from now.
func (s *Store) contextWithin(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	d := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && !dl.After(d) || ctx.Err() != nil {
		return ctx, noCancel // the caller's own deadline comes first, or it has given up already
	}
	o := &opCtx{Context: ctx, deadline: d}
	if variantOn(s.hooks, vCallerDone) {
		o.done = ctx.Done() // the broken variant: only the caller ends the waits
	} else {
		o.done = s.deadlines.at(d)
	}
	return o, noCancel
}

// opCtx is the caller's context with the call's timeout as its deadline. Done
// closes at the deadline (within a millisecond after it), not when the
// caller cancels: a call whose caller gives up while it waits for a
// connection goes on for its timeout at most, where a channel of its own
// per call would cost what the shared one saves. A caller that has given
// up before the call gets no opCtx (the call ends at once), Err reports a
// cancellation at once, and aside's own waits are on the caller's context.
type opCtx struct {
	context.Context
	deadline time.Time
	done     <-chan struct{}
}

func (c *opCtx) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *opCtx) Done() <-chan struct{}       { return c.done }

func (c *opCtx) Err() error {
	if err := c.Context.Err(); err != nil {
		return err
	}
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func noCancel() {}

// caller returns the caller's context under an op context.
func caller(octx context.Context) context.Context {
	if o, ok := octx.(*opCtx); ok {
		return o.Context
	}
	return octx
}

// detachedOpContext is opContext for calls whose result must be known
// whatever the caller does: calls that create state in Redis (a lease), or
// that the Store makes for itself (the probe, the replay).
func (s *Store) detachedOpContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return s.opContext(context.WithoutCancel(ctx))
}

// deadlineTick is the granularity of shared deadlines: a call's Done
// closes at most this long after its deadline.
const deadlineTick = time.Millisecond

// deadlines hands out channels that close at the end of a tick, one per
// tick, kept in a ring: deadlines are a call's timeout from now, so the ticks
// asked for move forward together and a slot is reused long after its tick
// has passed. A slot taken over by another tick only costs a second
// channel for a late asker; each channel still closes at its own tick.
type deadlines struct {
	mu    sync.Mutex // serialises the creation of a tick's channel
	slots [64]atomic.Pointer[deadlineTickCh]
}

type deadlineTickCh struct {
	tick int64 // deadlineTick units since the Unix epoch
	ch   chan struct{}
}

// at returns a channel that closes at the end of the tick holding t.
func (d *deadlines) at(t time.Time) <-chan struct{} {
	tick := t.UnixNano()/int64(deadlineTick) + 1
	slot := &d.slots[tick%int64(len(d.slots))]
	if e := slot.Load(); e != nil && e.tick == tick {
		return e.ch
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if e := slot.Load(); e != nil && e.tick == tick {
		return e.ch
	}
	e := &deadlineTickCh{tick: tick, ch: make(chan struct{})}
	slot.Store(e)
	time.AfterFunc(time.Until(time.Unix(0, tick*int64(deadlineTick))), func() { close(e.ch) })
	return e.ch
}
