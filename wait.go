package aside

import (
	"context"
	"errors"
	"time"
)

// Waiting for a fill attempt: the holder waits for its own load; a caller
// that found another attempt's lease joins it when it runs in this process,
// and otherwise waits through the shared poller of the key. Every wait is
// on the caller's own ctx and within its WaitBudget.

// wait ends a call that holds or waits on a lease, on the caller's own ctx.
// It reports whether the call must read again.
func (c *Cache[T]) wait(ctx context.Context, cl *call[T], src source[T]) (again bool) {
	if f := cl.f; f != nil { // the holder takes its load's result in any case
		cl.f = nil
		select {
		case <-f.loaded: // the fill goes on for the waiters, and keeps the value in L1 if it succeeds
		case <-ctx.Done():
			var zero T
			cl.finish(zero, ctx.Err())
			return false
		}
		cl.finish(f.v, f.err)
		cl.outcome = OutcomeLoaded
		return false
	}
	c.stats.leaseWaits.Add(1)
	token := cl.token
	for {
		reach(c.hooks, pBeforeJoin, cl.rk)
		if f := c.flightOf(token); f != nil {
			return c.join(ctx, cl, f, src)
		}
		if !c.store.redisUp(ctx) {
			// Nobody fills or releases a lease while the Store cannot
			// reach Redis: served as a degraded caller, not left polling.
			c.loadDegraded(ctx, cl.alone(), src)
			return false
		}
		r, err := c.poll(ctx, cl.rk, cl.deadline)
		switch {
		case err != nil:
			var zero T
			cl.finish(zero, err)
			return false
		case r == nil:
			c.budgetSpent(ctx, cl, src)
			return false
		case r.err != nil && isOutage(r.err):
			c.loadDegraded(ctx, cl.alone(), src)
			return false
		case r.kind == replyHit:
			b := c.replyBytes(r.payload)
			if c.serve(ctx, cl, b, src) {
				cl.outcome = OutcomeWaited
				return false
			}
			cl.raw = b
			return true
		case r.kind == replyWait:
			token = r.payload // the same holder, or a new one after it failed
		default:
			return true // freed without a value: read again, maybe take the lease
		}
	}
}

// join waits for a fill attempt of this process that cl found leased,
// within cl's wait budget. A failure carries no data and is shared; a value
// or a not-found only if it was confirmed under its lease and recorded the
// tag tokens cl read — otherwise an invalidation came in between, and cl
// reads again.
func (c *Cache[T]) join(ctx context.Context, cl *call[T], f *flight[T], src source[T]) (again bool) {
	var budget <-chan time.Time
	if !variantOn(c.hooks, vBudgetOnlyAcross) {
		timer := time.NewTimer(time.Until(cl.deadline))
		defer timer.Stop()
		budget = timer.C
	}
	var zero T
	select {
	case <-f.done:
	case <-ctx.Done():
		cl.finish(zero, ctx.Err())
		return false
	case <-budget:
		c.budgetSpent(ctx, cl, src)
		return false
	}
	switch {
	case f.err != nil && !errors.Is(f.err, ErrNotFound):
		cl.finish(zero, f.err)
	case f.err != nil && variantOn(c.hooks, vJoinAnyResult):
		cl.finish(zero, f.err)
	case f.valid && sameTokens(f.tags, cl.snap):
		cl.finish(f.v, f.err)
		cl.outcome = OutcomeWaited
		if f.err == nil {
			cl.l1OK, cl.freshUntil, cl.entryTags = true, f.freshUntil, f.tags
		}
	default:
		return true
	}
	return false
}

// budgetSpent is the way out for a caller whose wait budget is spent: it
// loads by itself, shares nothing and writes nothing.
func (c *Cache[T]) budgetSpent(ctx context.Context, cl *call[T], src source[T]) {
	c.stats.waitTimeouts.Add(1)
	o := c.loadFrom(context.WithoutCancel(ctx), src, []string{cl.key})[0]
	cl.finish(o.v, o.err)
	cl.outcome = OutcomeWaitTimeout // not OutcomeLoaded: no lease covered this load
}

// pollRound is one read of a waited-on key. Waiters register for the next
// round that has not been issued yet, so a result is only handed to waiters
// that were registered before its read went out.
type pollRound struct {
	done    chan struct{}
	kind    int64
	payload string
	err     error
}

type poller struct {
	next *pollRound // waiters register here; nil when nobody waits. Guarded by Cache.mu
}

// poll waits for the next read of rk by this key's shared poller. It
// returns nil, nil when deadline passes first.
func (c *Cache[T]) poll(ctx context.Context, rk string, deadline time.Time) (*pollRound, error) {
	c.mu.Lock()
	p := c.polls[rk]
	if p == nil {
		p = &poller{}
		c.polls[rk] = p
		if !c.store.goTracked(func() { c.runPoller(rk, p) }) {
			delete(c.polls, rk)
			c.mu.Unlock()
			return nil, nil // closed Store: load alone
		}
	}
	if p.next == nil {
		p.next = &pollRound{done: make(chan struct{})}
	}
	r := p.next
	c.mu.Unlock()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-r.done:
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timer.C:
		return nil, nil
	}
}

// Poll intervals: quick at first (most loads are short), backing off so a
// slow load costs few reads. The fill of the lease wakes the poller at once
// (see [bus.announceFills]); the intervals are the fallback when that
// announcement is lost or this Store is not yet listening.
const (
	pollFirst = time.Millisecond
	pollMax   = 10 * time.Millisecond
)

func (c *Cache[T]) runPoller(rk string, p *poller) {
	wake := c.store.bus.Waker(rk)
	delay, most := pollDelays(c.hooks)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
		case <-wake:
		}
		delay = min(delay*3/2, most)
		c.mu.Lock()
		r := p.next
		p.next = nil
		if r == nil {
			delete(c.polls, rk)
			c.store.bus.ForgetWaker(rk, wake)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		reach(c.hooks, pBeforePoll, rk)
		ctx, cancel := c.store.opContext(context.Background())
		res, err := peekScript.Run(ctx, c.store.rdb, []string{rk, leaseKey(rk)}).Slice()
		c.store.record(ctx, err, &c.stats, c.name)
		cancel()
		r.kind, r.payload = parseReply(res, err)
		r.err = err
		close(r.done)
		timer.Reset(delay)
	}
}
