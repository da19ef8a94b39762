package aside

import (
	"context"
	"errors"
	"fmt"
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
	return c.invalidate(ctx, "invalidate", keys, false)
}

// invalidate invalidates keys of this cache — in every version of it in
// use (versions.go), in every Store's L1 — the one way a cache's keys are
// invalidated; stale soft-invalidates them.
func (c *Cache[T]) invalidate(ctx context.Context, what string, keys []string, stale bool) error {
	for _, k := range keys {
		if k == "" {
			return errEmptyKey
		}
	}
	if len(keys) == 0 {
		return nil
	}
	changes := []Change{{Cache: c.name, Keys: keys, Stale: stale}}
	if t := c.store.tracer; t != nil {
		ctx, span := t.Start(ctx, strings.ReplaceAll(what, " ", "_"), c.name)
		err := c.store.invalidateChanges(ctx, what, &c.stats, c.name, changes, true)
		span.End(Outcomes{}, err)
		return err
	}
	return c.store.invalidateChanges(ctx, what, &c.stats, c.name, changes, true)
}

// invalidateVia is the one way an invalidation reaches Redis: it replays
// the queued ones first (in order), then runs writes and tells every
// Store's L1 (msgs), and waits for their acknowledgements. Its call waits
// out a stall as every call does (opContext): a stall shorter than the
// stall tolerance delays an invalidation, it does not fail it. What cannot
// reach Redis is queued (ops) and returned as a [queuedError] — unless
// queue is false (the changes are kept elsewhere: ApplyRecorded), when the
// error matches ErrUnavailable.
func (s *Store) invalidateVia(ctx context.Context, what string, st *counters, cache string, queue bool, ops []pendingOp,
	msgs []bus.Message, writes func(octx context.Context, p redis.Pipeliner)) error {
	failed := func(cause error) error {
		if !queue {
			if !errors.Is(cause, ErrUnavailable) {
				cause = fmt.Errorf("%w: %w", ErrUnavailable, cause)
			}
			return opErr(what, cause)
		}
		s.pending.add(ops) // it may or may not have run: deleting again is harmless
		return &queuedError{what: what, cause: cause}
	}
	if !s.redisUp(ctx) {
		s.applyHere(msgs) // read-your-writes, even now
		return failed(ErrUnavailable)
	}
	if err := s.replayFirst(ctx); err != nil { // in order: a process that only writes replays them too
		s.applyHere(msgs)
		return failed(err)
	}
	octx, cancel := s.opContext(ctx)
	var replicated *redis.IntCmd
	acks, err := s.bus.WriteAndTell(octx, func(p redis.Pipeliner) {
		writes(octx, p)
		if s.replicas > 0 { // on the pipeline's connection: WAIT covers its writes
			replicated = redis.NewIntCmd(octx, "wait", s.replicas, s.replicaTimeout.Milliseconds())
			_ = p.Process(octx, replicated)
		}
	}, msgs...)
	s.record(octx, err, st, cache)
	cancel()
	if err == nil && replicated != nil && replicated.Val() < int64(s.replicas) && !variantOn(s.hooks, vIgnoreReplicas) {
		// Applied on the master, not yet where a failover could take it.
		if err := acks.Wait(ctx); err != nil {
			return opErr(what, err)
		}
		return failed(fmt.Errorf("aside: %d of %d replicas acknowledged within %v", replicated.Val(), s.replicas, s.replicaTimeout))
	}
	switch {
	case err == nil:
		if err := acks.Wait(ctx); err != nil {
			return opErr(what, err)
		}
		return nil
	case !isOutage(err): // an error reply (NOPERM, OOM): the server refused this command
		if queue {
			s.pending.add(ops)
		}
		return opErr(what, err)
	default:
		return failed(err)
	}
}

// applyHere applies msgs to this Store's L1 only.
func (s *Store) applyHere(msgs []bus.Message) {
	for _, m := range msgs {
		s.bus.Apply(m)
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
	return c.invalidate(ctx, "mark stale", keys, true)
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
	return c.store.purge(ctx, c.name, c.hooks)
}

// Purge is [Cache.Purge] for the cache named cache, without a [Cache] of
// its type: for an operator's tool (cmd/aside).
func (s *Store) Purge(ctx context.Context, cache string) (deleted int, err error) {
	if err := validName("cache name", cache); err != nil {
		return 0, err
	}
	return s.purge(ctx, cache, s.hooks)
}

func (s *Store) purge(ctx context.Context, name string, hooks seams) (deleted int, err error) {
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
	if variantOn(hooks, vPurgeOnePass) {
		passes = 1
	}
	for range passes {
		if err = s.purgePass(ctx, name, hooks, &n); err != nil {
			break
		}
	}
	// Told after the deletions: a Store that hears it and re-reads finds
	// nothing old left.
	octx, cancel := s.opContext(ctx)
	defer cancel()
	acks, perr := s.bus.WriteAndTell(octx, func(redis.Pipeliner) {}, bus.Message{Kind: bus.KindCache, Cache: name})
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
func (s *Store) purgePass(ctx context.Context, name string, hooks seams, n *atomic.Int64) error {
	match := pattern(s.prefix, name)
	purge := func(ctx context.Context, node redis.UniversalClient) error {
		var cursor uint64
		for {
			keys, next, err := node.Scan(ctx, cursor, match, 500).Result()
			if err != nil {
				return err
			}
			reach(hooks, pAfterPurgeScan, "")
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
	switch rdb := s.rdb.(type) {
	case *redis.ClusterClient:
		return rdb.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return purge(ctx, node) })
	case *redis.Ring:
		return rdb.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error { return purge(ctx, node) })
	}
	return purge(ctx, s.rdb)
}
