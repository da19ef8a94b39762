package aside

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Invalidate deletes the entries of keys together with any lease on them:
// a load that started before cannot write its value afterwards, so once
// Invalidate has returned no Get that starts later returns the old value.
// Call it after the source of truth has committed the change. It fails
// closed: when Redis cannot be reached the error is returned, and the
// invalidation is also queued and replayed before the Store reads from
// Redis again (a Redis restored from an older snapshot would otherwise
// serve the invalidated values).
func (c *Cache[T]) Invalidate(ctx context.Context, keys ...string) error {
	rks, err := c.entryKeys(keys)
	if err != nil {
		return err
	}
	for _, rk := range rks {
		c.keyFlights.Forget(rk) // degraded reads must not join a load that began before
	}
	if !c.store.breaker.allow() {
		c.store.bus.apply(busMessage{Kind: busKeys, Cache: c.name, Names: keys})
		c.store.pending.add(pendingKeys(c.name, keys, rks))
		return ErrUnavailable
	}
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	// One DEL per key: keys of one call may live in different Cluster slots.
	_, err = c.store.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		for _, rk := range rks {
			p.Del(octx, rk)
		}
		c.store.bus.publish(octx, p, busMessage{Kind: busKeys, Cache: c.name, Names: keys})
		return nil
	})
	c.store.bus.apply(busMessage{Kind: busKeys, Cache: c.name, Names: keys}) // read-your-writes
	c.record(ctx, err)
	if err != nil {
		c.store.pending.add(pendingKeys(c.name, keys, rks)) // it may or may not have run: DEL again is harmless
		return fmt.Errorf("aside: invalidate: %w", err)
	}
	return nil
}

// markStaleScript soft-invalidates one entry: it sets the stale flag inside
// the stored envelope (byte 2, flagStale = 4) and revokes any lease, so that
// a load that began before cannot write its older value. A negative entry,
// or bytes that are not an envelope, are deleted instead.
var markStaleScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'v')
redis.call('HDEL', KEYS[1], 'l', 'le')
if not v then return 0 end
local f = string.byte(v, 2)
if string.byte(v, 1) ~= 161 or not f or math.floor(f / 2) % 2 == 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
if math.floor(f / 4) % 2 == 0 then
  redis.call('HSET', KEYS[1], 'v', string.sub(v, 1, 1) .. string.char(f + 4) .. string.sub(v, 3))
end
return 1`)

// MarkStale soft-invalidates keys: readers keep getting the current value,
// counted as stale, while one refresher reloads it in the background — for
// changes where a few seconds of the old value are acceptable and a miss
// storm is not. Unlike [Cache.Invalidate], a Get after MarkStale may return
// the old value until the refresh has written the new one. It fails closed.
func (c *Cache[T]) MarkStale(ctx context.Context, keys ...string) error {
	rks, err := c.entryKeys(keys)
	if err != nil {
		return err
	}
	if !c.store.breaker.allow() {
		c.store.pending.add(pendingKeys(c.name, keys, rks)) // replayed as a hard invalidation: safe, if not soft
		return ErrUnavailable
	}
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	_, err = c.store.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		for _, rk := range rks {
			markStaleScript.Eval(octx, p, []string{rk}) // EVAL: a pipeline cannot fall back from EVALSHA
		}
		c.store.bus.publish(octx, p, busMessage{Kind: busKeys, Cache: c.name, Names: keys})
		return nil
	})
	c.store.bus.apply(busMessage{Kind: busKeys, Cache: c.name, Names: keys})
	c.record(ctx, err)
	if err != nil {
		c.store.pending.add(pendingKeys(c.name, keys, rks))
		return fmt.Errorf("aside: mark stale: %w", err)
	}
	return nil
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

// CallOption configures one call of [Cache.Get] or [Cache.Set].
type CallOption func(*callOptions)

type callOptions struct{ tags []string }

// Tags attaches tags to the entry, so that [Store.InvalidateTags] of any of
// them invalidates it, whatever its key and cache. Pass the same tags at
// every call site of a key: an entry read without one of its tags costs an
// extra round trip, and a read with a tag the entry lacks is a miss. At most
// 64 tags, each 1–512 bytes; duplicates are ignored.
//
// Tags must be known before the load: an entry records its tags' tokens as
// they were before its load began, which is what makes an invalidation
// during the load visible. That is why tags are not computed from the value.
func Tags(tags ...string) CallOption {
	return func(o *callOptions) { o.tags = append(o.tags, tags...) }
}

func collectCallOptions(opts []CallOption) (callOptions, error) {
	if len(opts) == 0 {
		return callOptions{}, nil // the common case costs no allocation
	}
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	if len(o.tags) == 0 {
		return o, nil
	}
	seen := make(map[string]bool, len(o.tags))
	tags := o.tags[:0:0]
	for _, t := range o.tags {
		switch {
		case t == "":
			return o, errors.New("aside: empty tag")
		case len(t) > maxTagLen:
			return o, fmt.Errorf("aside: tag longer than %d bytes", maxTagLen)
		case seen[t]:
			continue
		}
		seen[t] = true
		tags = append(tags, t)
	}
	if len(tags) > maxTags {
		return o, fmt.Errorf("aside: %d tags, at most %d", len(tags), maxTags)
	}
	o.tags = tags
	return o, nil
}

// A tag token is two random 128-bit halves in hex: "hard" and "soft".
// InvalidateTags replaces both, so every entry recorded with the old token
// is a miss; MarkTagsStale replaces only the soft half, so such entries are
// served stale while they refresh. A token is random, never a counter: a tag
// key that Redis evicts is recreated with a new random token, so eviction
// can cause misses but never make an old entry's token valid again.
const tokenHalf = 32

func newTagToken() string { return newToken() + newToken() }

func hardHalf(tok string) string {
	if len(tok) == 2*tokenHalf {
		return tok[:tokenHalf]
	}
	return tok
}

// markTagStaleScript replaces the soft half of a tag's token. A missing tag
// key is left missing: entries of that tag are misses anyway.
var markTagStaleScript = redis.NewScript(`
local t = redis.call('GET', KEYS[1])
if t and string.len(t) == 64 then
  redis.call('SET', KEYS[1], string.sub(t, 1, 32) .. ARGV[1])
  return 1
