package aside

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/asidecache/aside/internal/bus"
	"github.com/redis/go-redis/v9"
)

// An invalidation that could not reach Redis is returned as an error and
// queued here; the queue is replayed before the Store reads Redis again. A
// Redis restored from an older snapshot, or one whose DEL was lost in a
// failover, would otherwise serve the invalidated values.

// pendingOp is an invalidation that could not reach Redis: a key of a
// cache to delete (in every version in use, read when it is replayed) or a
// tag whose token to replace.
type pendingOp struct {
	tag   bool
	name  string // the tag
	cache string // the key's cache and the key, as given to Get
	key   string
}

func pendingKeys(cache string, keys []string) []pendingOp {
	ops := make([]pendingOp, len(keys))
	for i, k := range keys {
		ops[i] = pendingOp{cache: cache, key: k}
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
	replaying sync.Mutex   // one replay at a time
	// acking: replays whose writes are in Redis and whose acknowledgements
	// from other Stores' L1 are awaited in the background (a replay a read
	// ran: a read waits for Redis, never for other Stores); each closes
	// when they are in. Guarded by mu.
	acking []chan struct{}
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

// acked waits for the acknowledgements of the replays that reads ran, and
// forgets those that are in.
func (q *replayQueue) acked(ctx context.Context) error {
	q.mu.Lock()
	waits := q.acking
	q.mu.Unlock()
	if len(waits) == 0 {
		return nil
	}
	for _, ch := range waits {
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	q.mu.Lock()
	q.acking = slices.DeleteFunc(q.acking, func(ch chan struct{}) bool { return slices.Contains(waits, ch) })
	q.mu.Unlock()
	return nil
}

// Pending reports how many failed invalidations wait to be replayed, and
// whether the queue overflowed (the Store then no longer reads from Redis).
func (s *Store) Pending() (n int, overflowed bool) {
	v := s.pending.n.Load()
	return int(max(v, 0)), v < 0
}

// replayPending replays the queued invalidations unless another caller is
// replaying them (a read is served by its loader meanwhile). It reports
// whether the queue is empty afterwards.
func (s *Store) replayPending(ctx context.Context) bool {
	return s.pending.n.Load() == 0 || s.replay(ctx, false) == nil
}

// replayFirst replays the queued invalidations before an invalidation of
// this Store, waiting for a replay already running: invalidations take
// effect in the order they were made, so once one returns, every earlier
// one that failed has taken effect too — in Redis and in every Store's L1.
// An error leaves the queue for later; the caller fails and queues its own.
func (s *Store) replayFirst(ctx context.Context) error {
	if err := s.pending.acked(ctx); err != nil {
		return err
	}
	if s.pending.n.Load() <= 0 {
		return nil // nothing queued; or it overflowed, was dropped, and this Store no longer reads Redis
	}
	if variantOn(s.hooks, vUnorderedReplay) {
		s.replayPending(ctx)
		return nil
	}
	err := s.replay(ctx, true)
	for try := 0; errors.Is(err, errReplaying) && try < 3; try++ {
		err = s.replay(ctx, true) // more failed while it replayed: those too
	}
	return err
}

// replay deletes the queued keys and replaces the queued tags' tokens, tells
// every Store's L1 and waits for them as an invalidation does, then drops
// what it replayed from the queue. One caller replays at a time, on a
// context no caller can cut short; wait says whether to wait for the
// replay running now rather than give up.
func (s *Store) replay(ctx context.Context, wait bool) error {
	if wait {
		s.pending.replaying.Lock()
	} else if !s.pending.replaying.TryLock() {
		return errReplaying
	}
	defer s.pending.replaying.Unlock()
	s.pending.mu.Lock()
	ops, overflowed := append([]pendingOp(nil), s.pending.ops...), s.pending.overflow
	s.pending.mu.Unlock()
	if overflowed {
		return errOverflowed
	}
	reach(s.hooks, pBeforeReplay, "")
	if len(ops) == 0 {
		return nil // replayed by the caller we waited for
	}
	var tags []string
	keys := map[string][]string{} // by cache
	var msgs []bus.Message
	for _, op := range ops {
		if op.tag {
			tags = append(tags, op.name)
		} else {
			keys[op.cache] = append(keys[op.cache], op.key)
		}
	}
	if len(tags) > 0 {
		msgs = append(msgs, bus.Message{Kind: bus.KindTags, Names: tags})
	}
	for cache, names := range keys {
		msgs = append(msgs, bus.Message{Kind: bus.KindKeys, Cache: cache, Names: names})
	}
	ctx = context.WithoutCancel(ctx)
	octx, cancel := s.opContext(ctx)
	defer cancel()
	// The versions in use now: a version recorded after this read has no
	// entry loaded before it (versions.go).
	versions, err := s.versionsInUse(octx, slices.Collect(maps.Keys(keys)))
	if err != nil {
		return err
	}
	acks, err := s.bus.WriteAndTell(octx, func(p redis.Pipeliner) {
		for cache, names := range keys {
			s.changeCommands(octx, p, Change{Cache: cache, Keys: names}, versions[cache])
		}
		for _, t := range tags {
			replaceTagToken(octx, p, tagKey(s.prefix, t))
		}
	}, msgs...)
	s.record(octx, err, nil, "")
	if err != nil {
		return err
	}
	var acked chan struct{}
	if wait {
		// Bounded by the other Stores' leases: ctx cannot end.
		if err := acks.Wait(ctx); err != nil {
			return err
		}
	} else if acked = make(chan struct{}); !s.goTracked(func() { defer close(acked); _ = acks.Wait(ctx) }) {
		close(acked)
	}
	s.pending.mu.Lock()
	if !s.pending.overflow { // an overflow meanwhile dropped the queue
		s.pending.ops = s.pending.ops[len(ops):] // what was added meanwhile stays
		s.pending.n.Store(int64(len(s.pending.ops)))
	}
	if acked != nil {
		s.pending.acking = append(s.pending.acking, acked)
	}
	s.pending.mu.Unlock()
	s.log(slog.LevelInfo, "aside: replayed invalidations that failed while Redis was unreachable", "count", len(ops))
	if s.pending.n.Load() > 0 {
		return errReplaying // more failed meanwhile: the next caller replays them
	}
	return nil
}
