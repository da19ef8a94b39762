package aside

import (
	"context"
	"errors"
	"fmt"

	"github.com/asidecache/aside/internal/bus"
	"github.com/asidecache/aside/internal/envelope"
	"github.com/redis/go-redis/v9"
)

// Change is an invalidation as data: which keys of which cache, which tags,
// hard or soft. It names its cache instead of pointing at a [Cache], so it
// can be stored (in an outbox row, in the same transaction as the write it
// follows) and applied later by any process with [Store.Apply], including
// one that never created that cache. Its JSON form is the fields' tags.
type Change struct {
	// Cache is the name of the cache Keys belong to, as given to [New];
	// required when Keys is not empty.
	Cache string `json:"cache,omitempty"`
	// Keys are keys of Cache, as given to Get. They are invalidated in
	// every version of the cache in use, not only one Store's.
	Keys []string `json:"keys,omitempty"`
	// Tags are invalidated in every cache of the Store, as by
	// [Store.InvalidateTags].
	Tags []string `json:"tags,omitempty"`
	// Stale soft-invalidates ([Cache.MarkStale], [Store.MarkTagsStale])
	// instead of invalidating.
	Stale bool `json:"stale,omitempty"`

	later func() []Change // Later's; nil in a change that is data
}

// Changed returns the invalidation of keys of c, for [Store.Write] or
// [Store.Apply].
func (c *Cache[T]) Changed(keys ...string) Change { return Change{Cache: c.name, Keys: keys} }

// TagsChanged returns the invalidation of tags, for [Store.Write] or
// [Store.Apply].
func (s *Store) TagsChanged(tags ...string) Change { return Change{Tags: tags} }

// Later returns the changes that changes computes after the write has run,
// for [Store.Write]: for invalidations that depend on the write's result,
// such as the tag of the category a product was moved to. changes runs once,
// after write returns, whether it failed or not. [Resolve] runs it for code
// that stores changes.
func Later(changes func() []Change) Change { return Change{later: changes} }

// Resolve returns changes as data, ready to be stored: the changes of each
// [Later] computed (it calls their functions), empty changes dropped, and
// each checked — a cache name that [New] would refuse, keys without a
// cache, an empty key or tag are errors, so that a change that could never
// be applied is refused before it is stored.
func Resolve(changes ...Change) ([]Change, error) {
	out := make([]Change, 0, len(changes))
	for _, ch := range changes {
		if ch.later != nil {
			more, err := Resolve(ch.later()...)
			if err != nil {
				return nil, err
			}
			out = append(out, more...)
			continue
		}
		if len(ch.Keys) == 0 && len(ch.Tags) == 0 {
			continue
		}
		if err := ch.check(); err != nil {
			return nil, err
		}
		out = append(out, ch)
	}
	return out, nil
}

func (ch Change) check() error {
	if len(ch.Keys) > 0 {
		if ch.Cache == "" {
			return errors.New("aside: change: keys without a cache name")
		}
		if err := validName("cache name", ch.Cache); err != nil {
			return errors.New("aside: change: " + unprefixed(err))
		}
	}
	for _, k := range ch.Keys {
		if k == "" {
			return errEmptyKey
		}
	}
	for _, t := range ch.Tags {
		switch {
		case t == "":
			return errors.New("aside: change: empty tag")
		case len(t) > envelope.MaxTagLen:
			return fmt.Errorf("aside: change: tag longer than %d bytes", envelope.MaxTagLen)
		}
	}
	return nil
}

// Apply applies changes — what [Store.Write] does after its write, for code
// that holds the changes as data (an outbox relay, a consumer of change
// events). Keys are invalidated in every version of their cache in use, in
// every Store's L1; it makes the promise of [Cache.Invalidate] for each
// change, and fails closed as it does: what cannot reach Redis is returned
// as an error matching [ErrQueued], and queued and replayed before this
// Store reads Redis again. Invalid changes are refused before anything is
// applied (see [Resolve]).
func (s *Store) Apply(ctx context.Context, changes ...Change) error {
	return s.apply(ctx, changes, true)
}

// ApplyRecorded is [Store.Apply] for changes that are kept durably
// elsewhere until applied (an outbox row): what cannot reach Redis is not
// queued in this process — its record is retried by its owner, and a
// process applying thousands of them while Redis is down would otherwise
// fill its queue — and the error matches [ErrUnavailable], not [ErrQueued].
func (s *Store) ApplyRecorded(ctx context.Context, changes ...Change) error {
	return s.apply(ctx, changes, false)
}

func (s *Store) apply(ctx context.Context, changes []Change, queue bool) error {
	flat, err := Resolve(changes...)
	if err != nil || len(flat) == 0 {
		return err
	}
	if t := s.tracer; t != nil {
		ctx, span := t.Start(ctx, "apply", "")
		err := s.invalidateChanges(ctx, "apply", nil, "", flat, queue)
		span.End(Outcomes{}, err)
		return err
	}
	return s.invalidateChanges(ctx, "apply", nil, "", flat, queue)
}

