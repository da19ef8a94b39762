package aside_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

type product struct {
	ID    int
	Name  string
	Price float64
	Tags  []string
}

// countingLoader returns v and counts its calls.
func countingLoader[T any](v T, calls *atomic.Int32) aside.Loader[T] {
	return func(context.Context) (T, error) {
		calls.Add(1)
		return v, nil
	}
}

// mustGet is one step of a sequential scenario: a Get that must succeed,
// and whose fill, if it loaded, has landed in Redis when it returns (as the
// next step, looking at Redis or reading from another Store, assumes). The
// window between a Get's return and its fill has tests of its own
// (backlog_test.go); concurrent tests call Get itself.
func mustGet[T any](t *testing.T, c *aside.Cache[T], key string, load aside.Loader[T]) T {
	t.Helper()
	v := getOK(t, c, key, load)
	settled(t, aside.StoreOf(c))
	return v
}

// getOK is a Get that must succeed, for a step taken while the test holds
// a background write (a load, a fill, a refresh) that mustGet would wait for.
func getOK[T any](t *testing.T, c *aside.Cache[T], key string, load aside.Loader[T]) T {
	t.Helper()
	v, err := c.Get(bgCtx, key, load)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return v
}

func TestGetMissThenHit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[product](t, store)
		want := product{ID: 7, Name: "laptop", Price: 999.5, Tags: []string{"a", "b"}}
		var calls atomic.Int32
		for range 3 {
			got := mustGet(t, c, "7", countingLoader(want, &calls))
			if got.Name != want.Name || got.Price != want.Price || len(got.Tags) != 2 {
				t.Fatalf("Get = %+v, want %+v", got, want)
			}
		}
		if n := calls.Load(); n != 1 {
			t.Errorf("loader calls = %d, want 1", n)
		}
		s := c.Stats()
		if s.Hits != 2 || s.Misses != 1 || s.Loads != 1 || s.BytesWritten == 0 {
			t.Errorf("stats = %+v, want 2 hits, 1 miss, 1 load, bytes written", s)
		}
	})
}

func TestStampedeOneLoad(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[string](t, store)
		var calls atomic.Int32
		release := make(chan struct{})
		load := func(context.Context) (string, error) {
			calls.Add(1)
			<-release
			return "v", nil
		}
		const n = 64
		var started, done sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			started.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				started.Done()
				v, err := c.Get(bgCtx, "cold", load)
				if err == nil && v != "v" {
					err = errors.New("wrong value " + v)
				}
				errs <- err
			}()
		}
		started.Wait()
		time.Sleep(20 * time.Millisecond) // let most goroutines reach the flight; correctness does not depend on it
		close(release)
		waitGroup(t, &done)
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := calls.Load(); got != 1 {
			t.Errorf("loader calls = %d, want exactly 1", got)
		}
	})
}

// waitGroup waits for wg, failing the test instead of hanging.
func waitGroup(t *testing.T, wg *sync.WaitGroup) {
	t.Helper()
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(waitFor):
		t.Fatal("timed out waiting for goroutines")
	}
}

func TestLoaderErrorReturnedUnchangedNotCached(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[int](t, store)
		errDB := errors.New("db down")
		var calls atomic.Int32
		failing := func(context.Context) (int, error) { calls.Add(1); return 0, errDB }
		for range 2 {
			if _, err := c.Get(bgCtx, "k", failing); err != errDB {
				t.Fatalf("Get error = %v, want the loader's error unchanged", err)
			}
		}
		if calls.Load() != 2 {
			t.Errorf("loader calls = %d, want 2 (errors are not cached)", calls.Load())
		}
		if got := mustGet(t, c, "k", func(context.Context) (int, error) { return 5, nil }); got != 5 {
			t.Errorf("Get after errors = %d, want 5", got)
		}
		if s := c.Stats(); s.LoadErrors != 2 {
			t.Errorf("LoadErrors = %d, want 2", s.LoadErrors)
		}
	})
}

