package aside

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// The read step of the protocol: one round trip for a group's entries and
// tag tokens, and serving what is usable of them.

// readAll reads the entries of calls and the group's tag tokens in one
// round trip: a GET for a lone untagged call, else one pipeline — with one
// MGET of every entry where the client allows multi-key commands.
func (c *Cache[T]) readAll(ctx context.Context, calls []*call[T]) error {
	if len(calls) == 1 && len(calls[0].tags) == 0 {
		b, err := c.readOne(ctx, calls[0])
		calls[0].raw = b
		return err
	}
	tags, shared := groupTags(calls)
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	// A lone tagged Get, the common case, keeps its commands on the stack.
	var ebuf [1]*redis.StringCmd
	var gbuf [4]*redis.StringCmd
	entries, gets := ebuf[:0], gbuf[:0]
	var mget *redis.SliceCmd
	p := c.store.rdb.Pipeline()
	if c.store.multiKey && len(calls) > 1 {
		rks := make([]string, len(calls))
		for i, cl := range calls {
			rks[i] = cl.rk
		}
		mget = p.MGet(octx, rks...)
	} else {
		for _, cl := range calls {
			entries = append(entries, p.Get(octx, cl.rk))
		}
	}
	for _, t := range tags {
		gets = append(gets, p.Get(octx, tagKey(c.store.prefix, t)))
	}
	_, _ = p.Exec(octx)
	var failed error
	snap := tagSnap{names: tags, tokens: make([]string, len(tags))}
	for i, g := range gets {
		if err := g.Err(); err != nil && !errors.Is(err, redis.Nil) && failed == nil {
			failed = err
		}
		snap.tokens[i] = g.Val() // "" when the tag key is missing
	}
	var vals []any
	if mget != nil {
		if err := mget.Err(); err != nil && failed == nil {
			failed = err
		}
		vals = mget.Val()
	}
	for i, cl := range calls {
		cl.snap, cl.raw = snap, nil
		if !shared {
			cl.snap = snap.subset(cl.tags)
		}
		var b []byte
		var err error
		if mget != nil {
			// MGET answers nil for a key of another Redis type too: the
			// lease script deletes it.
			if i < len(vals) {
				if v, ok := vals[i].(string); ok {
					b = []byte(v)
				}
			}
			if b == nil && mget.Err() == nil {
				err = redis.Nil
			}
		} else {
			b, err = entries[i].Bytes()
		}
		switch {
		case err == nil && b != nil:
			cl.raw = b
		case errors.Is(err, redis.Nil):
			c.stats.misses.Add(1)
		case err != nil && redis.HasErrorPrefix(err, "WRONGTYPE"): // the lease script deletes it
			c.decodeFailed(fmt.Errorf("%w: key holds another Redis type", errCorrupt))
		case failed == nil:
			failed = err
		}
	}
	c.store.record(octx, failed, &c.stats, c.name)
	return failed
}

// groupTags returns every tag the calls of a group name, once each, and
// whether every call names the same (the common case: no per-call copies).
func groupTags[T any](calls []*call[T]) (tags []string, shared bool) {
	tags, shared = calls[0].tags, true
	for _, cl := range calls[1:] {
		if !slices.Equal(cl.tags, calls[0].tags) {
			shared = false
			break
		}
	}
	if shared {
		return tags, true
	}
	tags = nil
	for _, cl := range calls {
		tags = mergeTags(tags, cl.tags)
	}
	return tags, false
}

// readOne is the hit path: one GET.
func (c *Cache[T]) readOne(ctx context.Context, cl *call[T]) ([]byte, error) {
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	b, err := c.store.rdb.Get(octx, cl.rk).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		c.store.record(octx, nil, &c.stats, c.name)
		c.stats.misses.Add(1)
		return nil, nil
	case err != nil && redis.HasErrorPrefix(err, "WRONGTYPE"): // the lease script deletes it (checked for nil first: it allocates)
		c.store.record(octx, nil, &c.stats, c.name)
		c.decodeFailed(fmt.Errorf("%w: key holds another Redis type", errCorrupt))
		return nil, nil
	}
	c.store.record(octx, err, &c.stats, c.name)
	return b, err
}

// serve answers cl from stored bytes and reports whether it could: not when
// they do not decode or their tags were invalidated (counted; the miss path
// replaces them). A stale, soft-invalidated or soon-expiring entry is served
// as it is while a background refresh reloads it.
func (c *Cache[T]) serve(ctx context.Context, cl *call[T], b []byte, src source[T]) bool {
	e, err := decodeEnvelope(b)
	if err == nil && e.typeID != c.typeID {
		err = fmt.Errorf("%w: written for another type", errCorrupt)
	}
	if err != nil {
		c.decodeFailed(err)
		return false
	}
	tags := c.checkTags(ctx, &e, cl.snap)
	if tags == tagsInvalid || tags == tagsSoftStale && e.negative() {
		c.stats.tagMisses.Add(1)
		return false
	}
	var v T
	if e.negative() {
		c.stats.negativeHits.Add(1)
		cl.finish(v, c.notFoundAnswer)
		cl.outcome = OutcomeNegative
		return true
	}
	if err := c.codec.Unmarshal(e.payload, &v); err != nil {
		c.decodeFailed(fmt.Errorf("aside: decode: %w", err))
		return false
	}
	now, freshUntil := c.store.now(), time.UnixMilli(e.freshMs)
	switch {
	case e.stale() || tags == tagsSoftStale || !now.Before(freshUntil):
		c.stats.staleServed.Add(1)
		c.refreshInBackground(ctx, cl, b, e.tags, src)
	case c.profile.shouldRefreshEarly(now, freshUntil, time.Duration(e.loadMicros)*time.Microsecond):
		c.stats.hits.Add(1)
		c.refreshInBackground(ctx, cl, b, e.tags, src)
	default:
		c.stats.hits.Add(1)
	}
	cl.finish(v, nil)
	cl.outcome = OutcomeHit
	if e.stale() || tags == tagsSoftStale || !now.Before(freshUntil) {
		cl.outcome = OutcomeStale
	}
	if !e.stale() && tags == tagsFresh && now.Before(freshUntil) {
		cl.l1OK, cl.freshUntil, cl.entryTags = true, freshUntil, e.tags
	}
	return true
}

func (c *Cache[T]) decodeFailed(err error) {
	c.stats.decodeErrors.Add(1)
	c.stats.misses.Add(1)
	c.store.emit(Event{Kind: EventDecodeError, Cache: c.name, Err: err})
}
