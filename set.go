package aside

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/asidecache/aside/internal/bus"
	"github.com/redis/go-redis/v9"
)

// Set stores v under key now (write-through, for values just written to the
// source). It fails closed: a Redis error, an encoding error or a value over
// MaxEntryBytes is returned — and the key is invalidated (or the
// invalidation queued), so that the value it was meant to replace is not
// served on.
func (c *Cache[T]) Set(ctx context.Context, key string, v T, opts ...CallOption) error {
	return c.SetMany(ctx, map[string]T{key: v}, opts...)
}

// SetMany stores several values at once, as [Cache.Set] does one: in one
// round trip (per Cluster node), every entry replaced atomically with its
// lease revoked, one notice to the other Stores' L1. Tags apply to every
// value. It fails closed for the whole batch: on any error every key is
// invalidated, so that none of the values it meant to replace is served on.
// A value of several that cannot be stored (not encodable, over
// MaxEntryBytes) is reported as a [*BatchError] holding its key.
func (c *Cache[T]) SetMany(ctx context.Context, values map[string]T, opts ...CallOption) error {
	if t := c.store.tracer; t != nil {
		ctx, span := t.Start(ctx, "set", c.name)
		err := c.setMany(ctx, values, opts)
		span.End(Outcomes{}, err)
		return err
	}
	return c.setMany(ctx, values, opts)
}

func (c *Cache[T]) setMany(ctx context.Context, values map[string]T, opts []CallOption) error {
	keys := make([]string, 0, len(values))
	for k := range values {
		if k == "" {
			return errEmptyKey
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys) // one order for the pipeline and the notice, whatever the map's
	o, err := collectCallOptions(opts)
	if err != nil {
		return err
	}
	if err := c.set(ctx, keys, values, o); err != nil {
		// The caller meant to replace the entries: the old values must not
		// outlive a failed replacement. Invalidate queues itself if Redis
		// is away.
		_ = c.Invalidate(ctx, keys...)
		return err
	}
	return nil
}

func (c *Cache[T]) set(ctx context.Context, keys []string, values map[string]T, o callOptions) error {
	keyTags := make([][]string, len(keys))
	all := o.tags
	for i, k := range keys {
		tags, err := o.tagsFor(k)
		if err != nil {
			return err
		}
		keyTags[i] = tags
		all = mergeTags(all, tags)
	}
	tokens, err := c.store.ensureTokens(ctx, all, c.tagLife())
	if err != nil {
		return err
	}
	encoded := make([][]byte, len(keys))
	ttls := make([]time.Duration, len(keys))
	for i, k := range keys {
		fresh := c.profile.freshFor() // jittered like a fill
		b, err := c.encode(values[k], c.store.now(), fresh, 0, tokensOf(tokens, keyTags[i], len(keyTags[i]) == len(all)), nil)
		if err == nil {
			err = c.checkSize(b)
		}
		if errors.Is(err, errOversize) {
			c.stats.oversize.Add(1)
		}
		if err != nil {
			if len(keys) > 1 {
				// The key is the user's data: in the error's structure, never in
				// its message (which ends up in logs).
				return &BatchError{Errs: map[string]error{k: err}}
			}
			return err
		}
		encoded[i], ttls[i] = b, fresh+c.profile.StaleWindow
	}
	if !c.store.usable(ctx, &c.stats, c.name) {
		return ErrUnavailable
	}
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	own := variantOn(c.hooks, vOwnVersionsOnly)
	others := slices.DeleteFunc(c.store.versions.versions(c.name, own), func(v int) bool { return v == c.version })
	msg := bus.Message{Kind: bus.KindKeys, Cache: c.name, Names: keys}
	var found *redis.StringSliceCmd
	acks, err := c.store.bus.WriteAndTell(octx, func(p redis.Pipeliner) {
		for i, k := range keys {
			rk := c.keys.entry(k)
			setScript.Eval(octx, p, []string{rk, leaseKey(rk)}, encoded[i], ttls[i].Milliseconds())
		}
		// The other versions in use (a rolling deploy's) lose their
		// entries: a Set replaces the value for every reader, not only for
		// this version's (versions.go).
		found = p.SMembers(octx, versionsKey(c.store.prefix, c.name))
		c.store.changeCommands(octx, p, Change{Cache: c.name, Keys: keys}, others)
	}, msg)
	c.store.record(octx, err, &c.stats, c.name)
	if err != nil {
		return opErr("set", err)
	}
	for _, b := range encoded {
		c.stats.bytesWritten.Add(uint64(len(b)))
	}
	if err := acks.Wait(ctx); err != nil {
		return opErr("set", err)
	}
	if more := c.store.versions.learn(c.name, found.Val()); len(more) > 0 && !own {
		// Not queued: a failure fails the Set, which then invalidates its
		// keys in every version (SetMany), queued if it must be.
		return c.store.invalidateVia(ctx, "set", &c.stats, c.name, false, nil, []bus.Message{msg},
			func(octx context.Context, p redis.Pipeliner) {
				c.store.changeCommands(octx, p, Change{Cache: c.name, Keys: keys}, more)
			})
	}
	return nil
}

// setScript replaces the entry and its TTL atomically and revokes any
// lease, so that a load in flight cannot overwrite what Set wrote. SET
// also overwrites a key of another Redis type planted under our name.
var setScript = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1`)

// writeEntry stores encoded bytes unconditionally, revoking any lease. Only
// the broken variants of the tests write without a lease.
func (c *Cache[T]) writeEntry(ctx context.Context, rk string, b []byte, ttl time.Duration) error {
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	err := setScript.Run(octx, c.store.rdb, []string{rk, leaseKey(rk)}, b, ttl.Milliseconds()).Err()
	c.store.record(octx, err, &c.stats, c.name)
	return err
}
