package aside

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// An invalidation that could not reach Redis is returned as an error and
// queued here; the queue is replayed before the Store reads Redis again. A
// Redis restored from an older snapshot, or one whose DEL was lost in a
// failover, would otherwise serve the invalidated values.

// pendingOp is an invalidation that could not reach Redis: a key to delete
// or a tag whose token to replace.
type pendingOp struct {
	tag   bool
	name  string // the Redis key, or the tag
	cache string // for a key: its cache and user key, to tell the other Stores' L1
	key   string
}

func pendingKeys(cache string, keys, rks []string) []pendingOp {
	ops := make([]pendingOp, len(rks))
	for i, rk := range rks {
		ops[i] = pendingOp{name: rk, cache: cache, key: keys[i]}
	}
	return ops
}

func pendingTags(tags []string) []pendingOp {
	ops := make([]pendingOp, len(tags))
	for i, t := range tags {
		ops[i] = pendingOp{tag: true, name: t}
	}
	return ops
}

// maxPending bounds the replay queue. Past it the Store can no longer
// vouch for what Redis holds, and it stops reading from Redis (every read
// goes to its loader) until the process restarts — a safe, loud fallback.
const maxPending = 100_000

// replayQueue holds the invalidations that failed.
type replayQueue struct {
	mu        sync.Mutex  // protects ops and overflow
	ops       []pendingOp // in the order they failed
	overflow  bool
	n         atomic.Int64 // len(ops), or -1 after an overflow: read on every Get without the lock
	replaying atomic.Bool  // one replay at a time
}

func (q *replayQueue) add(ops []pendingOp) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.overflow {
		return
	}
	if len(q.ops)+len(ops) > maxPending {
		q.overflow, q.ops = true, nil
		q.n.Store(-1)
		return
	}
	q.ops = append(q.ops, ops...)
	q.n.Store(int64(len(q.ops)))
}

// Pending reports how many failed invalidations wait to be replayed, and
// whether the queue overflowed (the Store then no longer reads from Redis).
func (s *Store) Pending() (n int, overflowed bool) {
	v := s.pending.n.Load()
	return int(max(v, 0)), v < 0
}

// replayPending replays the queued invalidations, deleting keys and
// replacing tag tokens, and tells the other Stores' L1. It reports whether
// the queue is empty afterwards. One caller replays at a time, on a context
// no caller can cut short; the others are served by their loaders meanwhile.
func (s *Store) replayPending(ctx context.Context) bool {
	n := s.pending.n.Load()
	if n == 0 {
		return true
	}
	if n < 0 || !s.pending.replaying.CompareAndSwap(false, true) {
		return false
	}
	defer s.pending.replaying.Store(false)
	s.pending.mu.Lock()
	ops := append([]pendingOp(nil), s.pending.ops...)
	s.pending.mu.Unlock()
	octx, cancel := s.detachedOpContext(ctx)
	defer cancel()
	_, err := s.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		var tags []string
		keys := map[string][]string{} // by cache
		for _, op := range ops {
			if op.tag {
				p.Set(octx, tagKey(s.prefix, op.name), newTagToken(), 0)
				tags = append(tags, op.name)
			} else {
				p.Del(octx, op.name, leaseKey(op.name))
				keys[op.cache] = append(keys[op.cache], op.key)
			}
		}
		if len(tags) > 0 {
			s.bus.publish(octx, p, s.bus.channel, busMessage{Kind: busTags, Names: tags})
		}
		for cache, names := range keys {
			s.bus.publish(octx, p, s.bus.channel, busMessage{Kind: busKeys, Cache: cache, Names: names})
		}
		return nil
	})
	s.record(octx, err, nil, "")
	if err != nil {
		return false
	}
	s.pending.mu.Lock()
	s.pending.ops = s.pending.ops[len(ops):] // what was added meanwhile stays
	s.pending.n.Store(int64(len(s.pending.ops)))
	s.pending.mu.Unlock()
	s.log(slog.LevelInfo, "aside: replayed invalidations that failed while Redis was unreachable", "count", len(ops))
	return s.pending.n.Load() == 0
}
