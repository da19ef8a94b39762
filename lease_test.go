package aside_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// recv waits for one value, failing the test instead of hanging.
func recv[V any](t *testing.T, ch <-chan V, what string) V {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitFor):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// TestStampedeAcrossProcesses: 4 Stores with their own clients, as 4
// processes would have, × 64 goroutines on one cold key, a 50 ms loader →
// exactly one loader call in total, and everyone has the value in < 2 loads'
// time.
func TestStampedeAcrossProcesses(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		prefix := uniquePrefix()
		const stores, perStore, loadTime = 4, 64, 50 * time.Millisecond
		var caches []*aside.Cache[string]
		for range stores {
			store, rdb := b.newStore(t, aside.WithPrefix(prefix))
			caches = append(caches, newCache[string](t, store))
			warmPool(t, rdb, perStore) // running processes have warm connection pools
		}
		// Every round must make exactly one loader call; the wall time is a
		// latency measured on a shared machine, so the best of 5 rounds
		// counts (a round takes ~75 ms on the Cluster here; what the bound
		// catches — a wait for a second load or a poll interval — adds 50).
		best := time.Hour
		for round := range 5 {
			calls, wall := stampedeRound(t, caches, perStore, fmt.Sprint("cold", round), loadTime)
			if calls != 1 {
				t.Fatalf("round %d: loader calls = %d across %d stores, want 1", round, calls, stores)
			}
			best = min(best, wall)
		}
		if b.mini == nil && best >= 2*loadTime { // miniredis runs every script under one lock: too slow to time
			t.Errorf("best wall time of 5 rounds %v, want < %v", best, 2*loadTime)
		}
		t.Logf("%d stores × %d goroutines: 1 loader call per round, best wall %v", stores, perStore, best)
	})
}

// stampedeRound sends perStore goroutines per cache at one cold key at
// once and returns the loader calls and the time until all had the value.
func stampedeRound(t *testing.T, caches []*aside.Cache[string], perStore int, key string, loadTime time.Duration) (int32, time.Duration) {
	var calls atomic.Int32
	load := func(context.Context) (string, error) {
		calls.Add(1)
		time.Sleep(loadTime)
		return "value", nil
	}
	start := make(chan struct{})
	errs := make(chan error, len(caches)*perStore)
	var wg sync.WaitGroup
	for _, c := range caches {
		for range perStore {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				v, err := c.Get(bgCtx, key, load)
				if err == nil && v != "value" {
					err = errors.New("wrong value " + v)
				}
				errs <- err
			}()
		}
	}
	t0 := time.Now()
	close(start)
	waitGroup(t, &wg)
	wall := time.Since(t0)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return calls.Load(), wall
}

// warmPool opens up to n connections of rdb, as a running service has.
func warmPool(t *testing.T, rdb redis.UniversalClient, n int) {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() { defer wg.Done(); rdb.Ping(bgCtx) }()
	}
	waitGroup(t, &wg)
}

// interleaving sets up a cache whose first load blocks after loading (the
// AfterLoad hook) until proceed is closed, and reports when it got there.
type interleaving struct {
	c       *aside.Cache[int]
	db      atomic.Int32 // the source of truth: the current version
	loaded  chan struct{}
	proceed chan struct{}
	once    sync.Once
}

func newInterleaving(t *testing.T, store *aside.Store, broken aside.TestHooks) *interleaving {
	it := &interleaving{c: newCache[int](t, store), loaded: make(chan struct{}), proceed: make(chan struct{})}
	it.db.Store(1)
	h := broken
	h.AfterLoad = func(string) {
		first := false
		it.once.Do(func() { first = true })
		if first {
			close(it.loaded)
			<-it.proceed
		}
	}
	aside.SetTestHooks(it.c, &h)
	return it
}

func (it *interleaving) load(context.Context) (int, error) { return int(it.db.Load()), nil }

