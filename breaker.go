package aside

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// BreakerState is the state of a Store's circuit breaker.
type BreakerState int32

// The breaker's states. While Open, reads go straight to the loader and
// nothing is written; after the cooldown one probe runs (HalfOpen) and its
// outcome closes or reopens the breaker.
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

// breaker counts consecutive Redis failures. It is lock-free: allow is on
// every request's path.
type breaker struct {
	threshold int32
	cooldown  time.Duration
	now       func() time.Time
	onChange  func(BreakerState)

	state    atomic.Int32
	failures atomic.Int32
	openedAt atomic.Int64 // UnixNano
	probing  atomic.Bool
}

func newBreaker(threshold int, cooldown time.Duration, onChange func(BreakerState)) *breaker {
	return &breaker{threshold: int32(threshold), cooldown: cooldown, now: time.Now, onChange: onChange}
}

func (b *breaker) State() BreakerState { return BreakerState(b.state.Load()) }

// allow reports whether a Redis call may be made now. When the cooldown of
// an open breaker has passed, exactly one caller is let through as a probe.
func (b *breaker) allow() bool {
	switch BreakerState(b.state.Load()) {
	case BreakerClosed:
		return true
	case BreakerOpen:
		if b.now().UnixNano()-b.openedAt.Load() < int64(b.cooldown) {
			return false
		}
		if !b.probing.CompareAndSwap(false, true) {
			return false
		}
		b.transition(BreakerOpen, BreakerHalfOpen)
		return true
	}
	return false // half-open: a probe is in flight
}

// record reports the outcome of a call that allow let through.
func (b *breaker) record(err error) {
	if !isOutage(err) {
		if b.failures.Load() != 0 { // a read first: every hit passes here, a store would bounce the cache line between cores
			b.failures.Store(0)
		}
		if b.State() != BreakerClosed && b.transition(BreakerHalfOpen, BreakerClosed) {
			b.probing.Store(false)
		}
		return
	}
	if b.State() == BreakerHalfOpen {
		b.openedAt.Store(b.now().UnixNano())
		b.transition(BreakerHalfOpen, BreakerOpen)
		b.probing.Store(false)
		return
	}
	if b.failures.Add(1) >= b.threshold {
		b.openedAt.Store(b.now().UnixNano())
		if b.transition(BreakerClosed, BreakerOpen) {
			b.failures.Store(0)
		}
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
		msg := reply.Error()
		for _, p := range []string{"LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	return true
}

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

// replayQueue holds the invalidations that failed, to be replayed before the
// Store reads from Redis again.
type replayQueue struct {
	mu        sync.Mutex
	ops       []pendingOp
	overflow  bool
	n         atomic.Int64 // len(ops), or -1 after an overflow: read on every Get
	replaying atomic.Bool
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

// drained reports whether Redis may be read: nothing waits to be replayed,
// or this call replayed it. One caller replays at a time; the others are
// served by their loaders meanwhile.
func (s *Store) drained(ctx context.Context) bool {
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
	octx, cancel := s.opContext(context.WithoutCancel(ctx))
	defer cancel()
	_, err := s.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		var tags []string
		keys := map[string][]string{} // by cache
		for _, op := range ops {
			if op.tag {
				p.Set(octx, tagKey(s.prefix, op.name), newTagToken(), 0)
				tags = append(tags, op.name)
			} else {
				p.Del(octx, op.name)
				keys[op.cache] = append(keys[op.cache], op.key)
			}
		}
		if len(tags) > 0 {
			s.bus.publish(octx, p, busMessage{Kind: busTags, Names: tags})
		}
		for cache, names := range keys {
			s.bus.publish(octx, p, busMessage{Kind: busKeys, Cache: cache, Names: names})
		}
		return nil
	})
	s.breaker.record(err)
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