func TestLoaderPanicBecomesErrorForEveryWaiter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[int](t, store)
		release := make(chan struct{})
		load := func(context.Context) (int, error) {
			<-release
			panic("boom")
		}
		const n = 8
		errs := make(chan error, n)
		for range n {
			go func() { _, err := c.Get(bgCtx, "p", load); errs <- err }()
		}
		time.Sleep(10 * time.Millisecond)
		close(release)
		for range n {
			select {
			case err := <-errs:
				if !errors.Is(err, aside.ErrLoaderPanic) || !strings.Contains(err.Error(), "boom") {
					t.Fatalf("err = %v, want ErrLoaderPanic with the panic value", err)
				}
			case <-time.After(waitFor):
				t.Fatal("a waiter hung after a loader panic")
			}
		}
	})
}

func TestCallerContextIsHonouredAndLoadCompletes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[string](t, store)
		release := make(chan struct{})
		var calls atomic.Int32
		load := func(ctx context.Context) (string, error) {
			calls.Add(1)
			<-release
			return "done", ctx.Err() // the load's ctx is not the cancelled caller's
		}
		ctx, cancel := context.WithTimeout(bgCtx, 30*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := c.Get(ctx, "slow", load); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the caller's deadline", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("caller waited %v after its deadline", d)
		}
		// A second caller joins the still running load and gets its value.
		other := make(chan string, 1)
		go func() { v, _ := c.Get(bgCtx, "slow", load); other <- v }()
		time.Sleep(10 * time.Millisecond)
		close(release)
		select {
		case v := <-other:
			if v != "done" {
				t.Errorf("second caller got %q, want done", v)
			}
		case <-time.After(waitFor):
			t.Fatal("second caller hung")
		}
		if got := mustGet(t, c, "slow", load); got != "done" || calls.Load() != 1 {
			t.Errorf("after the load: %q with %d loads, want a hit of done after 1 load", got, calls.Load())
		}
	})
}

func TestLoadTimeoutBoundsAHangingLoader(t *testing.T) {
	srv := miniredis.RunT(t)
	b := &backend{addr: srv.Addr(), mini: srv}
	store, _ := b.newStore(t, aside.WithProfiles(aside.Profile{Name: "quick", TTL: time.Minute, LoadTimeout: 50 * time.Millisecond}))
	c := newCache[int](t, store, aside.WithProfile("quick"))
	hang := make(chan struct{})
	defer close(hang) // let the abandoned loader goroutine end before goleak looks
	start := time.Now()
	_, err := c.Get(bgCtx, "h", func(context.Context) (int, error) { <-hang; return 1, nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a load timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Get took %v with a 50ms load timeout", d)
	}
	if got := mustGet(t, c, "h", func(context.Context) (int, error) { return 2, nil }); got != 2 {
		t.Errorf("next Get = %d, want a fresh load", got)
	}
}

func TestEntriesExpireWithJitteredTTL(t *testing.T) {
	srv := miniredis.RunT(t)
	b := &backend{addr: srv.Addr(), mini: srv}
	p := aside.Profile{Name: "short", TTL: 10 * time.Second, Jitter: 2 * time.Second, LoadTimeout: time.Second}
	store, rdb := b.newStore(t, aside.WithProfiles(p))
	c := newCache[int](t, store, aside.WithProfile("short"))
	var calls atomic.Int32
	for i := range 20 {
		mustGet(t, c, aside.Key("k", string(rune('a'+i))), countingLoader(1, &calls))
	}
	ttls := map[time.Duration]bool{}
	for _, k := range entryKeys(srv) {
		ttl := rdb.PTTL(bgCtx, k).Val()
		if ttl < p.TTL || ttl >= p.TTL+p.Jitter {
			t.Fatalf("TTL of %s = %v, want in [%v, %v)", k, ttl, p.TTL, p.TTL+p.Jitter)
		}
		ttls[ttl] = true
	}
	if len(ttls) < 2 {
		t.Errorf("20 entries share one TTL: jitter is not applied")
	}
	srv.FastForward(p.TTL + p.Jitter)
	mustGet(t, c, aside.Key("k", "a"), countingLoader(1, &calls))
	if calls.Load() != 21 {
		t.Errorf("loader calls = %d after expiry, want 21", calls.Load())
	}
}

func TestVersionBumpMakesOldEntriesUnreachable(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		v1 := newCache[string](t, store, aside.WithVersion(1))
		v2 := newCache[string](t, store, aside.WithVersion(2))
		mustGet(t, v1, "k", func(context.Context) (string, error) { return "old shape", nil })
		if got := mustGet(t, v2, "k", func(context.Context) (string, error) { return "new shape", nil }); got != "new shape" {
			t.Errorf("v2 Get = %q, want a miss served by its loader", got)
		}
	})
}

