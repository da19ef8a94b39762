package aside

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/asidecache/aside/internal/envelope"
	"github.com/redis/go-redis/v9"
)

// The read step of the protocol: one round trip for a group's entries and
// tag tokens, and serving what is usable of them.

// readAll reads the entries of calls and the group's tag tokens in one
// round trip (Store.fetch), shared with other callers' reads where some are
// on the wire already (coalesce.go).
func (c *Cache[T]) readAll(ctx context.Context, calls []*call[T]) error {
	if len(calls) == 1 && len(calls[0].tags) == 0 {
		b, err := c.readOne(ctx, calls[0])
		calls[0].raw = b
		return err
	}
	tags, shared := groupTags(calls)
	keys := make([]string, len(calls), len(calls)+len(tags))
	for i, cl := range calls {
		keys[i] = cl.rk
	}
	for _, t := range tags {
		keys = append(keys, tagKey(c.store.prefix, t))
	}
	r := c.store.readKeys(ctx, keys)
	g := readGroup{snap: tagSnap{names: tags, tokens: make([]string, len(tags))}, shared: shared}
	for i := range tags {
		err := r.errs[len(calls)+i]
		if err != nil && !errors.Is(err, redis.Nil) && g.failed == nil {
			g.failed = err
		}
		g.snap.tokens[i] = r.vals[len(calls)+i] // "" when the tag key is missing
	}
	for i, cl := range calls {
		var b []byte
		if r.errs[i] == nil {
			b = c.replyBytes(r.vals[i])
		}
		c.took(cl, &g, b, r.errs[i])
	}
	c.store.record(r.octx, g.failed, &c.stats, c.name)
	return g.failed
}

// readStep reads calls and serves what is usable. It returns the misses,
// or done when nothing is left to lease: every call was served (the hit
// path stops here), or answered without Redis.
func (c *Cache[T]) readStep(ctx context.Context, calls []*call[T], src source[T]) (misses []*call[T], done bool) {
	if err := c.readAll(ctx, calls); err != nil {
		if ctx.Err() != nil {
			finishAll(calls, ctx.Err())
			return nil, true
		}
		c.loadDegraded(ctx, calls, src)
		return nil, true
	}
	for _, cl := range calls {
		if cl.raw == nil || !c.serve(ctx, cl, cl.raw, src) {
			misses = append(misses, cl)
		}
	}
	return misses, len(misses) == 0
}

// Reads that will probably miss start with the lease script. A miss costs
// the read, the lease script and the fill — three round trips, where the
// floor's miss (GET, load, SET) costs two. The lease script's first step is
// the read, and it answers a hit as such; so a cache whose reads have
// lately been missing (a cold start, a version bump, keys seldom read
// twice) skips the read, and its misses cost two round trips. Its few hits
// then cost a script instead of a GET: the same round trip, a few µs of
// Redis CPU and a lease token prepared for nothing. A tagged read reads its
// tag tokens in the script's round trip (leaseWithTokens). The trend rises
// by one with each read that missed and falls by four with each that hit,
// so it stays at leaseFirstAt or above only while fewer than one read in
// five hits.
const (
	trendMax     = 16 // a long run of misses is worth no more than this
	trendHit     = 4  // what a hit takes off
	leaseFirstAt = 8  // reads start with the lease script from here
)

// missTrend is a cache's recent reads, weighed: see leaseFirstAt.
type missTrend struct{ n atomic.Int32 }

func (m *missTrend) observe(missed bool) {
	for {
		cur := m.n.Load()
		next := cur + 1
		if !missed {
			next = cur - trendHit
		}
		next = min(max(next, 0), trendMax)
		if next == cur || m.n.CompareAndSwap(cur, next) {
			return
		}
	}
}

// leaseFirst reports whether a group's read should start with the lease
// script: a lone read, while the cache's reads mostly miss.
func (c *Cache[T]) leaseFirst(calls []*call[T]) bool {
	if len(calls) != 1 || variantOn(c.hooks, vReadFirst) {
		return false
	}
	return calls[0].leaseFirst || c.trend.n.Load() >= leaseFirstAt
}

// readGroup is what one read of a group shares: the tag tokens it read,
// whether every call names the same tags, and the first failure.
type readGroup struct {
	snap   tagSnap
	shared bool
	failed error
}

