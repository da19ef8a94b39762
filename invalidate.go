package aside

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"

	"github.com/asidecache/aside/internal/bus"
	"github.com/asidecache/aside/internal/envelope"
	"github.com/redis/go-redis/v9"
)

// Invalidate deletes the entries of keys together with any lease on them:
// a load that started before cannot write its value afterwards, so once
// Invalidate has returned no Get that starts later returns the old value —
// in any process, L1 included: it returns once every Store whose strict L1
// may hold the old value has acknowledged or lost its lease (at most the
// lease, 1 s by default, for a Store that stopped answering). If ctx ends
// first, ctx's error is returned; the invalidation itself was done.
// Call it after the source of truth has committed the change. It fails
// closed: when Redis cannot be reached the error is returned, and the
// invalidation is also queued and replayed before the Store reads from
// Redis again (a Redis restored from an older snapshot would otherwise
// serve the invalidated values).
func (c *Cache[T]) Invalidate(ctx context.Context, keys ...string) error {
	// One DEL per entry (its value and its lease): the entries of one call
	// may live in different Cluster slots.
	return c.invalidate(ctx, "invalidate", keys, func(ctx context.Context, p redis.Pipeliner, rk string) { p.Del(ctx, rk, leaseKey(rk)) })
}

// invalidate runs one command per key in one pipeline, tells every Store's
// L1, and queues the keys for replay (as deletions) when Redis cannot be
// reached: the one way every key invalidation goes.
func (c *Cache[T]) invalidate(ctx context.Context, what string, keys []string, cmd func(context.Context, redis.Pipeliner, string)) error {
	if t := c.store.tracer; t != nil {
		ctx, span := t.Start(ctx, strings.ReplaceAll(what, " ", "_"), c.name)
		err := c.invalidateKeys(ctx, what, keys, cmd)
		span.End(Outcomes{}, err)
		return err
	}
	return c.invalidateKeys(ctx, what, keys, cmd)
}

func (c *Cache[T]) invalidateKeys(ctx context.Context, what string, keys []string, cmd func(context.Context, redis.Pipeliner, string)) error {
	rks, err := c.entryKeys(keys)
	if err != nil || len(keys) == 0 {
		return err
	}
	return c.store.invalidateVia(ctx, what, &c.stats, c.name, pendingKeys(c.name, keys, rks),
		bus.Message{Kind: bus.KindKeys, Cache: c.name, Names: keys}, func(octx context.Context, p redis.Pipeliner) {
			for _, rk := range rks {
				cmd(octx, p, rk)
			}
		})
}

// invalidateVia is the one way an invalidation reaches Redis: it replays
// the queued ones first (in order), then runs writes and tells every
// Store's L1 (msg), and waits for their acknowledgements. Its call waits
// out a stall as every call does (opContext): a stall shorter than the
// stall tolerance delays an invalidation, it does not fail it. What cannot
// reach Redis is queued (ops) and returned as a [queuedError].
func (s *Store) invalidateVia(ctx context.Context, what string, st *counters, cache string, ops []pendingOp,
	msg bus.Message, writes func(octx context.Context, p redis.Pipeliner)) error {
	if !s.redisUp(ctx) {
		s.bus.Apply(msg) // read-your-writes, even now
		s.pending.add(ops)
		return &queuedError{what: what, cause: ErrUnavailable}
	}
	if err := s.replayFirst(ctx); err != nil { // in order: a process that only writes replays them too
		s.bus.Apply(msg)
		s.pending.add(ops)
		return &queuedError{what: what, cause: err}
	}
	octx, cancel := s.opContext(ctx)
	acks, err := s.bus.WriteAndTell(octx, func(p redis.Pipeliner) { writes(octx, p) }, msg)
	s.record(octx, err, st, cache)
	cancel()
	switch {
	case err == nil:
		if err := acks.Wait(ctx); err != nil {
			return opErr(what, err)
		}
		return nil
	case !isOutage(err): // an error reply (NOPERM, OOM): the server refused this command
		s.pending.add(ops)
		return opErr(what, err)
	default:
		s.pending.add(ops) // it may or may not have run: deleting again is harmless
		return &queuedError{what: what, cause: err}
	}
}

// markStaleScript is the envelope package's: it edits the stored bytes.
var markStaleScript = redis.NewScript(envelope.MarkStaleScript)

// MarkStale soft-invalidates keys: readers keep getting the current value,
// counted as stale, while one refresher reloads it in the background — for
// changes where a few seconds of the old value are acceptable and a miss
// storm is not. Unlike [Cache.Invalidate], a Get after MarkStale may return
// the old value until the refresh has written the new one. It fails closed.
func (c *Cache[T]) MarkStale(ctx context.Context, keys ...string) error {
	// EVAL, not EVALSHA: a pipeline cannot fall back. Replayed as a hard
	// invalidation if Redis cannot be reached: safe, if not soft.
	return c.invalidate(ctx, "mark stale", keys, func(ctx context.Context, p redis.Pipeliner, rk string) {
		markStaleScript.Eval(ctx, p, []string{rk, leaseKey(rk)})
	})
}

func (c *Cache[T]) entryKeys(keys []string) ([]string, error) {
	rks := make([]string, len(keys))
	for i, k := range keys {
		if k == "" {
			return nil, errEmptyKey
		}
		rks[i] = c.keys.entry(k)
	}
	return rks, nil
}

