package aside_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asidecache/aside"
)

func TestInvalidateTagsAcrossCaches(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		detail := newCacheNamed[string](t, store, "detail")
		listing := newCacheNamed[string](t, store, "listing")
		var version atomic.Int32
		version.Store(1)
		load := func(context.Context) (string, error) { return fmt.Sprint("v", version.Load()), nil }
		laptops := aside.Tags("category:laptops")
		get := func(c *aside.Cache[string], key string, opts ...aside.CallOption) string {
			t.Helper()
			v, err := c.Get(bgCtx, key, load, opts...)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		get(detail, "42", laptops)
		get(listing, "page1", laptops, aside.Tags("home"))
		get(detail, "7", aside.Tags("category:phones"))
		version.Store(2)
		if got := get(detail, "42", laptops); got != "v1" {
			t.Fatalf("before InvalidateTags: %s, want the cached v1", got)
		}
		if err := store.InvalidateTags(bgCtx, "category:laptops"); err != nil {
			t.Fatal(err)
		}
		if got := get(detail, "42", laptops); got != "v2" {
			t.Errorf("detail after InvalidateTags = %s, want v2", got)
		}
		if got := get(listing, "page1", laptops, aside.Tags("home")); got != "v2" {
			t.Errorf("listing after InvalidateTags = %s, want v2", got)
		}
		if got := get(detail, "7", aside.Tags("category:phones")); got != "v1" {
			t.Errorf("an entry of another tag = %s, want it untouched (v1)", got)
		}
		// A read that does not name the entry's tags still checks them.
		version.Store(3)
		if err := store.InvalidateTags(bgCtx, "home"); err != nil {
			t.Fatal(err)
		}
		if got := get(listing, "page1"); got != "v3" {
			t.Errorf("untagged read of an entry whose tag was invalidated = %s, want v3", got)
		}
	})
}

func TestSetWithTags(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[string](t, store)
		if err := c.Set(bgCtx, "k", "written", aside.Tags("t")); err != nil {
			t.Fatal(err)
		}
		if got := mustGetTagged(t, c, "k", "loaded", "t"); got != "written" {
			t.Fatalf("Get after Set = %s", got)
		}
		if err := store.InvalidateTags(bgCtx, "t"); err != nil {
			t.Fatal(err)
		}
		if got := mustGetTagged(t, c, "k", "loaded", "t"); got != "loaded" {
			t.Errorf("after InvalidateTags = %s, want loaded", got)
		}
	})
}

func mustGetTagged(t *testing.T, c *aside.Cache[string], key, value string, tags ...string) string {
	t.Helper()
	v, err := c.Get(bgCtx, key, func(context.Context) (string, error) { return value, nil }, aside.Tags(tags...))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// runT4: A reads the tag tokens and loads v1; the tag is invalidated; A
// fills. Returns what the next Get sees.
func runT4(t *testing.T, b *backend, p readPath, broken aside.TestHooks, tagKnown bool) int {
	store, _ := b.newStore(t)
	it := newInterleaving(t, store, broken)
	tag := aside.Tags("row")
	if tagKnown { // the tag key exists: A records the tokens its read saw, else those it creates
		if err := store.InvalidateTags(bgCtx, "row"); err != nil {
			t.Fatal(err)
		}
	}
	a := make(chan int, 1)
	go func() { v, _ := p.get(bgCtx, it.c, "k", it.load, tag); a <- v }()
	recv(t, it.loaded, "A's load")
	it.db.Store(2)
	if err := store.InvalidateTags(bgCtx, "row"); err != nil {
		t.Fatal(err)
	}
	close(it.proceed)
	recv(t, a, "A")
	v, err := p.get(bgCtx, it.c, "k", it.load, tag)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// runT5: an entry's tag is invalidated, then its tag key is evicted and
// recreated by another entry's miss; the old entry must not come back.
func runT5(t *testing.T, b *backend, p readPath, counter bool) int {
	prefix := uniquePrefix()
	store, rdb := b.newStore(t, aside.WithPrefix(prefix))
	if counter {
		aside.SetStoreHooks(store, &aside.TestHooks{CounterTokens: true})
	}
	c := newCache[int](t, store)
	var db atomic.Int32
	db.Store(1)
	load := func(context.Context) (int, error) { return int(db.Load()), nil }
	get := func(key string) int {
		v, err := p.get(bgCtx, c, key, load, aside.Tags("row"))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	get("k") // recorded with the tag's first token
	db.Store(2)
	if err := store.InvalidateTags(bgCtx, "row"); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(bgCtx, prefix+":#tag:{row}").Err(); err != nil { // eviction, behind our back
		t.Fatal(err)
	}
	get("other") // recreates the tag key
	return get("k")
}

func TestInterleavingsT4T5(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) {
			t.Run("T4 tokens read before the load", func(t *testing.T) {
				for _, known := range []bool{false, true} {
					if got := runT4(t, b, p, aside.TestHooks{}, known); got != 2 {
						t.Errorf("tag key existed: %v: got v%d, want v2", known, got)
					}
					if got := runT4(t, b, p, aside.TestHooks{TokensAfterLoad: true}, known); got != 1 {
						t.Errorf("tag key existed: %v: broken variant (tokens read after the load): got v%d, want the stale v1 — the test must be able to fail", known, got)
					}
				}
			})
			t.Run("T5 evicted tag key", func(t *testing.T) {
				if got := runT5(t, b, p, false); got != 2 {
					t.Errorf("got v%d, want v2", got)
				}
				if got := runT5(t, b, p, true); got != 1 {
					t.Errorf("broken variant (counter tokens): got v%d, want the stale v1 — the test must be able to fail", got)
				}
			})
		})
	})
}

