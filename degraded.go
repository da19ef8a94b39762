package aside

import "context"

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
	case variantOn(c.hooks, vDegradedBackward): // the broken variant: join the load already running
		l = k.running
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
