package aside_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidetest"
)

var errNoSuchProduct = errors.New("catalog: no such product")

// TestNotFoundKeepsItsIdentity: with WithNotFound, a not-found matches the
// cache's own error and ErrNotFound alike — on the call that loaded it, on
// the cached negative entry after it, and whether the loader returned the
// cache's error or aside's. Without it, ErrNotFound still matches on both.
func TestNotFoundKeepsItsIdentity(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		for _, tc := range []struct {
			name   string
			opts   []aside.Option
			loaded error // what the loader returns
			match  []error
		}{
			{"own error", []aside.Option{aside.WithNotFound(errNoSuchProduct)}, fmt.Errorf("product 7: %w", errNoSuchProduct), []error{errNoSuchProduct, aside.ErrNotFound}},
			{"aside's error", []aside.Option{aside.WithNotFound(errNoSuchProduct)}, aside.ErrNotFound, []error{errNoSuchProduct, aside.ErrNotFound}},
			{"without WithNotFound", nil, fmt.Errorf("product 7: %w", aside.ErrNotFound), []error{aside.ErrNotFound}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c, err := aside.New[product](store, "nf"+fmt.Sprint(len(tc.name)), tc.opts...)
				if err != nil {
					t.Fatal(err)
				}
				calls := 0
				load := func(context.Context) (product, error) { calls++; return product{}, tc.loaded }
				for i, when := range []string{"loaded", "cached"} {
					_, err := c.Get(bgCtx, "7", load)
					for _, want := range tc.match {
						if !errors.Is(err, want) {
							t.Errorf("%s: Get = %v, which does not match %v", when, err, want)
						}
					}
					if calls != 1 {
						t.Fatalf("%s: %d loader calls after %d Gets, want 1 (a negative entry)", when, calls, i+1)
					}
				}
			})
		}
	})
}

// TestPeekReadsWithoutLoading: Peek answers what is cached — a value, a
// cached not-found, nothing (ErrMiss), or ErrUnavailable when Redis cannot
// be read — and never loads, leases or refreshes.
func TestPeekReadsWithoutLoading(t *testing.T) {
	store, fake := asidetest.New(t, aside.WithBreaker(1, time.Hour))
	c, err := aside.New[product](store, "peek", aside.WithNotFound(errNoSuchProduct))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Peek(bgCtx, "1"); !errors.Is(err, aside.ErrMiss) {
		t.Fatalf("Peek of an empty cache = %v, want ErrMiss", err)
	}
	mustGet(t, c, "1", func(context.Context) (product, error) { return product{ID: 1}, nil })
	if p, err := c.Peek(bgCtx, "1"); err != nil || p.ID != 1 {
		t.Fatalf("Peek after Get = %+v, %v; want the cached value", p, err)
	}
	_, _ = c.Get(bgCtx, "2", func(context.Context) (product, error) { return product{}, errNoSuchProduct })
	settled(t, store) // the negative entry lands just after the Get returns
	if _, err := c.Peek(bgCtx, "2"); !errors.Is(err, errNoSuchProduct) || !errors.Is(err, aside.ErrNotFound) {
		t.Fatalf("Peek of a cached not-found = %v, want the cache's not-found", err)
	}
	if err := c.Invalidate(bgCtx, "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Peek(bgCtx, "1"); !errors.Is(err, aside.ErrMiss) {
		t.Fatalf("Peek after Invalidate = %v, want ErrMiss", err)
	}
	if keys := entryKeys(fake.Miniredis()); len(keys) != 1 { // the negative entry of "2", and no lease
		t.Errorf("Redis holds %v after Peeks; want only the negative entry: Peek takes no lease", keys)
	}
	fake.Down()
	if _, err := c.Peek(bgCtx, "2"); !errors.Is(err, aside.ErrUnavailable) {
		t.Fatalf("Peek with Redis down = %v, want ErrUnavailable", err)
	}
	if s := c.Stats(); s.Loads != 2 {
		t.Errorf("loads = %d, want the 2 Gets' only", s.Loads)
	}
}

