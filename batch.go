package aside

import (
	"context"
	"errors"
	"fmt"
	"sort"
)

// BatchLoader fetches the values of keys from the source of truth after
// misses, in one call. A key absent from the returned map does not exist:
// it is treated as [ErrNotFound] (negatively cached under the profile's
// NegativeTTL). An error fails every key of the call.
type BatchLoader[T any] func(ctx context.Context, keys []string) (map[string]T, error)

// BatchError reports the keys of a [Cache.GetMany] that failed, with why.
// The other keys' values are returned beside it.
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
	return fmt.Sprintf("aside: %d of the keys failed, the first: %v", len(keys), e.Errs[keys[0]])
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
// compare-and-sets; tags apply to every key.
//
// Keys that do not exist are absent from the map. Keys that failed are
// absent too and reported in a *[BatchError]; the others are still
// returned. Like Get, GetMany fails open when Redis fails.
func (c *Cache[T]) GetMany(ctx context.Context, keys []string, load BatchLoader[T], opts ...CallOption) (map[string]T, error) {
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
			if v, ok := c.l1.get(k); ok {
				c.stats.l1Hits.Add(1)
				out[k] = v
				continue
			}
		}
		cl := &call[T]{key: k, rk: c.keys.entry(k), tags: o.tags}
		if c.l1 != nil {
			cl.note = c.l1.note(k)
		}
		calls = append(calls, cl)
	}
	if len(calls) > 0 {
		c.resolve(ctx, calls, source[T]{many: load})
	}
	errs := map[string]error{}
	for _, cl := range calls {
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