// commit is a write to the source followed by an invalidation: the order
// the README prescribes. The write changes every row the read paths read:
// k, and the pair key of the GetMany path (else a GetMany after the commit
// waits out its budget on the pair's lease, which the held load keeps).
func (it *interleaving) commit(t *testing.T, version int32) {
	t.Helper()
	it.db.Store(version)
	if err := it.c.Invalidate(bgCtx, "k", "k~pair"); err != nil {
		t.Fatal(err)
	}
}

// runT1: A holds the lease and has loaded v1; the source becomes v2 and
// Invalidate returns; A fills. Returns what the next Get sees.
func runT1(t *testing.T, b *backend, p readPath, broken aside.TestHooks) int {
	store, _ := b.newStore(t)
	it := newInterleaving(t, store, broken)
	a := make(chan int, 1)
	go func() { v, _ := p.get(bgCtx, it.c, "k", it.load); a <- v }()
	recv(t, it.loaded, "A's load")
	it.commit(t, 2)
	close(it.proceed)
	recv(t, a, "A")
	settled(t, store) // A's fill has landed, or been refused
	return mustGetVia(t, p, it.c, "k", it.load)
}

// runT2: as T1, but after the invalidation B in the same process leases and
// loads v2 before A fills. Returns the final value.
func runT2(t *testing.T, b *backend, p readPath, broken aside.TestHooks) int {
	store, _ := b.newStore(t)
	it := newInterleaving(t, store, broken)
	a := make(chan int, 1)
	go func() { v, _ := p.get(bgCtx, it.c, "k", it.load); a <- v }()
	recv(t, it.loaded, "A's load")
	it.commit(t, 2)
	if got, err := p.get(bgCtx, it.c, "k", it.load); err != nil || got != 2 { // A's load is held: no mustGetVia
		t.Fatalf("B = %d, %v; want 2", got, err)
	}
	eventually(t, "B's fill", func() bool { v, err := it.c.Peek(bgCtx, "k"); return err == nil && v == 2 })
	close(it.proceed)
	recv(t, a, "A")
	settled(t, store) // A's fill has landed, or been refused
	return mustGetVia(t, p, it.c, "k", it.load)
}

// runT3: A's load (v1) is in flight; Invalidate returns; C in the same
// process calls Get. Returns what C gets.
func runT3(t *testing.T, b *backend, p readPath, broken aside.TestHooks) int {
	store, _ := b.newStore(t)
	c := newCache[int](t, store)
	h := broken
	aside.SetTestHooks(c, &h)
	var db atomic.Int32
	db.Store(1)
	inLoad, release := make(chan struct{}), make(chan struct{})
	var first sync.Once
	load := func(context.Context) (int, error) {
		v := int(db.Load()) // reads the row, then is slow
		isFirst := false
		first.Do(func() { isFirst = true })
		if isFirst {
			close(inLoad)
			<-release
		}
		return v, nil
	}
	a := make(chan int, 1)
	go func() { v, _ := p.get(bgCtx, c, "k", load); a <- v }()
	recv(t, inLoad, "A's load")
	db.Store(2)
	if err := c.Invalidate(bgCtx, "k"); err != nil {
		t.Fatal(err)
	}
	cres := make(chan int, 1)
	go func() { v, _ := p.get(bgCtx, c, "k", load); cres <- v }()
	select {
	case v := <-cres: // C did not wait for A
		close(release)
		recv(t, a, "A")
		return v
	case <-time.After(200 * time.Millisecond): // C is stuck behind A's load
		close(release)
		recv(t, a, "A")
		return recv(t, cres, "C")
	}
}

