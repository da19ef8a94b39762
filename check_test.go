package aside_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/asidecache/aside"
)

// row is a source row: the checker's oracle knows which version is
// current.
type row struct {
	Key     string
	Version int
}

// checkSource is a source of truth whose rows the test writes.
type checkSource struct {
	mu   sync.Mutex
	rows map[string]int
}

func (s *checkSource) load(_ context.Context, key string) (row, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return row{key, s.rows[key]}, nil
}

func (s *checkSource) write(key string, version int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rows[key] = version
}

func (s *checkSource) stale(v row) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return v.Version < s.rows[v.Key]
}

// TestCheckerFindsWhatIsThere (T32): the stale-set race played out on n keys
// — a load reads version 1, the row becomes version 2 and is invalidated,
// then the load returns. Intact, aside refuses every such fill; in the
// broken variant (plain cache-aside: fills without leases) every one lands.
// The checker, sampling every invalidation and every hit, must report as
// inconsistent exactly what an oracle that knows the versions counts stale:
// the entries left after the invalidations' first window, and the stale
// values served on each read path, L1 on and off.
func TestCheckerFindsWhatIsThere(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		for _, broken := range []bool{false, true} {
			for _, path := range []string{"get", "get-many", "peek"} {
				for _, l1 := range []bool{false, true} {
					name := fmt.Sprintf("broken=%v/%s/l1=%v", broken, path, l1)
					t.Run(name, func(t *testing.T) {
						t.Parallel() // each mostly waits for its windows
						runCheckerOracle(t, b, broken, path, l1)
					})
				}
			}
		}
	})
}