// Purge deletes every entry of the cache, of every version, with SCAN and
// UNLINK in batches on every master (never KEYS or FLUSHDB), and tells every
// Store's L1. Like every invalidation, once it has returned no Get that
// starts afterwards returns a value loaded before it was called — in any
// process, L1 included — so it is what to reach for when a cache must drop
// everything now (a bad deploy, an incident). It fails closed. Routine
// invalidation is [Cache.Invalidate], [Store.InvalidateTags] or a version
// bump: a Purge costs a scan of the keyspace, twice.
func (c *Cache[T]) Purge(ctx context.Context) (deleted int, err error) {
	// Two passes. A load that began before Purge holds a lease; its fill
	// may land while the first pass runs, in a part of the keyspace the
	// scan has passed (SCAN returns what exists for the whole scan, not
	// what appears during it). But such a lease existed when the first pass
	// began: either that pass deletes it, and the fill is refused, or the
	// fill consumed it during the first pass — and then its entry exists
	// for the whole second pass, which deletes it. A lease taken after the
	// first pass began is a load that began after Purge was called.
	var n atomic.Int64
	passes := 2
	if variantOn(c.hooks, vPurgeOnePass) {
		passes = 1
	}
	for range passes {
		if err = c.purgePass(ctx, &n); err != nil {
			break
		}
	}
	// Told after the deletions: a Store that hears it and re-reads finds
	// nothing old left.
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	acks, perr := c.store.bus.WriteAndTell(octx, func(redis.Pipeliner) {}, bus.Message{Kind: bus.KindCache, Cache: c.name})
	if perr == nil {
		perr = acks.Wait(ctx)
	}
	if err == nil {
		err = perr
	}
	if err != nil {
		return int(n.Load()), opErr("purge", err)
	}
	return int(n.Load()), nil
}

// purgePass scans every master once and unlinks the cache's keys (entries
// and leases), counting them in n.
func (c *Cache[T]) purgePass(ctx context.Context, n *atomic.Int64) error {
	match := pattern(c.store.prefix, c.name)
	purge := func(ctx context.Context, node redis.UniversalClient) error {
		var cursor uint64
		for {
			keys, next, err := node.Scan(ctx, cursor, match, 500).Result()
			if err != nil {
				return err
			}
			reach(c.hooks, pAfterPurgeScan, "")
			if len(keys) > 0 {
				// One UNLINK per key: a batch spans many Cluster slots.
				if _, err := node.Pipelined(ctx, func(p redis.Pipeliner) error {
					for _, k := range keys {
						p.Unlink(ctx, k)
					}
					return nil
				}); err != nil {
					return err
				}
				n.Add(int64(len(keys)))
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	switch rdb := c.store.rdb.(type) {
	case *redis.ClusterClient:
		return rdb.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return purge(ctx, node) })
	case *redis.Ring:
		return rdb.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error { return purge(ctx, node) })
	}
	return purge(ctx, c.store.rdb)
}

// Change is an invalidation to run after a write to the source of truth;
// see [Store.Write].
type Change struct {
	apply func(ctx context.Context) error
}

// Changed returns the invalidation of keys of c, for [Store.Write].
func (c *Cache[T]) Changed(keys ...string) Change {
	return Change{apply: func(ctx context.Context) error { return c.Invalidate(ctx, keys...) }}
}

// TagsChanged returns the invalidation of tags, for [Store.Write].
func (s *Store) TagsChanged(tags ...string) Change {
	return Change{apply: func(ctx context.Context) error { return s.InvalidateTags(ctx, tags...) }}
}

// Later returns the changes that changes computes after the write has run,
// for [Store.Write]: for invalidations that depend on the write's result,
// such as the tag of the category a product was moved to. changes runs once,
// after write returns, whether it failed or not.
func Later(changes func() []Change) Change {
	return Change{apply: func(ctx context.Context) error {
		var errs []error
		for _, c := range changes() {
			if c.apply != nil {
				errs = append(errs, c.apply(ctx))
			}
		}
		return errors.Join(errs...)
	}}
}

// Write runs write — the update of the source of truth — and then the
// invalidations, in that order, which is the order that keeps caches
// correct. The invalidations run even when write fails, because a failed
// write may still have committed (a timeout after COMMIT); a needless
// invalidation costs one miss. Changes that depend on the write's result
// are wrapped in [Later].
//
// It returns nil when the write and every invalidation succeeded: no Get
// that starts afterwards, in any process, returns an old value. When write
// fails, it returns write's error (unchanged, so callers can match their
// own errors), joined with any invalidation error other than a queued one.
// When write succeeded but an invalidation could not reach Redis, the
// error matches [ErrQueued]: the write committed, the invalidation is
// queued and replayed, and until then other processes may serve the old
// value. A handler answers success to it, not a failure of a committed
// write:
//
//	var p Product
//	err := store.Write(ctx, func(ctx context.Context) (err error) {
//		p, err = repo.UpdatePrice(ctx, id, price)
//		return err
//	}, products.Changed(aside.Key(id)), aside.Later(func() []aside.Change {
//		return []aside.Change{store.TagsChanged("category:" + p.Category)}
//	}))
//	if err != nil && !errors.Is(err, aside.ErrQueued) {
//		return err // the write failed
//	}
func (s *Store) Write(ctx context.Context, write func(ctx context.Context) error, changes ...Change) error {
	werr := write(ctx)
	var errs []error
	for _, c := range changes {
		if c.apply == nil {
			continue
		}
		// A failed write's queued invalidations are not reported: ErrQueued
		// says that the write committed.
		if err := c.apply(ctx); err != nil && (werr == nil || !errors.Is(err, ErrQueued)) {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		return werr // unchanged, so callers can match their own errors
	}
	return errors.Join(append([]error{werr}, errs...)...)
}