func TestInterleavingsT1T2T3(t *testing.T) {
	cases := []struct {
		name   string
		run    func(*testing.T, *backend, readPath, aside.TestHooks) int
		broken aside.TestHooks
	}{
		{"T1 revoked fill is refused", runT1, aside.TestHooks{UnconditionalFill: true}},
		{"T2 older fill cannot overwrite newer", runT2, aside.TestHooks{UnconditionalFill: true}},
		{"T3 later Get does not join an older load", runT3, aside.TestHooks{Naive: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, b *backend) {
				forEachPath(t, func(t *testing.T, p readPath) {
					if got := tc.run(t, b, p, aside.TestHooks{}); got != 2 {
						t.Errorf("with leases: got v%d, want v2", got)
					}
					if got := tc.run(t, b, p, tc.broken); got != 1 {
						t.Errorf("broken variant: got v%d, want the stale v1 (the test must be able to fail)", got)
					}
				})
			})
		})
	}
}

// TestT6FailedHolders: a holder whose caller is cancelled, whose loader
// panics, or whose process dies without releasing its lease does not keep
// waiters in other processes from the value for longer than the lease TTL
// plus one poll, and costs at most 2 loads.
func TestT6FailedHolders(t *testing.T) {
	requireLong(t)
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Run("caller cancelled", func(t *testing.T) {
			prefix := uniquePrefix()
			sa, _ := b.newStore(t, aside.WithPrefix(prefix))
			sb, _ := b.newStore(t, aside.WithPrefix(prefix))
			ca, cb := newCache[string](t, sa), newCache[string](t, sb)
			var loads atomic.Int32
			load := func(context.Context) (string, error) {
				loads.Add(1)
				time.Sleep(30 * time.Millisecond)
				return "v", nil
			}
			ctx, cancel := context.WithCancel(bgCtx)
			a := make(chan error, 1)
			go func() { _, err := ca.Get(ctx, "k", load); a <- err }()
			time.Sleep(5 * time.Millisecond) // A holds the lease
			cancel()
			if err := recv(t, a, "A"); !errors.Is(err, context.Canceled) {
				t.Fatalf("A = %v, want its own cancellation", err)
			}
			if got := mustGet(t, cb, "k", load); got != "v" || loads.Load() != 1 {
				t.Errorf("B = %q after %d loads, want v after 1 (A's detached load)", got, loads.Load())
			}
		})
		t.Run("loader panics", func(t *testing.T) {
			forEachPath(t, func(t *testing.T, p readPath) {
				for _, broken := range []bool{false, true} {
					waited, loads, timeouts := panickingHolder(t, b, p, broken)
					t.Logf("broken=%v: B waited %v, %d loads, %d wait timeouts", broken, waited, loads, timeouts)
					switch {
					case !broken && (loads != 2 || timeouts != 0 || waited > 250*time.Millisecond):
						t.Errorf("B waited %v with %d loads, %d timeouts; want the released lease taken over at once", waited, loads, timeouts)
					case broken && timeouts != uint64(p.keys):
						t.Errorf("broken variant (lease kept after the panic): %d wait timeouts, want %d — the test must be able to fail", timeouts, p.keys)
					}
				}
			})
		})
		t.Run("holder dies without releasing", func(t *testing.T) {
			prefix := uniquePrefix()
			p := aside.Profile{Name: "quick", TTL: time.Minute, LoadTimeout: 100 * time.Millisecond}
			sa, _ := b.newStore(t, aside.WithPrefix(prefix), aside.WithProfiles(p), aside.WithOpTimeout(100*time.Millisecond))
			sb, _ := b.newStore(t, aside.WithPrefix(prefix), aside.WithProfiles(p), aside.WithOpTimeout(100*time.Millisecond))
			ca, _ := aside.New[string](sa, "items", aside.WithProfile("quick"))
			cb, _ := aside.New[string](sb, "items", aside.WithProfile("quick"))
			// A takes the lease and its process "dies": the load never
			// returns and nothing releases the lease (the hook blocks before
			// the fill or release, and A's caller gives up).
			hang, held := make(chan struct{}), make(chan struct{})
			defer close(hang)
			var once sync.Once
			aside.SetTestHooks(ca, &aside.TestHooks{AfterLoad: func(string) { once.Do(func() { close(held) }); <-hang }})
			ctx, cancel := context.WithCancel(bgCtx)
			aDone := make(chan struct{})
			go func() {
				defer close(aDone)
				_, _ = ca.Get(ctx, "k", func(context.Context) (string, error) { return "never written", nil })
			}()
			recv(t, held, "A's load") // (a deadline instead could end A before its lease on a cold Cluster client)
			cancel()
			recv(t, aDone, "A's caller giving up")
			var loads atomic.Int32
			start := time.Now()
			got := mustGet(t, cb, "k", countingLoader("v", &loads))
			waited := time.Since(start)
			// B waits its budget (LoadTimeout, 100 ms), then loads alone
			// and writes nothing: the lease is still A's.
			if got != "v" || loads.Load() != 1 || waited > 300*time.Millisecond || cb.Stats().WaitTimeouts != 1 {
				t.Errorf("B = %q after %d loads in %v, %+v; want v after 1 load within the wait budget", got, loads.Load(), waited, cb.Stats())
			}
			// The dead lease expires after LoadTimeout + op timeout + 500 ms
			// slack = 700 ms; then the next miss fills again.
			time.Sleep(700*time.Millisecond - waited)
			if b.mini != nil {
				b.mini.FastForward(time.Second)
			}
			mustGet(t, cb, "k", countingLoader("v", &loads))
			mustGet(t, cb, "k", countingLoader("v", &loads))
			if loads.Load() != 2 {
				t.Errorf("loads = %d after the lease expired, want 2 (one fill, then a hit)", loads.Load())
			}
		})
	})
}

