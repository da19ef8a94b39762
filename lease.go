package aside

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// release gives back the leases of the tasks at idx. A not-found that was
// not stored is confirmed (valid) when its lease was still held. A release
// that did not reach Redis is owed (owed.go).
func (c *Cache[T]) release(ctx context.Context, tasks []leaseTask[T], idx []int) {
	if len(idx) == 0 {
		return
	}
	if !c.store.redisUp(ctx) {
		c.owe(tasks, idx, nil)
		return
	}
	rks := make([]string, len(idx))
	for i, t := range idx {
		rks[i] = tasks[t].rk
	}
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	cmds, err := c.store.evalEntries(octx, releaseScript, rks, func(i int) []any { return []any{tasks[idx[i]].token} })
	c.store.record(octx, err, &c.stats, c.name)
	var waited []string
	for i, t := range idx {
		n, err := cmds[i].Int()
		if err == nil && n >= 1 && errors.Is(tasks[t].f.err, ErrNotFound) {
			tasks[t].f.valid = true
		}
		if err == nil && n == 2 {
			waited = append(waited, rks[i])
		}
	}
	c.owe(tasks, idx, cmds)
	c.store.bus.AnnounceFills(waited)
}

// owe hands the leases of the tasks at idx to the Store's owed leases when
// their command (cmds[i], nil when none was sent) did not reach Redis: a
// failure of the server or the connection, not an error reply. Those leases
// may still be held; their holder is done with them.
func (c *Cache[T]) owe(tasks []leaseTask[T], idx []int, cmds []*redis.Cmd) {
	if variantOn(c.hooks, vKeepOwedLeases) {
		return // the broken variant: a lease outlives its load
	}
	var rks, tokens []string
	for i, t := range idx {
		if cmds != nil && cmds[i] != nil && !isOutage(cmds[i].Err()) {
			continue
		}
		rks, tokens = append(rks, tasks[t].rk), append(tokens, tasks[t].token)
	}
	c.store.owe(rks, tokens, time.Now().Add(c.leaseTTL()))
}

// releaseLater gives back leases whose acquisition timed out: the scripts
// may have run after all, and nobody here holds what they took.
func (c *Cache[T]) releaseLater(rks, tokens []string) {
	c.store.owe(rks, tokens, time.Now().Add(c.leaseTTL()))
}

// leaseTTL is how long a lease lives unless its holder renews it. A holder
// renews it while its loader runs (renewLeases), so a live holder keeps it
// however long the load takes (up to LoadTimeout), while the lease of a
// holder that died — or of one that finished long ago and that a Redis
// restored from an older snapshot brought back — expires within about a
// second, and its waiters take over: nobody waits on a lease that nobody
// will fill. It outlives an op timeout and the stall tolerance, so that a
// stall Redis is judged to survive does not expire live leases, and is
// never longer than the load could make it need.
func (c *Cache[T]) leaseTTL() time.Duration {
	s := c.store
	loadLong := c.profile.LoadTimeout + s.opTimeout + leaseSlack
	if variantOn(c.hooks, vLongLeases) {
		return loadLong // the broken variant: one lease for the whole load, as before renewals
	}
	return min(loadLong, max(s.opTimeout+s.stallTolerance+leaseSlack, 4*s.opTimeout))
}

// renewLeases keeps the tasks' leases alive while their load runs: every
// quarter of the lease's life it extends them, in one round trip, unless the
// load has ended. The returned stop ends the renewals and waits for one in
// flight. A renewal that fails is not retried: the lease may then expire
// and another caller load the key too (a duplicate load, never a stale
// write: the fill is a compare-and-set on the token).
func (c *Cache[T]) renewLeases(tasks []leaseTask[T]) (stop func()) {
	ttl := c.leaseTTL()
	if variantOn(c.hooks, vNoLeaseRenewal) || variantOn(c.hooks, vLongLeases) {
		return func() {}
	}
	var mu sync.Mutex // protects stopped, and orders a renewal before stop returns
	stopped := false
	var timer *time.Timer
	renew := func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		rks := make([]string, len(tasks))
		for i, t := range tasks {
			rks[i] = t.rk
		}
		octx, cancel := c.store.detachedOpContext(context.Background())
		_, err := c.store.evalEntries(octx, renewScript, rks, func(i int) []any { return []any{tasks[i].token, ttl.Milliseconds()} })
		c.store.record(octx, err, &c.stats, c.name)
		cancel()
		timer.Reset(ttl / 4)
	}
	mu.Lock()
	timer = time.AfterFunc(ttl/4, renew)
	mu.Unlock()
	return func() {
		timer.Stop()
		mu.Lock()
		stopped = true
		mu.Unlock()
	}
}