// took gives cl what the read brought for its entry: bytes, a miss
// (redis.Nil), or an error.
func (c *Cache[T]) took(cl *call[T], g *readGroup, b []byte, err error) {
	cl.snap, cl.raw = g.snap, nil
	if !g.shared {
		cl.snap = g.snap.subset(cl.tags)
	}
	switch {
	case err == nil && b != nil:
		cl.raw = b
	case errors.Is(err, redis.Nil):
		c.count(cl, &c.stats.misses)
	case err != nil && redis.HasErrorPrefix(err, "WRONGTYPE"): // the lease script deletes it
		c.decodeFailed(cl, fmt.Errorf("%w: key holds another Redis type", errCorrupt))
	case g.failed == nil:
		g.failed = err
	}
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

// readOne is the hit path: one GET, or a share of a batch (coalesce.go).
func (c *Cache[T]) readOne(ctx context.Context, cl *call[T]) ([]byte, error) {
	v, octx, err := c.store.readEntry(ctx, cl.rk)
	switch {
	case errors.Is(err, redis.Nil):
		c.store.record(octx, nil, &c.stats, c.name)
		c.count(cl, &c.stats.misses)
		return nil, nil
	case err != nil && redis.HasErrorPrefix(err, "WRONGTYPE"): // the lease script deletes it (checked for nil first: it allocates)
		c.store.record(octx, nil, &c.stats, c.name)
		c.decodeFailed(cl, fmt.Errorf("%w: key holds another Redis type", errCorrupt))
		return nil, nil
	}
	c.store.record(octx, err, &c.stats, c.name)
	if err != nil {
		return nil, err
	}
	return c.replyBytes(v), nil
}

// replyBytes returns the bytes of a Redis reply. Where the codec keeps none
// of them, they are the reply string's own memory, not a copy — as go-redis's
// StringCmd.Bytes already gave a GET's, and now also MGET's values and the
// scripts' replies, which came as strings (a copy per value read): nothing
// in aside writes into bytes it has read, and those it keeps (a lease
// script's argument, a refresh's checksum) are only read. A codec of the user's might keep a slice of its
// input inside the value it returns: it gets a copy, on every path.
func (c *Cache[T]) replyBytes(s string) []byte {
	if !c.codecCopies || s == "" {
		return []byte(s)
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// serve answers cl from stored bytes and reports whether it could: not when
// they do not decode or their tags were invalidated (counted; the miss path
// replaces them). A stale, soft-invalidated or soon-expiring entry is served
// as it is while a background refresh reloads it.
func (c *Cache[T]) serve(ctx context.Context, cl *call[T], b []byte, src source[T]) bool {
	e, err := envelope.Decode(b, cl.snap.names, cl.snap.tokens)
	if err == nil && e.TypeID != c.typeID {
		err = fmt.Errorf("%w: written for another type", errCorrupt)
	}
	if err != nil {
		c.decodeFailed(cl, err)
		return false
	}
	tags := c.checkTags(ctx, &e, cl.snap)
	if tags == tagsInvalid || tags == tagsSoftStale && e.Negative() {
		c.count(cl, &c.stats.tagMisses)
		return false
	}
	var zero T
	if e.Negative() {
		c.count(cl, &c.stats.negativeHits)
		cl.finish(zero, c.notFoundAnswer)
		cl.outcome = OutcomeNegative
		return true
	}
	// Decoded in place: the call is on the heap already, a value of its own
	// would be one more allocation per hit. Zeroed first, as a failed decode
	// leaves a partial value that the next one must not merge into.
	cl.v = zero
	if err := c.codec.Unmarshal(e.Payload, &cl.v); err != nil {
		cl.v = zero
		c.decodeFailed(cl, opErr("decode", err))
		return false
	}
	now, freshUntil := c.store.now(), time.UnixMilli(e.FreshMs)
	// Past this point the tags are fresh or soft-stale (invalid returned above).
	stale := e.Stale() || tags == tagsSoftStale || !now.Before(freshUntil)
	cl.finish(cl.v, nil)
	switch {
	case stale:
		c.count(cl, &c.stats.staleServed)
		cl.outcome = OutcomeStale
		c.refreshInBackground(ctx, cl, b, e.Tags, src)
		return true
	case c.profile.shouldRefreshEarly(now, freshUntil, time.Duration(e.LoadMicros)*time.Microsecond):
		c.refreshInBackground(ctx, cl, b, e.Tags, src)
	}
	c.count(cl, &c.stats.hits)
	cl.outcome = OutcomeHit
	if c.check != nil {
		c.check.sampleRedisHit(cl.key, e.Payload)
	}
	cl.l1OK, cl.freshUntil, cl.entryTags = true, freshUntil, e.Tags
	return true
}

// count adds cl's read outcome to n unless cl has one counted already. A
// call counts what its first read found: a caller that missed and then
// took the value another caller loaded (from Redis, or from that caller's
// flight) is a miss that waited (LeaseWaits), not a miss and a hit, so
// that the outcomes of a cache's reads add up to its reads.
func (c *Cache[T]) count(cl *call[T], n *atomic.Uint64) {
	if !cl.counted || variantOn(c.hooks, vCountEachRead) {
		cl.counted, cl.countedIn = true, n
		n.Add(1)
		c.trend.observe(n == &c.stats.misses || n == &c.stats.tagMisses)
	}
}

// recountWaited recounts, once the call is answered, a read that found
// nothing usable and was then answered by another caller's load — the
// fill it waited for, a flight it joined, or the entry it read again after
// a wait: a miss (or tag miss) that loaded nothing counts in Waited
// instead. One that loaded (through its lease, degraded, after its wait
// budget) stays a miss.
func (c *Cache[T]) recountWaited(cl *call[T]) {
	n := cl.countedIn
	if n != &c.stats.misses && n != &c.stats.tagMisses || variantOn(c.hooks, vWaitsAsMisses) {
		return
	}
	switch cl.outcome {
	case OutcomeWaited, OutcomeHit, OutcomeStale, OutcomeNegative, OutcomeL1Hit:
		n.Add(^uint64(0))
		c.stats.waited.Add(1)
		cl.countedIn = &c.stats.waited
	}
}

func (c *Cache[T]) decodeFailed(cl *call[T], err error) {
	c.stats.decodeErrors.Add(1)
	c.count(cl, &c.stats.misses)
	c.store.emit(Event{Kind: EventDecodeError, Cache: c.name, Err: err})
}
