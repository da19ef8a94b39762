package aside_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/asidecache/aside"
)

// clock is a controllable clock for freshness decisions: real time plus an
// offset, so that load durations stay real.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// eventually polls cond until it holds, failing the test after waitFor.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestNegativeCaching(t *testing.T) {
	srv := miniredis.RunT(t)
	b := &backend{addr: srv.Addr(), mini: srv}
	on := aside.Profile{Name: "on", TTL: time.Minute, LoadTimeout: time.Second, NegativeTTL: 10 * time.Second}
	off := aside.Profile{Name: "off", TTL: time.Minute, LoadTimeout: time.Second}
	store, _ := b.newStore(t, aside.WithProfiles(on, off))
	var loads atomic.Int32
	missing := func(context.Context) (string, error) {
		loads.Add(1)
		return "", fmt.Errorf("product 7: %w", aside.ErrNotFound)
	}
	c, _ := aside.New[string](store, "neg", aside.WithProfile("on"))
	for i := range 3 {
		if _, err := c.Get(bgCtx, "7", missing); !errors.Is(err, aside.ErrNotFound) {
			t.Fatalf("Get %d = %v, want ErrNotFound", i, err)
		}
		settled(t, store) // the negative entry lands just after the Get returns
	}
	if s := c.Stats(); loads.Load() != 1 || s.NegativeHits != 2 {
		t.Errorf("%d loads, %d negative hits; want 1 and 2", loads.Load(), s.NegativeHits)
	}
	srv.FastForward(10 * time.Second)
	if _, err := c.Get(bgCtx, "7", missing); !errors.Is(err, aside.ErrNotFound) || loads.Load() != 2 {
		t.Errorf("after NegativeTTL: %v with %d loads, want ErrNotFound from a new load", err, loads.Load())
	}
	// A negative entry is replaced as soon as the row exists and the key is
	// invalidated.
	if err := c.Invalidate(bgCtx, "7"); err != nil {
		t.Fatal(err)
	}
	if v := mustGet(t, c, "7", func(context.Context) (string, error) { return "found", nil }); v != "found" {
		t.Errorf("after Invalidate: %q", v)
	}

	loads.Store(0)
	plain, _ := aside.New[string](store, "plain", aside.WithProfile("off"))
	for range 2 {
		if _, err := plain.Get(bgCtx, "7", missing); !errors.Is(err, aside.ErrNotFound) {
			t.Fatal(err)
		}
	}
	if loads.Load() != 2 {
		t.Errorf("NegativeTTL 0: %d loads, want 2 (not cached)", loads.Load())
	}
}

// staleSetup: a 10 s fresh TTL, a 1 min stale window, no early refresh, and
// a clock the test controls.
func staleSetup(t *testing.T, b *backend) (*aside.Cache[int], *clock) {
	p := aside.Profile{Name: "swr", TTL: 10 * time.Second, LoadTimeout: time.Second, StaleWindow: time.Minute}
	clk := &clock{}
	store, _ := b.newStore(t, aside.WithProfiles(p), aside.WithClock(clk.now))
	c, _ := aside.New[int](store, "swr", aside.WithProfile("swr"))
	return c, clk
}

func TestStaleWhileRevalidate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		c, clk := staleSetup(t, b)
		mustGet(t, c, "k", func(context.Context) (int, error) { return 1, nil })
		clk.advance(11 * time.Second) // past fresh, inside the stale window
		release := make(chan struct{})
		var loads atomic.Int32
		slow := func(context.Context) (int, error) { loads.Add(1); <-release; return 2, nil }
		start := time.Now()
		for range 5 {
			if got := getOK(t, c, "k", slow); got != 1 {
				t.Fatalf("stale read = %d, want the stale 1 at once", got)
			}
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("5 stale reads took %v while the refresh was blocked", d)
		}
		close(release)
		eventually(t, "the background refresh", func() bool { return c.Stats().Refreshes == 1 })
		if got := mustGet(t, c, "k", slow); got != 2 || loads.Load() != 1 {
			t.Errorf("after the refresh: %d with %d loads, want 2 after exactly 1 refresh load", got, loads.Load())
		}
		if s := c.Stats(); s.StaleServed != 5 {
			t.Errorf("StaleServed = %d, want 5", s.StaleServed)
		}
	})
}

func TestStaleIfError(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		c, clk := staleSetup(t, b)
		mustGet(t, c, "k", func(context.Context) (int, error) { return 1, nil })
		clk.advance(11 * time.Second)
		failing := func(context.Context) (int, error) { return 0, errors.New("db down") }
		for i := range 3 {
			if got := mustGet(t, c, "k", failing); got != 1 {
				t.Fatalf("read %d = %d, want the stale 1 while the source fails", i, got)
			}
			eventually(t, "a failed refresh", func() bool { return c.Stats().LoadErrors >= 1 })
		}
		if s := c.Stats(); s.StaleServed != 3 || s.Refreshes != 0 {
			t.Errorf("stats = %+v, want 3 stale served and no refresh written", s)
		}
		clk.advance(time.Minute) // past the stale window: a real miss, the error surfaces
		if b.mini != nil {
			b.mini.FastForward(time.Minute + 11*time.Second)
			if _, err := c.Get(bgCtx, "k", failing); err == nil {
				t.Error("past the stale window the loader's error must be returned")
			}
		}
	})
}