// TestExpireAtBoundsALoadedValue: a loader that knows its value's lifetime
// caps it — fresh, and kept in Redis, no later than that, even with a
// stale window; a lifetime already over is not cached at all. Through Get
// and GetMany.
func TestExpireAtBoundsALoadedValue(t *testing.T) {
	stale := aside.Profile{Name: "stale", TTL: time.Hour, LoadTimeout: time.Second, StaleWindow: time.Hour}
	store, fake := asidetest.New(t, aside.WithProfiles(stale))
	c, err := aside.New[string](store, "tokens", aside.WithProfile("stale"))
	if err != nil {
		t.Fatal(err)
	}
	var calls asidetest.Counter
	token := func(life time.Duration) aside.Loader[string] {
		return asidetest.Counting(&calls, func(ctx context.Context) (string, error) {
			aside.ExpireAt(ctx, fake.Now().Add(life))
			return fmt.Sprint("token-", calls.Calls()), nil
		})
	}
	batch := func(life time.Duration) aside.BatchLoader[string] {
		return func(ctx context.Context, keys []string) (map[string]string, error) {
			aside.ExpireAt(ctx, fake.Now().Add(life))
			return map[string]string{keys[0]: "batched"}, nil
		}
	}
	mustGet(t, c, "t", token(time.Minute))
	if _, err := c.GetMany(bgCtx, []string{"b"}, batch(time.Minute)); err != nil {
		t.Fatal(err)
	}
	fake.Advance(30 * time.Second)
	if _, err := c.Peek(bgCtx, "t"); err != nil {
		t.Fatalf("Peek within the value's lifetime = %v", err)
	}
	fake.Advance(31 * time.Second)
	for _, k := range []string{"t", "b"} {
		if v, err := c.Peek(bgCtx, k); !errors.Is(err, aside.ErrMiss) {
			t.Errorf("%s past its ExpireAt, inside the profile's TTL and stale window: Peek = %q, %v; want ErrMiss", k, v, err)
		}
	}
	if v := mustGet(t, c, "past", token(-time.Second)); v == "" {
		t.Fatal("a value whose lifetime is over was not returned")
	}
	if _, err := c.Peek(bgCtx, "past"); !errors.Is(err, aside.ErrMiss) {
		t.Errorf("a value whose lifetime was over was cached: Peek = %v", err)
	}
}

// TestSetManyStoresAllOrInvalidatesAll: SetMany writes every value, and when
// one cannot be stored it fails and leaves none of the old values behind.
func TestSetManyStoresAllOrInvalidatesAll(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		p := aside.Profile{Name: "small", TTL: time.Minute, LoadTimeout: time.Second, MaxEntryBytes: 256}
		store, _ := b.newStore(t, aside.WithProfiles(p))
		c := newCache[string](t, store, aside.WithProfile("small"))
		if err := c.SetMany(bgCtx, map[string]string{"a": "1", "b": "2", "c": "3"}); err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]string{"a": "1", "b": "2", "c": "3"} {
			if v, err := c.Peek(bgCtx, k); err != nil || v != want {
				t.Errorf("Peek(%s) = %q, %v; want %q", k, v, err, want)
			}
		}
		err := c.SetMany(bgCtx, map[string]string{"a": "new", "b": strings.Repeat("x", 1000)})
		var be *aside.BatchError
		if !errors.As(err, &be) || len(be.Errs) != 1 || be.Errs["b"] == nil || strings.Contains(err.Error(), "xxx") {
			t.Fatalf("SetMany with an oversize value = %v, want a *BatchError holding key b (and no value in its message)", err)
		}
		for _, k := range []string{"a", "b"} {
			if v, err := c.Peek(bgCtx, k); !errors.Is(err, aside.ErrMiss) {
				t.Errorf("after a failed SetMany, Peek(%s) = %q, %v; want ErrMiss (invalidated)", k, v, err)
			}
		}
		if v, err := c.Peek(bgCtx, "c"); err != nil || v != "3" {
			t.Errorf("a key SetMany did not name: %q, %v", v, err)
		}
	})
}