// invalidateChanges is the one way keys and tags are invalidated: in one
// round trip, which also reads the versions in use of each cache named
// (versions.go); a version not known before is invalidated in a second.
// st and cache are the counters and name of the one cache the changes
// belong to (nil and "" for a Store's changes). queue says whether what
// cannot reach Redis is queued for replay.
func (s *Store) invalidateChanges(ctx context.Context, what string, st *counters, cache string, changes []Change, queue bool) error {
	var ops []pendingOp
	var msgs []bus.Message
	type cacheKeys struct {
		versions []int
		found    *redis.StringSliceCmd
	}
	caches := map[string]*cacheKeys{}
	for _, ch := range changes {
		if len(ch.Keys) > 0 {
			msgs = append(msgs, bus.Message{Kind: bus.KindKeys, Cache: ch.Cache, Names: ch.Keys})
			if caches[ch.Cache] == nil {
				caches[ch.Cache] = &cacheKeys{versions: s.versions.versions(ch.Cache, variantOn(s.hooks, vOwnVersionsOnly))}
			}
			if queue {
				ops = append(ops, pendingKeys(ch.Cache, ch.Keys)...)
			}
		}
		if len(ch.Tags) > 0 {
			msgs = append(msgs, bus.Message{Kind: bus.KindTags, Names: ch.Tags})
			if queue {
				ops = append(ops, pendingTags(ch.Tags)...)
			}
		}
	}
	changedMs := s.now().UnixMilli()
	err := s.invalidateVia(ctx, what, st, cache, queue, ops, msgs, func(octx context.Context, p redis.Pipeliner) {
		for name, ck := range caches {
			ck.found = p.SMembers(octx, versionsKey(s.prefix, name))
		}
		for _, ch := range changes {
			var versions []int
			if ck := caches[ch.Cache]; ck != nil {
				versions = ck.versions
			}
			s.changeCommands(octx, p, ch, versions)
		}
	})
	if err != nil {
		return err
	}
	s.sampleChanges(changes, changedMs)
	// Versions in use that this Store did not know of (another deploy's):
	// their entries too, and every Store's L1 told again — an L1 may have
	// read one of them back between the two round trips.
	more := map[string][]int{}
	for name, ck := range caches {
		if vs := s.versions.learn(name, ck.found.Val()); len(vs) > 0 {
			more[name] = vs
		}
	}
	if len(more) == 0 || variantOn(s.hooks, vOwnVersionsOnly) {
		return nil
	}
	var again []Change // the key changes of those caches, without their tags
	msgs = nil         // the first round's are the bus's now
	for _, ch := range changes {
		if len(more[ch.Cache]) > 0 && len(ch.Keys) > 0 {
			again = append(again, Change{Cache: ch.Cache, Keys: ch.Keys, Stale: ch.Stale})
			msgs = append(msgs, bus.Message{Kind: bus.KindKeys, Cache: ch.Cache, Names: ch.Keys})
		}
	}
	return s.invalidateVia(ctx, what, st, cache, queue, ops, msgs, func(octx context.Context, p redis.Pipeliner) {
		for _, ch := range again {
			s.changeCommands(octx, p, ch, more[ch.Cache])
		}
	})
}

// changeCommands adds one change's commands to p: for each key, in each of
// versions, a DEL of the entry and its lease (or the mark-stale script);
// for each tag, a new token (or a new soft half). One command per entry
// and tag: they may live in different Cluster slots.
func (s *Store) changeCommands(ctx context.Context, p redis.Pipeliner, ch Change, versions []int) {
	for _, v := range versions {
		ks := newKeyspace(s.prefix, ch.Cache, v)
		for _, k := range ch.Keys {
			rk := ks.entry(k)
			if ch.Stale {
				markStaleScript.Eval(ctx, p, []string{rk, leaseKey(rk)})
			} else {
				p.Del(ctx, rk, leaseKey(rk))
			}
		}
	}
	for _, t := range ch.Tags {
		s.tagCommand(ctx, p, tagKey(s.prefix, t), ch.Stale)
	}
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
//
// A process that dies between the write and the invalidations leaves them
// undone until the entries expire; the asidepg module records them in the
// write's transaction instead, so that they survive it.
func (s *Store) Write(ctx context.Context, write func(ctx context.Context) error, changes ...Change) error {
	werr := write(ctx)
	err := s.Apply(ctx, changes...)
	// A failed write's queued invalidations are not reported: ErrQueued
	// says that the write committed.
	if err == nil || werr != nil && errors.Is(err, ErrQueued) {
		return werr // unchanged, so callers can match their own errors
	}
	return errors.Join(werr, err)
}
