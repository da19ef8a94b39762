package aside

import "context"

// leaseScript is a lease script on the wire, which the calls of this
// process that miss the same key meanwhile share instead of sending their
// own: a stampede of N goroutines costs each process one script, not N,
// and the holder's answer no longer queues behind N-1 others in Redis and
// in the client, so its load starts sooner.
//
// Only a lease of its answer is shared, never a value: a hit was read
// before the sharing caller arrived, perhaps before an invalidation that
// returned since, and would be stale (as a batch already sent, T21); the
// caller reads again instead. Shared are the lease the script took — its
// flight starts after the sharers arrived, and an invalidation before that
// revoked the lease, so the fill's compare-and-set fails and a joiner reads
// again — and another process's lease it found, waited on
// through polls and announcements issued after the sharer registered. Not a
// flight of this process it found: see shareAnswer.
type leaseScript struct {
	done  chan struct{} // closed when the answer is in
	token string        // the lease its sender took, or found held by another process; "" for any other answer
	hit   []byte        // the broken variant's: a hit, shared
}

// planLeaseScripts returns the misses that send their own lease script,
// misses itself when none shares one. A miss whose key's script is on the
// wire shares it (cl.shares); one whose key has none registers its own for
// others to share (cl.script). A call that must drop bytes it read (raw)
// shares none.
func (c *Cache[T]) planLeaseScripts(misses []*call[T]) (send []*call[T]) {
	sharing := 0
	c.mu.Lock()
	for _, cl := range misses {
		cl.script, cl.shares = nil, nil
		if variantOn(c.hooks, vOwnLeaseScript) {
			continue
		}
		switch s := c.scripts[cl.rk]; {
		case s == nil:
			cl.script = &leaseScript{done: make(chan struct{})}
			c.scripts[cl.rk] = cl.script
		case cl.raw == nil:
			cl.shares = s
			sharing++
		}
	}
	c.mu.Unlock()
	for _, cl := range misses {
		leaseScriptArrival(c.hooks, cl.rk, cl.shares != nil)
	}
	if sharing == 0 {
		return misses
	}
	send = make([]*call[T], 0, len(misses)-sharing)
	for _, cl := range misses {
		if cl.shares == nil {
			send = append(send, cl)
		}
	}
	return send
}

// shareAnswer keeps the answer of cl's script for the calls sharing it:
// the lease cl took, or the one it found (waited, a WAIT answer) unless
// that lease is a flight of this process. A caller may join a local flight
// only if it saw the lease held after it arrived: then the flight's fill
// comes after its arrival, and so after any invalidation that had returned.
// A sharer did not — the script may have been answered before it arrived
// (its reply read late on a busy machine), the flight filled and an
// invalidation returned since, leaving the flight valid with an old value:
// 1 stale read in ~100 000 in TestStaleSetRaceHotKeys before this rule. So
// a sharer waits only on another process's lease, through polls issued
// after it registered, and on a local one reads again. The lease cl took
// itself is safe to share: its flight starts after the sharers arrived.
func (c *Cache[T]) shareAnswer(cl *call[T], token string, waited bool, hit []byte) {
	s := cl.script
	if s == nil {
		return
	}
	if waited && !variantOn(c.hooks, vShareLocalWait) {
		if c.flightOf(token) != nil {
			return
		}
	}
	s.token = token
	if variantOn(c.hooks, vShareScriptHit) {
		s.hit = hit
	}
}

// endLeaseScript hands cl's script's answer to the calls that share it.
func (c *Cache[T]) endLeaseScript(cl *call[T]) {
	s := cl.script
	if s == nil {
		return
	}
	cl.script = nil
	c.mu.Lock()
	if c.scripts[cl.rk] == s {
		delete(c.scripts, cl.rk)
	}
	c.mu.Unlock()
	close(s.done)
}

// takeSharedLease waits, on cl's ctx, for the answer of the script cl
// shares, and takes its lease to wait on; without one, cl reads again. A
// caller that gives up meanwhile is answered with its ctx's error: the
// script's own sender holds whatever it took. first: cl started at the
// script, so it has read no tag tokens; it reads them now, after it
// arrived and while the script is on the wire, as its own script's
// pipeline would have (a token that cannot be read counts as missing,
// fail-safe as there: see leaseWithTokens).
func (c *Cache[T]) takeSharedLease(ctx context.Context, cl *call[T], src source[T], first bool) {
	s := cl.shares
	cl.shares, cl.raw, cl.token = nil, nil, ""
	if first && len(cl.tags) > 0 {
		tokens, err := c.store.fetchTokens(ctx, cl.tags)
		if err != nil {
			tokens = make([]string, len(cl.tags))
		}
		cl.snap = tagSnap{names: cl.tags, tokens: tokens}
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		var zero T
		cl.finish(zero, ctx.Err())
		return
	}
	if s.hit != nil && c.serve(ctx, cl, s.hit, src) { // the broken variant
		return
	}
	if s.token != "" {
		c.count(cl, &c.stats.misses) // a read that started at the script has counted nothing yet
		c.stats.sharedScripts.Add(1)
		cl.token = s.token
	}
}
