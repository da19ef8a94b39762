package aside_test

import (
	"context"
	"errors"
	"testing"

	"github.com/asidecache/aside"
)

// The read paths that every per-path test runs through, and the check
// that runs a test against its broken variant.

// readPath is one way to read a key: Get, or GetMany of that key and a
// second one (so that every step is a real multi-key pipeline).
type readPath struct {
	name string
	keys int // how many keys one read touches
	get  func(ctx context.Context, c *aside.Cache[int], key string, load aside.Loader[int], opts ...aside.CallOption) (int, error)
}

var readPaths = []readPath{
	{"Get", 1, func(ctx context.Context, c *aside.Cache[int], key string, load aside.Loader[int], opts ...aside.CallOption) (int, error) {
		return c.Get(ctx, key, load, opts...)
	}},
	{"GetMany", 2, getViaMany},
	// A Get that starts with the lease script, as reads do while their
	// cache's reads mostly miss (read.go); with tags, it is the Get above.
	{"Get-lease-first", 1, func(ctx context.Context, c *aside.Cache[int], key string, load aside.Loader[int], opts ...aside.CallOption) (int, error) {
		return c.Get(ctx, key, load, append(opts[:len(opts):len(opts)], aside.LeaseFirstCall())...)
	}},
}

// getViaMany reads key with GetMany, beside a companion key that mirrors
// it; the batch loader calls load once for both.
func getViaMany(ctx context.Context, c *aside.Cache[int], key string, load aside.Loader[int], opts ...aside.CallOption) (int, error) {
	batch := func(ctx context.Context, keys []string) (map[string]int, error) {
		v, err := load(ctx)
		switch {
		case errors.Is(err, aside.ErrNotFound):
			return map[string]int{}, nil
		case err != nil:
			return nil, err
		}
		m := make(map[string]int, len(keys))
		for _, k := range keys {
			m[k] = v
		}
		return m, nil
	}
	m, err := c.GetMany(ctx, []string{key, key + "~pair"}, batch, opts...)
	var be *aside.BatchError
	if errors.As(err, &be) {
		if kerr, ok := be.Errs[key]; ok {
			return 0, kerr
		}
	} else if err != nil {
		return 0, err
	}
	v, ok := m[key]
	if !ok {
		return 0, aside.ErrNotFound
	}
	return v, nil
}

// forEachPath runs fn for every read path as a subtest.
func forEachPath(t *testing.T, fn func(t *testing.T, p readPath)) {
	for _, p := range readPaths {
		t.Run(p.name, func(t *testing.T) { fn(t, p) })
	}
}

// expectBroken runs a check on the fixed code and on its broken variant:
// the first must hold, the second must not (or the test could not fail).
func expectBroken(t *testing.T, what string, holds func(broken bool) bool) {
	t.Helper()
	if !holds(false) {
		t.Errorf("%s: does not hold", what)
	}
	if holds(true) {
		t.Errorf("%s: holds on the broken variant too: the test cannot fail", what)
	}
}