// TestWriteWithChangesFromItsResult: Later's changes are computed after the
// write, from what it returned, and run like the others.
func TestWriteWithChangesFromItsResult(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		listings := newCache[[]string](t, store)
		var loads atomic.Int32
		list := func(context.Context) ([]string, error) { loads.Add(1); return []string{"p1"}, nil }
		for range 2 {
			if _, err := listings.Get(bgCtx, "cat-b", list, aside.Tags("category:b")); err != nil {
				t.Fatal(err)
			}
		}
		var moved product
		err := store.Write(bgCtx, func(context.Context) error {
			moved = product{ID: 1, Name: "b"} // the row now in category b, known only from the write
			return nil
		}, aside.Later(func() []aside.Change {
			return []aside.Change{store.TagsChanged("category:" + moved.Name)}
		}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := listings.Get(bgCtx, "cat-b", list, aside.Tags("category:b")); err != nil {
			t.Fatal(err)
		}
		if n := loads.Load(); n != 2 {
			t.Errorf("listing loads = %d, want 2: the tag named by the write's result was invalidated", n)
		}
	})
}

// TestGetBatchByIDsWithTagsPerEntry: the batch loader gets the caller's
// ids, the result is keyed by id, and each entry carries its own tag, so
// invalidating one entry's tag reloads that entry alone.
func TestGetBatchByIDsWithTagsPerEntry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[product](t, store)
		var asked [][]int
		batch := aside.Batch[int, product]{
			Key: func(id int) string { return aside.Key(fmt.Sprint(id), "en") },
			Load: func(_ context.Context, ids []int) (map[int]product, error) {
				asked = append(asked, slices.Sorted(slices.Values(ids)))
				out := map[int]product{}
				for _, id := range ids {
					if id != 404 {
						out[id] = product{ID: id}
					}
				}
				return out, nil
			},
			Tags: func(id int) []string { return []string{fmt.Sprint("product:", id)} },
		}
		for range 2 {
			got, err := aside.GetBatch(bgCtx, c, []int{1, 2, 3, 404}, batch, aside.Tags("catalog"))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 3 || got[2].ID != 2 {
				t.Fatalf("GetBatch = %+v, want ids 1–3 by id", got)
			}
		}
		if err := store.InvalidateTags(bgCtx, "product:2"); err != nil {
			t.Fatal(err)
		}
		if _, err := aside.GetBatch(bgCtx, c, []int{1, 2, 3}, batch, aside.Tags("catalog")); err != nil {
			t.Fatal(err)
		}
		if want := [][]int{{1, 2, 3, 404}, {2}}; !slices.EqualFunc(asked, want, slices.Equal) {
			t.Errorf("the loader was asked for %v, want %v: ids, and only what product:2 invalidated", asked, want)
		}
		// A Get names the same tags through KeyTags, and hits.
		p, err := c.Get(bgCtx, aside.Key("3", "en"), func(context.Context) (product, error) { return product{}, errors.New("loaded") },
			aside.Tags("catalog"), aside.KeyTags(func(string) []string { return []string{"product:3"} }))
		if err != nil || p.ID != 3 {
			t.Errorf("Get with the entry's tags = %+v, %v; want the cached entry", p, err)
		}
		if err := store.InvalidateTags(bgCtx, "catalog"); err != nil {
			t.Fatal(err)
		}
		if _, err := aside.GetBatch(bgCtx, c, []int{1, 3}, batch, aside.Tags("catalog")); err != nil {
			t.Fatal(err)
		}
		if last := asked[len(asked)-1]; !slices.Equal(last, []int{1, 3}) {
			t.Errorf("after the shared tag's invalidation the loader got %v, want [1 3]", last)
		}
	})
}

// recordingTracer keeps the outcome of every span, in order.
type recordingTracer struct {
	mu   sync.Mutex
	seen []string
}

func (r *recordingTracer) Start(ctx context.Context, op, cache string) (context.Context, aside.Span) {
	return ctx, recordingSpan{r, op}
}

type recordingSpan struct {
	r  *recordingTracer
	op string
}

func (s recordingSpan) End(os aside.Outcomes, _ error) {
	o, _ := os.Only()
	s.r.mu.Lock()
	s.r.seen = append(s.r.seen, s.op+":"+o.String())
	s.r.mu.Unlock()
}

