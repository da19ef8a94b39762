package aside

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
)

// BatchLoader fetches the values of keys from the source of truth after
// misses, in one call. A key absent from the returned map does not exist:
// it is treated as [ErrNotFound] (negatively cached under the profile's
// NegativeTTL). An error fails every key of the call.
type BatchLoader[T any] func(ctx context.Context, keys []string) (map[string]T, error)

// BatchError reports the keys of a batch call that failed, with why: of a
// [Cache.GetMany] or [GetBatch], whose other keys' values are returned
// beside it, or the value of a [Cache.SetMany] that could not be stored.
// Its message names no key (keys are the user's data and messages end up in
// logs): the keys are in Errs.
type BatchError struct {
	Errs map[string]error
}

// Error names how many keys failed and the first failure, by key order.
func (e *BatchError) Error() string {
	if e == nil || len(e.Errs) == 0 {
		return "aside: no key failed"
	}
	keys := make([]string, 0, len(e.Errs))
	for k := range e.Errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return fmt.Sprintf("aside: %d of the keys failed, the first: %s", len(keys), unprefixed(e.Errs[keys[0]]))
}

// Unwrap returns the per-key errors, so errors.Is finds a loader's error.
func (e *BatchError) Unwrap() []error {
	if e == nil {
		return nil
	}
	errs := make([]error, 0, len(e.Errs))
	for _, err := range e.Errs {
		errs = append(errs, err)
	}
	return errs
}

// GetMany returns the values of keys: from L1, then from Redis in one
// pipelined read (one round trip per node), and for the misses from one call
// of load with exactly the keys this call holds leases on. It runs the same
// protocol as [Cache.Get], a pipeline per step: keys that other callers —
// concurrent Gets, other batches, other processes — are loading are awaited
// within the profile's WaitBudget, not loaded twice; fills are
// compare-and-sets, written after GetMany returns the loaded values, as
// with Get; [Tags] apply to every key, [KeyTags] to one.
//
// Keys that do not exist are absent from the map. Keys that failed are
// absent too and reported in a *[BatchError]; the others are still
// returned. Like Get, GetMany fails open when Redis fails.
func (c *Cache[T]) GetMany(ctx context.Context, keys []string, load BatchLoader[T], opts ...CallOption) (map[string]T, error) {
	if c.store.tracer == nil {
		return c.getMany(ctx, keys, load, opts, nil)
	}
	ctx, span := c.store.tracer.Start(ctx, "get_many", c.name)
	var outcomes Outcomes
	m, err := c.getMany(ctx, keys, load, opts, &outcomes)
	span.End(outcomes, err)
	return m, err
}

// getMany is GetMany, counting each key's outcome into outcomes when not nil.
func (c *Cache[T]) getMany(ctx context.Context, keys []string, load BatchLoader[T], opts []CallOption, outcomes *Outcomes) (map[string]T, error) {
	if load == nil {
		return nil, errNilLoader
	}
	o, err := collectCallOptions(opts)
	if err != nil {
		return nil, err
	}
	out := make(map[string]T, len(keys))
	calls := make([]*call[T], 0, len(keys))
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if k == "" {
			return nil, errEmptyKey
		}
		if seen[k] {
			continue
		}
		seen[k] = true
		if c.l1 != nil {
			if v, ok := c.l1.Get(k); ok {
				if n := c.stats.l1Hits.add(); c.check != nil && c.check.sampleL1Hit(n) {
					c.check.checkL1Hit(k, v)
				}
				out[k] = v
				if outcomes != nil {
					outcomes[OutcomeL1Hit]++
				}
				continue
			}
		}
		tags, err := o.tagsFor(k)
		if err != nil {
			return nil, err
		}
		cl := &call[T]{key: k, rk: c.keys.entry(k), tags: tags}
		if c.l1 != nil {
			cl.note = c.l1.Note(k)
		}
		calls = append(calls, cl)
	}
	if len(calls) > 0 {
		c.resolve(ctx, calls, source[T]{many: load})
	}
	for _, cl := range calls {
		c.recountWaited(cl)
	}
	errs := map[string]error{}
	for _, cl := range calls {
		if outcomes != nil {
			outcomes[cl.outcome]++
		}
		switch {
		case cl.err == nil:
			out[cl.key] = cl.v
			c.fillL1(cl)
		case errors.Is(cl.err, ErrNotFound):
		default:
			errs[cl.key] = cl.err
		}
	}
	if len(errs) > 0 {
		return out, &BatchError{Errs: errs}
	}
	return out, nil
}

// Batch is how [GetBatch] goes from the caller's own ids to cache keys, to
// the source, and to each entry's tags.
type Batch[K comparable, T any] struct {
	// Key returns the cache key of an id, e.g. with [Key]. Required; two ids
	// must not share a key.
	Key func(id K) string
	// Load fetches the values of ids from the source of truth, in one call.
	// An id absent from the map does not exist ([ErrNotFound]). Required.
	Load func(ctx context.Context, ids []K) (map[K]T, error)
	// Tags returns an entry's own tags, beside those the call's [Tags]
	// option gives every entry. Optional.
	Tags func(id K) []string
}

// GetBatch is [Cache.GetMany] keyed by the caller's own ids: it derives
// each key with b.Key, hands b.Load the ids — not the keys — of the misses,
// tags each entry with b.Tags, and returns the values by id. So no caller
// keeps a map from keys back to ids. A *[BatchError] names failed entries by
// key. For sturdyc's GetOrFetchBatch.
func GetBatch[K comparable, T any](ctx context.Context, c *Cache[T], ids []K, b Batch[K, T], opts ...CallOption) (map[K]T, error) {
	if b.Key == nil || b.Load == nil {
		return nil, errors.New("aside: GetBatch needs Batch.Key and Batch.Load")
	}
	keys := make([]string, 0, len(ids))
	idOf := make(map[string]K, len(ids))
	for _, id := range ids {
		k := b.Key(id)
		if prev, ok := idOf[k]; ok && prev != id {
			return nil, errors.New("aside: GetBatch: two ids have the same key (Batch.Key must give each id its own)")
		}
		if _, ok := idOf[k]; !ok {
			idOf[k] = id
			keys = append(keys, k)
		}
	}
	if b.Tags != nil {
		opts = append(slices.Clip(opts), KeyTags(func(key string) []string { return b.Tags(idOf[key]) }))
	}
	load := func(ctx context.Context, keys []string) (map[string]T, error) {
		want := make([]K, len(keys))
		for i, k := range keys {
			want[i] = idOf[k]
		}
		got, err := b.Load(ctx, want)
		if err != nil {
			return nil, err
		}
		byKey := make(map[string]T, len(got))
		for id, v := range got {
			byKey[b.Key(id)] = v
		}
		return byKey, nil
	}
	m, err := c.GetMany(ctx, keys, load, opts...)
	out := make(map[K]T, len(m))
	for k, v := range m {
		out[idOf[k]] = v
	}
	return out, err
}
