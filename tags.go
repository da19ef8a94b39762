package aside

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/asidecache/aside/internal/envelope"
	"github.com/redis/go-redis/v9"
)

// Tags: each tag has a random token in its own key. An entry records the
// tokens its load saw; InvalidateTags replaces them, so invalidating a tag
// costs one command whatever the number of tagged entries.

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

// A tag key lives as long as an entry may still depend on it, not for
// ever: a tag per customer or per product would otherwise leave one key per
// value in Redis, never evicted under a volatile-* policy. ensureTokens
// creates a tag key with the longest life an entry of the load could have
// (tagLife), and extends an older one to it (never shortens it); every fill
// that records a tag extends its key to the filled entry's life
// (extendTags). Invalidations replace a token in place (KEEPTTL) and create no key:
// a tag key that is missing — expired, evicted, never made — already makes
// every entry that recorded a token of it a miss, which is also why a tag
// key that expires too soon costs loads, never a stale read.

// ensureTagScript returns a tag's token, creating it (ARGV[1]) when the
// key is missing, and gives the key at least ARGV[2] ms to live.
var ensureTagScript = redis.NewScript(`
local t = redis.call('GET', KEYS[1])
if not t then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
redis.call('PEXPIRE', KEYS[1], ARGV[2], 'NX')
redis.call('PEXPIRE', KEYS[1], ARGV[2], 'GT')
return t`)

// markTagStaleScript replaces the soft half of a tag's token. A missing tag
// key is left missing: entries of that tag are misses anyway.
var markTagStaleScript = redis.NewScript(`
local t = redis.call('GET', KEYS[1])
if t and string.len(t) == 64 then
  redis.call('SET', KEYS[1], string.sub(t, 1, 32) .. ARGV[1], 'KEEPTTL')
  return 1
end
return 0`)

// replaceTagScript is InvalidateTags' command: a new token in place of the
// current one, keeping the key's life; nothing when the key is missing (a
// script, where SET XX would answer nil, which a pipeline reports as an
// error).
var replaceTagScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
  return 1