func TestMarkTagsStale(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[int](t, store)
		var db, loads atomic.Int32
		db.Store(1)
		load := func(context.Context) (int, error) { loads.Add(1); return int(db.Load()), nil }
		tag := aside.Tags("price-list")
		if _, err := c.Get(bgCtx, "k", load, tag); err != nil {
			t.Fatal(err)
		}
		db.Store(2)
		if err := store.MarkTagsStale(bgCtx, "price-list", "unused"); err != nil {
			t.Fatal(err)
		}
		if v, err := c.Get(bgCtx, "k", load, tag); err != nil || v != 1 {
			t.Fatalf("after MarkTagsStale = %d, %v; want the stale 1 at once", v, err)
		}
		eventually(t, "the refresh", func() bool { return c.Stats().Refreshes == 1 })
		if v, _ := c.Get(bgCtx, "k", load, tag); v != 2 || loads.Load() != 2 {
			t.Errorf("after the refresh = %d with %d loads, want 2 after 2", v, loads.Load())
		}
		// A hard invalidation after a soft one is still hard.
		db.Store(3)
		_ = store.MarkTagsStale(bgCtx, "price-list")
		_ = store.InvalidateTags(bgCtx, "price-list")
		if v, _ := c.Get(bgCtx, "k", load, tag); v != 3 {
			t.Errorf("after InvalidateTags = %d, want 3", v)
		}
	})
}

func TestPurgeDeletesOneCacheOnly(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, rdb := b.newStore(t)
		items := newCacheNamed[int](t, store, "items")
		itemsV2 := newCacheNamedV[int](t, store, "items", 2)
		other := newCacheNamed[int](t, store, "items.x")
		one := func(context.Context) (int, error) { return 1, nil }
		for i := range 1200 {
			if _, err := items.Get(bgCtx, fmt.Sprint(i), one); err != nil {
				t.Fatal(err)
			}
		}
		_, _ = itemsV2.Get(bgCtx, "a", one)
		_, _ = other.Get(bgCtx, "a", one)
		settled(t, store) // every entry in Redis before it is counted
		n, err := items.Purge(bgCtx)
		if err != nil || n != 1201 {
			t.Fatalf("Purge = %d, %v; want 1201 (both versions)", n, err)
		}
		var loads atomic.Int32
		if v := mustGet(t, other, "a", countingLoader(2, &loads)); v != 1 || loads.Load() != 0 {
			t.Errorf("another cache lost its entry")
		}
		if v := mustGet(t, items, "0", countingLoader(2, &loads)); v != 2 {
			t.Errorf("purged entry still served")
		}
		_ = rdb
	})
}

func newCacheNamedV[T any](t *testing.T, store *aside.Store, name string, version int) *aside.Cache[T] {
	t.Helper()
	c, err := aside.New[T](store, name, aside.WithVersion(version))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestWriteInvalidatesAfterTheWrite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[string](t, store)
		var db atomic.Value
		db.Store("old")
		load := func(context.Context) (string, error) { return db.Load().(string), nil }
		_, _ = c.Get(bgCtx, "k", load)
		_, _ = c.Get(bgCtx, "t", load, aside.Tags("tag"))
		errWrite := errors.New("deadlock")
		err := store.Write(bgCtx, func(context.Context) error {
			db.Store("new")
			return errWrite // e.g. a timeout after the commit
		}, c.Changed("k"), store.TagsChanged("tag"))
		if err != errWrite {
			t.Errorf("Write = %v, want the write's own error unchanged", err)
		}
		if v, _ := c.Get(bgCtx, "k", load); v != "new" {
			t.Errorf("key after Write = %s, want new", v)
		}
		if v, _ := c.Get(bgCtx, "t", load, aside.Tags("tag")); v != "new" {
			t.Errorf("tagged entry after Write = %s, want new", v)
		}
	})
}

func TestBadTags(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[int](t, store)
		one := func(context.Context) (int, error) { return 1, nil }
		many := make([]string, 65)
		for i := range many {
			many[i] = fmt.Sprint("t", i)
		}
		tests := map[string]error{}
		_, tests["empty tag"] = c.Get(bgCtx, "k", one, aside.Tags(""))
		_, tests["too many"] = c.Get(bgCtx, "k", one, aside.Tags(many...))
		_, tests["too long"] = c.Get(bgCtx, "k", one, aside.Tags(strings.Repeat("x", 513)))
		tests["invalidate empty"] = store.InvalidateTags(bgCtx, "")
		for name, err := range tests {
			if err == nil || !strings.HasPrefix(err.Error(), "aside: ") {
				t.Errorf("%s: %v, want an aside: error", name, err)
			}
		}
		if v, err := c.Get(bgCtx, "k", one, aside.Tags("a", "a", "b")); err != nil || v != 1 {
			t.Errorf("duplicate tags: %d, %v; want them ignored", v, err)
		}
		_ = time.Second
	})
}