// panickingHolder: A's loader panics while B (another process) waits on A's
// lease. With broken set, A keeps its lease after the failure.
func panickingHolder(t *testing.T, b *backend, p readPath, broken bool) (waited time.Duration, loads int32, timeouts uint64) {
	prefix := uniquePrefix()
	prof := aside.Profile{Name: "p", TTL: time.Minute, LoadTimeout: 300 * time.Millisecond}
	sa, _ := b.newStore(t, aside.WithPrefix(prefix), aside.WithProfiles(prof))
	sb, _ := b.newStore(t, aside.WithPrefix(prefix), aside.WithProfiles(prof))
	ca, _ := aside.New[int](sa, "items", aside.WithProfile("p"))
	cb, _ := aside.New[int](sb, "items", aside.WithProfile("p"))
	aside.SetTestHooks(ca, &aside.TestHooks{KeepLeaseOnError: broken})
	var n atomic.Int32
	inA := make(chan struct{})
	panicking := func(context.Context) (int, error) {
		n.Add(1)
		close(inA)
		time.Sleep(20 * time.Millisecond)
		panic("holder crashed")
	}
	a := make(chan error, 1)
	go func() { _, err := p.get(bgCtx, ca, "k", panicking); a <- err }()
	recv(t, inA, "A's load")
	start := time.Now()
	bres := make(chan int, 1)
	go func() {
		v, _ := p.get(bgCtx, cb, "k", func(context.Context) (int, error) { n.Add(1); return 1, nil })
		bres <- v
	}()
	if err := recv(t, a, "A"); !errors.Is(err, aside.ErrLoaderPanic) {
		t.Fatalf("A = %v, want ErrLoaderPanic", err)
	}
	if v := recv(t, bres, "B"); v != 1 {
		t.Fatalf("B = %d, want 1", v)
	}
	return time.Since(start), n.Load(), cb.Stats().WaitTimeouts
}

// mustGetVia reads key through p and fails the test on an error.
// mustGetVia is mustGet through the read path p.
func mustGetVia(t *testing.T, p readPath, c *aside.Cache[int], key string, load aside.Loader[int]) int {
	t.Helper()
	v, err := p.get(bgCtx, c, key, load)
	if err != nil {
		t.Fatal(err)
	}
	settled(t, aside.StoreOf(c))
	return v
}
