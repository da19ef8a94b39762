package aside

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Health per node. On a Cluster (a Ring), a master (a shard) that is hung
// or gone costs the reads of its own keys, and only until its own breaker
// opens: from then on they are served by their loaders in microseconds,
// while every other node's keys stay on Redis. The Store-wide breaker
// (breaker.go) is for a Redis gone as a whole: on a Cluster or a Ring an
// outage counts towards it only once no node answers its check (answers).
//
// A node's breaker counts the outages of the reads and scripts sent to it —
// a timeout as much as a refused connection, since a call times out only
// after it has waited out what could have been a stall (opContext) — and
// opens at the Store's threshold; after the cooldown the first read of its
// keys sends a PING to that node, which closes it again. A read whose entry
// or tags live on a node taken for down goes to its loader, as a read does
// with the Store's breaker open (degraded, one load per key).

// nodeHealth holds the breakers of a Cluster's masters or a Ring's shards.
type nodeHealth struct {
	clientFor func(ctx context.Context, key string) (*redis.Client, error) // from the client's slot table or hash ring: no round trip
	like      *breaker                                                     // the Store's: node breakers take its threshold, cooldown and clock
	onChange  func(addr string, st BreakerState)

	mu     sync.Mutex                              // serialises additions to byAddr
	byAddr atomic.Pointer[map[string]*nodeBreaker] // copied on write: read on every read of a key
}

// nodeBreaker is the breaker of one node, and the client that probes it.
type nodeBreaker struct {
	*breaker
	client *redis.Client
}

// newNodeHealth returns the node breakers of a Cluster or a Ring client,
// nil for a client of one Redis.
func newNodeHealth(rdb redis.UniversalClient, store *breaker, onChange func(addr string, st BreakerState)) *nodeHealth {
	h := &nodeHealth{like: store, onChange: onChange}
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		h.clientFor = c.MasterForKey
	case *redis.Ring:
		h.clientFor = func(_ context.Context, key string) (*redis.Client, error) { return c.GetShardClientForKey(key) }
	default:
		return nil
	}
	h.byAddr.Store(&map[string]*nodeBreaker{})
	return h
}

// of returns the breaker of the node serving key, nil when the client
// cannot tell (no slot table yet).
func (h *nodeHealth) of(ctx context.Context, key string) *nodeBreaker {
	c, err := h.clientFor(ctx, key)
	if err != nil || c == nil {
		return nil
	}
	addr := c.Options().Addr
	if b := (*h.byAddr.Load())[addr]; b != nil {
		return b
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old := *h.byAddr.Load()
	if b := old[addr]; b != nil {
		return b
	}
	b := &nodeBreaker{breaker: newBreaker(int(h.like.threshold), h.like.cooldown, func(st BreakerState) { h.onChange(addr, st) }), client: c}
	b.now = h.like.now
	m := make(map[string]*nodeBreaker, len(old)+1)
	for a, nb := range old {
		m[a] = nb
	}
	m[addr] = b
	h.byAddr.Store(&m)
	return b
}

// nodesDown reports whether one of keys lives on a node taken for down. A
// caller that finds a node's probe due sends it, on a context of the
// Store's, and uses the node if it answered.
func (s *Store) nodesDown(ctx context.Context, keys ...string) bool {
	if s.nodes == nil || s.hooks.noNodeBreakers() {
		return false
	}
	for _, k := range keys {
		b := s.nodes.of(ctx, k)
		if b == nil {
			continue
		}
		use, probe := b.allow()
		if probe {
			s.probeNode(b)
			use = b.State() == BreakerClosed
		}
		if !use {
			return true
		}
	}
	return false
}

// probeNode sends a node's probe: a PING to that node alone.
func (s *Store) probeNode(b *nodeBreaker) {
	octx, cancel := s.quickContext(context.Background())
	defer cancel()
	err := b.client.Ping(octx).Err()
	b.probed(!isOutage(err))
}

// recordNodes records in the node breakers what Redis answered to calls of
// keys, one error per key (errs). A call that its caller cut short says
// nothing about the node.
func (s *Store) recordNodes(octx context.Context, keys []string, errs func(i int) error) {
	if s.nodes == nil {
		return
	}
	for i, k := range keys {
		err := errs(i)
		switch {
		case err == nil || errors.Is(err, redis.Nil) || !isOutage(err):
			if b := s.nodes.of(octx, k); b != nil {
				b.success()
			}
		case !cutShort(octx, err):
			if b := s.nodes.of(octx, k); b != nil {
				b.failure(false)
			}
		}
	}
}

// nodesUp returns the calls whose keys live on nodes taken for up, and
// serves the others from their loaders.
func (c *Cache[T]) nodesUp(ctx context.Context, calls []*call[T], src source[T]) []*call[T] {
	if c.store.nodes == nil {
		return calls
	}
	var up, down []*call[T]
	for i, cl := range calls {
		if !c.onDownNode(ctx, cl) {
			if down != nil {
				up = append(up, cl)
			}
			continue
		}
		if down == nil {
			up = append(make([]*call[T], 0, len(calls)), calls[:i]...)
		}
		down = append(down, cl)
	}
	if down == nil {
		return calls
	}
	c.stats.skipped.Add(uint64(len(down)))
	c.loadDegraded(ctx, down, src)
	return up
}

// onDownNode reports whether cl reads a key on a node taken for down; on
// one Redis it costs a nil check (no key list is built).
func (c *Cache[T]) onDownNode(ctx context.Context, cl *call[T]) bool {
	return c.store.nodes != nil && c.store.nodesDown(ctx, c.keysOf(cl)...)
}

// keysOf returns the Redis keys a read of cl reads: its entry's and its
// tags'.
func (c *Cache[T]) keysOf(cl *call[T]) []string {
	if len(cl.tags) == 0 {
		return []string{cl.rk}
	}
	keys := make([]string, 0, 1+len(cl.tags))
	keys = append(keys, cl.rk)
	for _, t := range cl.tags {
		keys = append(keys, tagKey(c.store.prefix, t))
	}
	return keys
}