func TestMarkStaleServesOldWhileOneRefreshReloads(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[int](t, store)
		var db atomic.Int32
		db.Store(1)
		var loads atomic.Int32
		load := func(context.Context) (int, error) {
			loads.Add(1)
			time.Sleep(20 * time.Millisecond)
			return int(db.Load()), nil
		}
		mustGet(t, c, "k", load)
		db.Store(2)
		if err := c.MarkStale(bgCtx, "k", "absent"); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if v, err := c.Get(bgCtx, "k", load); err != nil || v < 1 {
					t.Errorf("Get = %d, %v", v, err)
				}
			}()
		}
		waitGroup(t, &wg)
		eventually(t, "the refresh", func() bool { return c.Stats().Refreshes == 1 })
		if got := mustGet(t, c, "k", load); got != 2 || loads.Load() != 2 {
			t.Errorf("after the refresh: %d with %d loads, want 2 after 2 loads (fill + one refresh)", got, loads.Load())
		}
		if c.Stats().StaleServed == 0 {
			t.Error("no read was served stale after MarkStale")
		}
	})
}

// xfetchRun: 4 Stores (as 4 processes) read one hot key in a loop while the
// clock and Redis' TTLs advance through expiry cycles; the entry has no
// stale window, so an entry not refreshed before it expires is a miss, or
// (inside the clock-skew margin) a stale read. It returns the loads and the
// reads after the first fill that were not fresh hits.
func xfetchRun(t *testing.T, p readPath, beta float64, cycles int) (loads int32, missed uint64) {
	srv := miniredis.RunT(t)
	b := &backend{addr: srv.Addr(), mini: srv}
	prefix := uniquePrefix()
	prof := aside.Profile{Name: "hot", TTL: 10 * time.Second, LoadTimeout: time.Second, EarlyRefresh: beta}
	clk := &clock{}
	var caches []*aside.Cache[int]
	for range 4 {
		store, _ := b.newStore(t, aside.WithPrefix(prefix), aside.WithProfiles(prof), aside.WithClock(clk.now))
		c, _ := aside.New[int](store, "hot", aside.WithProfile("hot"))
		caches = append(caches, c)
	}
	var n atomic.Int32
	var freshUntil atomic.Int64
	load := func(context.Context) (int, error) {
		freshUntil.Store(clk.now().Add(prof.TTL).UnixNano())
		// δ: the recorded load time. XFetch refreshes about δ·ln(reads in
		// δ) before expiry — ~150 ms here — which must cover the refresh
		// itself on a loaded machine: at 20 ms, 1 run in 4 missed reads
		// beside one CPU-bound process (the refresh not back in time).
		time.Sleep(40 * time.Millisecond)
		return int(n.Add(1)), nil
	}
	mustGetVia(t, p, caches[0], "hot", load)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range caches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := p.get(bgCtx, c, "hot", load); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	// Each cycle: jump to 300 ms before expiry, then let time run in real
	// time (miniredis' TTLs follow by FastForward) until 100 ms past it.
	step := time.Millisecond
	for range cycles {
		lead := time.Until(time.Unix(0, freshUntil.Load()).Add(-time.Duration(clk.offset.Load()))) - 300*time.Millisecond
		clk.advance(lead)
		srv.FastForward(lead)
		for elapsed := time.Duration(0); elapsed < 400*time.Millisecond; elapsed += step {
			time.Sleep(step)
			clk.advance(0)
			srv.FastForward(step)
		}
	}
	close(stop)
	waitGroup(t, &wg)
	for _, c := range caches {
		s := c.Stats()
		missed += s.Misses + s.StaleServed
	}
	return n.Load(), missed - uint64(p.keys) // the first fill's misses
}

// TestT9XFetch: with early refresh, a hot key read by 4 processes is
// refreshed once per expiry cycle and every read is a fresh hit; without it
// (the broken variant) readers miss or get stale values at each expiry.
func TestT9XFetch(t *testing.T) {
	requireLong(t)
	const cycles = 4
	forEachPath(t, func(t *testing.T, p readPath) {
		loads, missed := xfetchRun(t, p, 1, cycles)
		t.Logf("XFetch β=1: %d loads over %d cycles, %d reads not fresh", loads, cycles, missed)
		if want := 1 + int32(p.keys*cycles); loads != want || missed != 0 { // one fill, then one refresh per key and cycle
			t.Errorf("XFetch: %d loads and %d reads not fresh over %d cycles; want %d loads, 0", loads, missed, cycles, want)
		}
		loads, missed = xfetchRun(t, p, 0, cycles)
		t.Logf("no early refresh: %d loads over %d cycles, %d reads not fresh", loads, cycles, missed)
		if missed == 0 {
			t.Error("without early refresh every read was fresh: the test cannot fail")
		}
	})
}
