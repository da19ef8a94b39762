package aside

import (
	"context"
	"errors"

	"github.com/asidecache/aside/internal/health"
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

// nodesDown reports whether one of keys lives on a node taken for down. A
// caller that finds a node's probe due sends it, on a context of the
// Store's, and uses the node if it answered.
func (s *Store) nodesDown(ctx context.Context, keys ...string) bool {
	if !s.nodesWatched() {
		return false
	}
	for _, k := range keys {
		b := s.nodes.Of(ctx, k)
		if b == nil {
			continue
		}
		use, probe := b.Allow()
		if probe {
			s.probeNode(b)
			use = b.State() == health.Closed
		}
		if !use {
			return true
		}
	}
	return false
}

// probeNode sends a node's probe: a PING to that node alone.
func (s *Store) probeNode(b *health.Node) {
	octx, cancel := s.quickContext(context.Background())
	defer cancel()
	err := b.Client.Ping(octx).Err()
	b.Probed(!isOutage(err))
}

// recordNodes records in the node breakers what Redis answered to calls of
// keys, one error per key (errs). A call that its caller cut short says
// nothing about the node.
func (s *Store) recordNodes(octx context.Context, keys []string, errs func(i int) error) {
	if s.nodes == nil {
		return
	}
	answered := func(err error) bool { return err == nil || errors.Is(err, redis.Nil) || !isOutage(err) }
	if s.nodes.Quiet() { // every breaker is clean: only a failure changes anything
		i := 0
		for i < len(keys) && answered(errs(i)) {
			i++
		}
		if i == len(keys) {
			return
		}
	}
	for i, k := range keys {
		err := errs(i)
		switch {
		case answered(err):
			if b := s.nodes.Of(octx, k); b != nil {
				b.Success()
			}
		case !cutShort(octx, err):
			if b := s.nodes.Of(octx, k); b != nil {
				s.nodes.Failure(b)
			}
		}
	}
	s.nodes.Settle()
}

// nodesWatched reports whether a read must look up its keys' nodes: on a
// Cluster or a Ring, once a node's breaker has recorded a failure, until
// every breaker is clean again.
func (s *Store) nodesWatched() bool {
	return s.nodes != nil && !s.nodes.Quiet() && !variantOn(s.hooks, vNoNodeBreakers)
}

// nodesUp returns the calls whose keys live on nodes taken for up, and
// serves the others from their loaders.
func (c *Cache[T]) nodesUp(ctx context.Context, calls []*call[T], src source[T]) []*call[T] {
	if !c.store.nodesWatched() {
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
// one Redis, and while every node's breaker is clean, it costs a check of
// two counters (no key list is built).
func (c *Cache[T]) onDownNode(ctx context.Context, cl *call[T]) bool {
	return c.store.nodesWatched() && c.store.nodesDown(ctx, c.keysOf(cl)...)
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