func TestSetAndInvalidate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[string](t, store)
		var calls atomic.Int32
		if err := c.Set(bgCtx, "k", "written"); err != nil {
			t.Fatal(err)
		}
		if got := mustGet(t, c, "k", countingLoader("loaded", &calls)); got != "written" || calls.Load() != 0 {
			t.Fatalf("Get after Set = %q with %d loads, want written and no load", got, calls.Load())
		}
		if err := c.Invalidate(bgCtx, "k", "absent"); err != nil {
			t.Fatal(err)
		}
		if got := mustGet(t, c, "k", countingLoader("loaded", &calls)); got != "loaded" || calls.Load() != 1 {
			t.Fatalf("Get after Invalidate = %q with %d loads, want loaded after 1 load", got, calls.Load())
		}
	})
}

func TestKeyPartsNeverCollide(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[string](t, store)
		keys := []string{aside.Key("a:b"), aside.Key("a", "b"), "a:b", "a%3Ab", "{a}", "a*", "a b", aside.Key(strings.Repeat("x", 100)), strings.Repeat("x", 100)}
		for _, k := range keys {
			mustGet(t, c, k, func(context.Context) (string, error) { return k, nil })
		}
		for _, k := range keys {
			got := mustGet(t, c, k, func(context.Context) (string, error) { return "reloaded", nil })
			if got != k {
				t.Errorf("Get(%q) = %q: two keys share an entry", k, got)
			}
		}
	})
}

func TestUndecodableEntriesAreCountedMissesAndOverwritten(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		prefix := uniquePrefix()
		store, rdb := b.newStore(t, aside.WithPrefix(prefix))
		rk := func(key string) string { return prefix + ":items:v1:{" + key + "}" }
		c := newCache[product](t, store)
		store2, _ := b.newStore(t, aside.WithPrefix(prefix)) // another process: one Store holds one type per name
		other := newCacheNamed[string](t, store2, "items")   // same name, another type
		mustGet(t, other, "foreign", func(context.Context) (string, error) { return "a string", nil })
		mustGet(t, c, "good", func(context.Context) (product, error) { return product{ID: 1}, nil })
		goodBytes := entryValue(t, rdb, rk("good"))
		plant := map[string]func(key string){
			"garbage":   func(k string) { rdb.Set(bgCtx, k, "not an envelope", time.Minute) },
			"empty":     func(k string) { rdb.Set(bgCtx, k, "", time.Minute) },
			"truncated": func(k string) { rdb.Set(bgCtx, k, goodBytes[:len(goodBytes)-3], time.Minute) },
			"format":    func(k string) { rdb.Set(bgCtx, k, "\x7f"+goodBytes[1:], time.Minute) },
			"flags":     func(k string) { rdb.Set(bgCtx, k, goodBytes[:1]+"\xff"+goodBytes[2:], time.Minute) },
			"hash":      func(k string) { rdb.HSet(bgCtx, k, "v", "a hash, as v1 stored entries") },
			"foreign":   func(string) {}, // written above by the string cache
		}
		var calls atomic.Int32
		want := 0
		for name, fn := range plant {
			fn(rk(name))
			want++
			got := mustGet(t, c, name, countingLoader(product{ID: 42}, &calls))
			if got.ID != 42 {
				t.Errorf("%s: Get = %+v, want the loader's value", name, got)
			}
			if got := mustGet(t, c, name, countingLoader(product{ID: 43}, &calls)); got.ID != 42 {
				t.Errorf("%s: second Get = %+v, want the overwritten entry", name, got)
			}
		}
		if s := c.Stats(); int(s.DecodeErrors) != want || int(calls.Load()) != want {
			t.Errorf("DecodeErrors = %d, loads = %d, want %d each", s.DecodeErrors, calls.Load(), want)
		}
	})
}

func newCacheNamed[T any](t *testing.T, store *aside.Store, name string) *aside.Cache[T] {
	t.Helper()
	c, err := aside.New[T](store, name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func entryValue(t *testing.T, rdb redis.UniversalClient, rk string) string {
	t.Helper()
	v, err := rdb.Get(bgCtx, rk).Result()
	if err != nil {
		t.Fatal(err)
	}
	return v
}