// TestTracerSeesEveryOutcome: the tracing hook is told how each read was
// answered, on every read path.
func TestTracerSeesEveryOutcome(t *testing.T) {
	tr := &recordingTracer{}
	prof := aside.Profile{Name: "swr", TTL: time.Minute, LoadTimeout: time.Second, StaleWindow: time.Hour, NegativeTTL: time.Minute}
	brief := aside.Profile{Name: "brief", TTL: time.Minute, LoadTimeout: time.Second, WaitBudget: 50 * time.Millisecond}
	store, fake := asidetest.New(t, aside.WithTracer(tr), aside.WithProfiles(prof, brief), aside.WithBreaker(1, time.Hour))
	c, err := aside.New[string](store, "traced", aside.WithProfile("swr"))
	if err != nil {
		t.Fatal(err)
	}
	waiting, err := aside.New[string](store, "waiting", aside.WithProfile("brief"))
	if err != nil {
		t.Fatal(err)
	}
	l1, err := aside.New[string](store, "local", aside.WithL1(10, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	load := func(context.Context) (string, error) { return "v", nil }
	_, _ = c.Peek(bgCtx, "k")
	_, _ = c.Get(bgCtx, "k", load)
	settled(t, store)
	_, _ = c.Get(bgCtx, "k", load)
	fake.Advance(2 * time.Minute)
	_, _ = c.Get(bgCtx, "k", load)
	_, _ = c.Get(bgCtx, "nf", func(context.Context) (string, error) { return "", aside.ErrNotFound })
	settled(t, store)
	_, _ = c.Get(bgCtx, "nf", load)
	// Strict L1 keeps and serves values only once the Store has heard its
	// own first heartbeat back: on a busy machine, later than this point.
	eventually(t, "L1 serving", func() bool { return store.Coherence().L1Serving })
	_, _ = l1.Get(bgCtx, "k", load)
	settled(t, store)
	_, _ = l1.Get(bgCtx, "k", load)
	// A wait that outlives its budget: the caller loads by itself, without a
	// lease — not "loaded", which says a lease covered the load.
	held, release, holderDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(holderDone)
		_, _ = waiting.Get(bgCtx, "slow", func(context.Context) (string, error) { close(held); <-release; return "v", nil })
	}()
	<-held
	_, _ = waiting.Get(bgCtx, "slow", load)
	close(release)
	<-holderDone
	settled(t, store)
	fake.Down()
	_, _ = c.Get(bgCtx, "other", load)
	want := []string{"peek:miss", "get:loaded", "get:hit", "get:stale", "get:loaded", "get:negative", "get:loaded", "get:l1_hit", "get:wait_timeout", "get:loaded", "get:degraded"}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if !slices.Equal(tr.seen, want) {
		t.Errorf("outcomes = %v\nwant       %v", tr.seen, want)
	}
}

// TestWriteOnlyProcessReplaysItsQueue: a Store that never reads replays the
// invalidations that failed on its next invalidation, and on Close — else
// other processes would serve the old values until they expire (found by
// the chaos run).
func TestWriteOnlyProcessReplaysItsQueue(t *testing.T) {
	for _, via := range []string{"next write", "Close"} {
		t.Run(via, func(t *testing.T) {
			g := newReplayRig(t)
			writer, fake, w, r, load := g.writer, g.fake, g.w, g.r, g.load
			fake.Down()
			g.version = 2
			if err := w.Invalidate(bgCtx, "k"); err == nil {
				t.Fatal("Invalidate with Redis down returned nil")
			}
			if n, _ := writer.Pending(); n != 1 {
				t.Fatalf("%d invalidations queued, want 1", n)
			}
			fake.Up()
			fake.Advance(time.Hour) // the writer's breaker may probe again
			if via == "Close" {
				if err := writer.Close(); err != nil {
					t.Fatalf("Close = %v, want the queue replayed", err)
				}
			} else if err := w.Invalidate(bgCtx, "other"); err != nil {
				t.Fatal(err)
			}
			if n, _ := writer.Pending(); n != 0 {
				t.Errorf("%d invalidations still queued", n)
			}
			if got := mustGet(t, r, "k", load); got != 2 {
				t.Errorf("another Store reads %d, want 2: the failed invalidation was not replayed", got)
			}
		})
	}
}