end
return 0`)

func replaceTagToken(ctx context.Context, p redis.Pipeliner, key string) {
	replaceTagScript.Eval(ctx, p, []string{key}, newTagToken())
}

// InvalidateTags invalidates every entry carrying any of tags, in every
// cache of the Store, by replacing each tag's token: one command per tag,
// whatever the number of tagged entries — no member sets, no SCAN. Once it
// has returned, no Get that starts afterwards, in any process (L1 included,
// as for [Cache.Invalidate]), returns a value loaded before it. Call it
// after the source of truth has committed. It fails closed.
func (s *Store) InvalidateTags(ctx context.Context, tags ...string) error {
	return s.updateTags(ctx, "invalidate tags", tags, false)
}

// MarkTagsStale soft-invalidates every entry carrying any of tags: readers
// keep getting the current values, counted as stale, while one refresher per
// entry reloads it in the background. It fails closed.
func (s *Store) MarkTagsStale(ctx context.Context, tags ...string) error {
	return s.updateTags(ctx, "mark tags stale", tags, true)
}

func (s *Store) updateTags(ctx context.Context, what string, tags []string, stale bool) error {
	o, err := collectCallOptions([]CallOption{Tags(tags...)})
	if err != nil || len(o.tags) == 0 {
		return err
	}
	changes := []Change{{Tags: o.tags, Stale: stale}}
	if t := s.tracer; t != nil {
		ctx, span := t.Start(ctx, strings.ReplaceAll(what, " ", "_"), "")
		err := s.invalidateChanges(ctx, what, nil, "", changes, true)
		span.End(Outcomes{}, err)
		return err
	}
	return s.invalidateChanges(ctx, what, nil, "", changes, true)
}

// tagCommand adds to p the invalidation of one tag key: a new token, or
// with stale a new soft half.
func (s *Store) tagCommand(ctx context.Context, p redis.Pipeliner, key string, stale bool) {
	switch {
	case stale:
		markTagStaleScript.Eval(ctx, p, []string{key}, newToken())
	case variantOn(s.hooks, vCounterTokens):
		p.Incr(ctx, key)
	default:
		replaceTagToken(ctx, p, key)
	}
}

// ensureTokens reads the current tokens of tags before a load, creating a
// random one for each tag key that does not exist (never set, expired or
// evicted), and gives each key at least life to live (see ensureTagScript).
func (s *Store) ensureTokens(ctx context.Context, tags []string, life time.Duration) ([]tagToken, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	if !s.redisUp(ctx) {
		return nil, ErrUnavailable
	}
	octx, cancel := s.opContext(ctx)
	defer cancel()
	gets := make([]*redis.Cmd, len(tags))
	_, err := s.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		for i, t := range tags {
			key := tagKey(s.prefix, t)
			fresh := newTagToken()
			if variantOn(s.hooks, vCounterTokens) {
				fresh = "1"
			}
			if variantOn(s.hooks, vPersistentTags) { // the broken variant: tag keys live for ever
				p.SetNX(octx, key, fresh, 0)
				gets[i] = p.Do(octx, "GET", key)
				continue
			}
			// Eval, not EvalSha: a pipeline cannot fall back on NOSCRIPT, and
			// this runs only where a tag key was missing, and for Set.
			gets[i] = ensureTagScript.Eval(octx, p, []string{key}, fresh, life.Milliseconds())
		}
		return nil
	})
	s.record(octx, err, nil, "")
	if err != nil {
		return nil, opErr("tag tokens", err)
	}
	out := make([]tagToken, len(tags))
	for i, t := range tags {
		tok, err := gets[i].Text()
		if err != nil {
			return nil, opErr("tag tokens", err)
		}
		out[i] = tagToken{Name: t, Token: tok}
	}
	return out, nil
}

// extendTags gives each tag key in lives at least its life: the fills that
// recorded the tags have entries that live that long. PEXPIRE NX gives a
// life to a key an earlier version made without one, PEXPIRE GT lengthens
// a shorter one; neither shortens a life nor creates a key. (Redis 7; and
// PEXPIRE is the one command the ACL needs for it.)
func (s *Store) extendTags(ctx context.Context, lives map[string]time.Duration) {
	if len(lives) == 0 || variantOn(s.hooks, vPersistentTags) || variantOn(s.hooks, vNoTagExtension) {
		return
	}
	octx, cancel := s.opContext(ctx)
	defer cancel()
	_, err := s.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		for t, life := range lives {
			key, ms := tagKey(s.prefix, t), life.Milliseconds()
			p.Do(octx, "PEXPIRE", key, ms, "NX")
			p.Do(octx, "PEXPIRE", key, ms, "GT")
		}
		return nil
	})
	s.record(octx, err, nil, "")
}

// tagLife is the longest an entry of this cache may live after its load
// read a tag's token: the load, then the entry's fresh time with jitter and
// its stale window (or a cached not-found's life), and a margin.
func (c *Cache[T]) tagLife() time.Duration {
	p := c.profile
	return p.LoadTimeout + max(p.TTL+p.Jitter+p.StaleWindow, p.NegativeTTL) + leaseSlack
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
	if errors.Is(err, redis.Nil) {
		err = nil // a missing tag key: its token reads as ""
	}
	s.record(octx, err, nil, "")
	if err != nil {
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

// mergeTags returns all with the tags of more it lacks appended, never
// writing into all's array (it may be a caller's): the tags of a group of
// calls, a load's tasks or a batch of writes, read or recorded once.
func mergeTags(all, more []string) []string {
	for _, t := range more {
		if !slices.Contains(all, t) {
			all = append(slices.Clip(all), t)
		}
	}
	return all
}

// subset is the snapshot of names only, all of which s holds.
func (s tagSnap) subset(names []string) tagSnap {
	sub := tagSnap{names: names, tokens: make([]string, len(names))}
	for i, n := range names {
		sub.tokens[i], _ = s.lookup(n)
	}
	return sub
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
func (c *Cache[T]) checkTags(ctx context.Context, e *envelope.Envelope, snap tagSnap) int {
	if len(e.Tags) == 0 && len(snap.names) == 0 {
		return tagsFresh
	}
	for _, n := range snap.names {
		if !e.HasTag(n) {
			return tagsInvalid
		}
	}
	var extra []string
	for _, t := range e.Tags {
		if _, ok := snap.lookup(t.Name); !ok {
			extra = append(extra, t.Name)
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
	for _, t := range e.Tags {
		cur, _ := snap.lookup(t.Name)
		switch {
		case cur == t.Token:
		case cur != "" && hardHalf(cur) == hardHalf(t.Token):
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
		if cur, ok := snap.lookup(t.Name); !ok || cur != t.Token {
			return false
		}
	}
	return true
}

// tokensBeforeLoad returns the tokens of tags to record with the load's
// entries. When the holders' own read saw every one, they serve as they
// are — read before the lease, so before the load, which is all the rule
// asks (a tag invalidated since makes the entry a tag miss, never a stale
// hit) — and the miss saves a round trip. A tag key that was missing (never
// created, or evicted) must be created first: ensureTokens.
func (c *Cache[T]) tokensBeforeLoad(ctx context.Context, tasks []leaseTask[T], tags []string) (_ []tagToken, ensured bool, _ error) {
	if len(tags) == 0 {
		return nil, false, nil
	}
	out := make([]tagToken, len(tags))
	for i, name := range tags {
		for _, t := range tasks {
			if tok, ok := t.snap.lookup(name); ok && tok != "" {
				out[i] = tagToken{Name: name, Token: tok}
				break
			}
		}
		if out[i].Token == "" {
			out, err := c.store.ensureTokens(ctx, tags, c.tagLife())
			return out, true, err
		}
	}
	return out, false, nil
}

// tokensOf picks the tokens of names out of recorded (all of them when the
// task names every tag of the load).
func tokensOf(recorded []tagToken, names []string, all bool) []tagToken {
	if all {
		return recorded
	}
	out := make([]tagToken, 0, len(names))
	for _, t := range recorded {
		if slices.Contains(names, t.Name) {
			out = append(out, t)
		}
	}
	return out
}