end
return 0`)

// InvalidateTags invalidates every entry carrying any of tags, in every
// cache of the Store, by replacing each tag's token: one command per tag,
// whatever the number of tagged entries — no member sets, no SCAN. Once it
// has returned, no Get that starts afterwards returns a value loaded before
// it. Call it after the source of truth has committed. It fails closed.
func (s *Store) InvalidateTags(ctx context.Context, tags ...string) error {
	return s.updateTags(ctx, "invalidate tags", tags, func(p redis.Pipeliner, ctx context.Context, key string) {
		if s.counterTokens {
			p.Incr(ctx, key)
			return
		}
		p.Set(ctx, key, newTagToken(), 0)
	})
}

// MarkTagsStale soft-invalidates every entry carrying any of tags: readers
// keep getting the current values, counted as stale, while one refresher per
// entry reloads it in the background. It fails closed.
func (s *Store) MarkTagsStale(ctx context.Context, tags ...string) error {
	return s.updateTags(ctx, "mark tags stale", tags, func(p redis.Pipeliner, ctx context.Context, key string) {
		markTagStaleScript.Eval(ctx, p, []string{key}, newToken())
	})
}

func (s *Store) updateTags(ctx context.Context, what string, tags []string, cmd func(redis.Pipeliner, context.Context, string)) error {
	o, err := collectCallOptions([]CallOption{Tags(tags...)})
	if err != nil {
		return err
	}
	if len(o.tags) == 0 {
		return nil
	}
	if !s.breaker.allow() {
		s.bus.apply(busMessage{Kind: busTags, Names: o.tags})
		s.pending.add(pendingTags(o.tags))
		return ErrUnavailable
	}
	octx, cancel := s.opContext(ctx)
	defer cancel()
	// One command per tag: the tag keys live in different Cluster slots.
	_, err = s.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		for _, t := range o.tags {
			cmd(p, octx, tagKey(s.prefix, t))
		}
		s.bus.publish(octx, p, busMessage{Kind: busTags, Names: o.tags})
		return nil
	})
	s.bus.apply(busMessage{Kind: busTags, Names: o.tags})
	if ctx.Err() == nil {
		s.breaker.record(err)
	}
	if err != nil {
		s.pending.add(pendingTags(o.tags)) // replayed as a hard invalidation
		return fmt.Errorf("aside: %s: %w", what, err)
	}
	return nil
}

// ensureTokens reads the current tokens of tags before a load, creating a
// random one for each tag key that does not exist (never set, or evicted).
// SETNX then GET of the same key travel in one pipeline, in order.
func (s *Store) ensureTokens(ctx context.Context, tags []string) ([]tagToken, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	if !s.breaker.allow() {
		return nil, ErrUnavailable
	}
	octx, cancel := s.opContext(ctx)
	defer cancel()
	gets := make([]*redis.StringCmd, len(tags))
	_, err := s.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		for i, t := range tags {
			key := tagKey(s.prefix, t)
			fresh := newTagToken()
			if s.counterTokens {
				fresh = "1"
			}
			p.SetNX(octx, key, fresh, 0)
			gets[i] = p.Get(octx, key)
		}
		return nil
	})
	if ctx.Err() == nil {
		s.breaker.record(err)
	}
	if err != nil {
		return nil, fmt.Errorf("aside: tag tokens: %w", err)
	}
	out := make([]tagToken, len(tags))
	for i, t := range tags {
		out[i] = tagToken{name: t, token: gets[i].Val()}
	}
	return out, nil
}

// fetchTokens reads the current tokens of tags; a missing tag key reads as
// "". Entries whose tags the caller did not name are validated with it.
func (s *Store) fetchTokens(ctx context.Context, tags []string) ([]string, error) {
	octx, cancel := s.opContext(ctx)
	defer cancel()
	gets := make([]*redis.StringCmd, len(tags))
	_, err := s.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		for i, t := range tags {
			gets[i] = p.Get(octx, tagKey(s.prefix, t))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		if ctx.Err() == nil {
			s.breaker.record(err)
		}
		return nil, err
	}
	out := make([]string, len(tags))
	for i, g := range gets {
		out[i] = g.Val()
	}
	return out, nil
}

// tagSnap holds the tokens a Get read together with the entry: the
// reference against which every value it may return is validated.
type tagSnap struct {
	names  []string
	tokens []string // "" for a missing tag key
}

func (s tagSnap) lookup(name string) (string, bool) {
	for i, n := range s.names {
		if n == name {
			return s.tokens[i], true
		}
	}
	return "", false
}

// Validity of an entry against the current tag tokens.
const (
	tagsFresh = iota
	tagsSoftStale
	tagsInvalid
)

// checkTags compares the tokens an entry recorded with the current ones.
// The entry must carry every tag of the call; its other tags are fetched
// (an extra round trip) so that none is left unchecked.
func (c *Cache[T]) checkTags(ctx context.Context, e *envelope, snap tagSnap) int {
	if len(e.tags) == 0 && len(snap.names) == 0 {
		return tagsFresh
	}
	for _, n := range snap.names {
		if !e.hasTag(n) {
			return tagsInvalid
		}
	}
	var extra []string
	for _, t := range e.tags {
		if _, ok := snap.lookup(t.name); !ok {
			extra = append(extra, t.name)
		}
	}
	if len(extra) > 0 {
		tokens, err := c.store.fetchTokens(ctx, extra)
		if err != nil {
			return tagsInvalid // cannot vouch for it: load instead
		}
		snap = tagSnap{names: append(append([]string{}, snap.names...), extra...), tokens: append(append([]string{}, snap.tokens...), tokens...)}
	}
	state := tagsFresh
	for _, t := range e.tags {
		cur, _ := snap.lookup(t.name)
		switch {
		case cur == t.token:
		case cur != "" && hardHalf(cur) == hardHalf(t.token):
			state = tagsSoftStale
		default:
			return tagsInvalid
		}
	}
	return state
}

// sameTokens reports whether a flight recorded exactly the tokens of snap:
// only then may a caller that joined it take its value.
func sameTokens(recorded []tagToken, snap tagSnap) bool {
	if len(recorded) != len(snap.names) {
		return false
	}
	for _, t := range recorded {
		if cur, ok := snap.lookup(t.name); !ok || cur != t.token {
			return false
		}
	}
	return true
}

// Purge deletes every entry of the cache, of every version, with SCAN and
// UNLINK in batches on every master (never KEYS or FLUSHDB). It is for
// decommissioning a namespace or recovering from a bad deploy; routine
// invalidation is [Cache.Invalidate], [Store.InvalidateTags] or a version
// bump. Entries written while it runs may survive. It fails closed.
func (c *Cache[T]) Purge(ctx context.Context) (deleted int, err error) {
	match := pattern(c.store.prefix, c.name)
	var n atomic.Int64
	purge := func(ctx context.Context, node redis.UniversalClient) error {
		var cursor uint64
		for {
			keys, next, err := node.Scan(ctx, cursor, match, 500).Result()
			if err != nil {
				return err
			}
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
		err = rdb.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return purge(ctx, node) })
	case *redis.Ring:
		err = rdb.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error { return purge(ctx, node) })
	default:
		err = purge(ctx, c.store.rdb)
	}
	msg := busMessage{Kind: busCache, Cache: c.name}
	c.store.bus.apply(msg)
	if perr := c.store.rdb.Publish(ctx, c.store.bus.channel, c.store.bus.encode(msg)).Err(); err == nil {
		err = perr
	}
	if err != nil {
		return int(n.Load()), fmt.Errorf("aside: purge: %w", err)
	}
	return int(n.Load()), nil
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

// Write runs write — the update of the source of truth — and then the
// invalidations, in that order, which is the order that keeps caches
// correct. The invalidations run even when write fails, because a failed
// write may still have committed (a timeout after COMMIT); a needless
// invalidation costs one miss. It returns write's error, joined with any
// invalidation errors. The changes are built before write runs: when what to
// invalidate depends on the write's result, invalidate after it by hand.
//
//	err := store.Write(ctx, func(ctx context.Context) error {
//		return repo.UpdatePrice(ctx, id, price)
//	}, products.Changed(aside.Key(id)), store.TagsChanged("category:"+cat))
func (s *Store) Write(ctx context.Context, write func(ctx context.Context) error, changes ...Change) error {
	werr := write(ctx)
	var errs []error
	for _, c := range changes {
		if c.apply == nil {
			continue
		}
		if err := c.apply(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		return werr // unchanged, so callers can match their own errors
	}
	return errors.Join(append([]error{werr}, errs...)...)
}