func runCheckerOracle(t *testing.T, b *backend, broken bool, path string, withL1 bool) {
	const n = 8
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := &checkSource{rows: map[string]int{}}
	var mu sync.Mutex
	var events []aside.Event
	store, _ := b.newStore(t, aside.WithObserver(func(e aside.Event) {
		if e.Kind == aside.EventInconsistent {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		}
	}))
	windows := [3]time.Duration{200 * time.Millisecond, 300 * time.Millisecond, 400 * time.Millisecond}
	opts := []aside.Option{aside.WithCheck(aside.Check[row]{Load: src.load, Hits: 1, Invalidations: 1,
		LoadsPerSecond: 10000, Windows: windows, Recheck: 100 * time.Millisecond})}
	if withL1 {
		opts = append(opts, aside.WithL1(100, time.Minute))
	}
	c := newCache[row](t, store, opts...)
	if broken {
		aside.SetTestHooks(c, &aside.TestHooks{Naive: true})
	}

	// The race, key by key: the load reads version 1 and is held until the
	// row is version 2 and invalidated.
	for i := range n {
		key := fmt.Sprint("k", i)
		src.write(key, 1)
		read, release := make(chan struct{}), make(chan struct{})
		done := make(chan error, 1)
		go func() {
			_, err := c.Get(ctx, key, func(ctx context.Context) (row, error) {
				v, err := src.load(ctx, key)
				close(read)
				select {
				case <-release:
				case <-ctx.Done():
				}
				return v, err
			})
			done <- err
		}()
		select {
		case <-read:
		case <-time.After(waitFor):
			t.Fatal("the load did not start")
		}
		src.write(key, 2)
		if err := c.Invalidate(ctx, key); err != nil {
			t.Fatal(err)
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := store.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The oracle, once the first window has passed: entries left stale.
	time.Sleep(windows[0] + 100*time.Millisecond)
	staleEntries, staleServed := 0, 0
	for i := range n {
		v, err := c.Peek(ctx, fmt.Sprint("k", i))
		switch {
		case errors.Is(err, aside.ErrMiss):
		case err != nil:
			t.Fatal(err)
		case src.stale(v):
			staleEntries++ // and a stale value served: a Peek is a read
			staleServed++
		}
	}

	// Reads on the path under test, twice per key (the second an L1 hit
	// with L1 on); the oracle counts the stale values served.
	for range 2 {
		for i := range n {
			key := fmt.Sprint("k", i)
			var v row
			var err error
			switch path {
			case "get":
				v, err = c.Get(ctx, key, src.loader(key))
			case "get-many":
				var m map[string]row
				m, err = c.GetMany(ctx, []string{key}, src.batch)
				v = m[key]
			case "peek":
				v, err = c.Peek(ctx, key)
				if errors.Is(err, aside.ErrMiss) {
					v, err = c.Get(ctx, key, src.loader(key))
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			if src.stale(v) {
				staleServed++
			}
		}
		if err := store.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Every check done: the hits', and each invalidation's third window.
	var st aside.Stats
	deadline := time.Now().Add(15 * time.Second)
	for {
		st = c.Stats()
		if st.Check.Hits.Checked >= st.Hits+st.L1Hits && st.Check.Invalidations[2].Checked >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	ck := st.Check
	t.Logf("oracle: %d stale entries, %d stale values served of %d hits; checker: invalidations %+v, hits %+v, %d loads, %d skipped",
		staleEntries, staleServed, st.Hits+st.L1Hits, ck.Invalidations, ck.Hits, ck.Loads, ck.Skipped)
	if ck.Skipped != 0 {
		t.Fatalf("the checker skipped %d samples within a budget of 10000 loads a second", ck.Skipped)
	}
	for i, w := range ck.Invalidations {
		if w.Checked != n {
			t.Errorf("window %v: %d invalidations checked, want %d", w.Window, w.Checked, n)
		}
		if i == 0 && int(w.Inconsistent) != staleEntries {
			t.Errorf("window %v: the checker found %d inconsistent, the oracle %d stale entries", w.Window, w.Inconsistent, staleEntries)
		}
	}
	if int(ck.Hits.Inconsistent) != staleServed {
		t.Errorf("hits: the checker found %d inconsistent, the oracle %d stale values served", ck.Hits.Inconsistent, staleServed)
	}
	if broken != (staleEntries == n && staleServed > 0) || !broken && (staleEntries != 0 || staleServed != 0) {
		t.Errorf("broken=%v: %d of %d entries stale, %d stale values served", broken, staleEntries, n, staleServed)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := ck.Hits.Inconsistent + ck.Invalidations[0].Inconsistent + ck.Invalidations[1].Inconsistent + ck.Invalidations[2].Inconsistent; uint64(len(events)) != got {
		t.Errorf("%d inconsistency events, %d inconsistencies counted", len(events), got)
	}
	for _, e := range events {
		if e.Cache != "items" || e.Key == "" || e.Err == nil {
			t.Errorf("event %+v: want the cache, the key and why", e)
		}
	}
}

func (s *checkSource) loader(key string) aside.Loader[row] {
	return func(ctx context.Context) (row, error) { return s.load(ctx, key) }
}

func (s *checkSource) batch(ctx context.Context, keys []string) (map[string]row, error) {
	out := map[string]row{}
	for _, k := range keys {
		out[k], _ = s.load(ctx, k)
	}
	return out, nil
}

// TestCheckSampledOutAllocatesNothing: with the checker on, a hit it does
// not sample allocates what it would without it — nothing from L1.
func TestCheckSampledOutAllocatesNothing(t *testing.T) {
	srv := miniredis.RunT(t)
	store, _ := (&backend{name: "miniredis", addr: srv.Addr(), mini: srv}).newStore(t)
	ctx := context.Background()
	allocs := map[string]float64{}
	src := &checkSource{rows: map[string]int{"k": 1}}
	never := aside.WithCheck(aside.Check[row]{Load: src.load, Hits: 1e-15}) // on, and (practically) never sampling
	l1 := aside.WithL1(10, time.Minute)
	for _, c := range []struct {
		name string
		opts []aside.Option
	}{{"l1", []aside.Option{l1, never}}, {"redis", []aside.Option{never}}, {"redis-unchecked", nil}} {
		cache, err := aside.New[row](store, "items-"+c.name, c.opts...)
		if err != nil {
			t.Fatal(err)
		}
		load := src.loader("k")
		get := func() {
			if _, err := cache.Get(ctx, "k", load); err != nil {
				t.Fatal(err)
			}
		}
		get()
		settled(t, store)
		// A strict L1 serves once the Store's bus is up and its lease held.
		for deadline := time.Now().Add(waitFor); c.name == "l1" && cache.Stats().L1Hits == 0; get() {
			if time.Now().After(deadline) {
				t.Fatal("L1 never served")
			}
			time.Sleep(time.Millisecond)
		}
		get()
		// The least of five: AllocsPerRun counts the process's allocations,
		// the Store's background work (heartbeats) included.
		allocs[c.name] = math.Inf(1)
		for range 5 {
			allocs[c.name] = min(allocs[c.name], testing.AllocsPerRun(200, get))
		}
	}
	if allocs["l1"] != 0 || allocs["redis"] != allocs["redis-unchecked"] {
		t.Errorf("allocations per hit: %v; want 0 from L1 and as many from Redis as without the checker", allocs)
	}
}
