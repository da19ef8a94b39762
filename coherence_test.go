package aside_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidetest"
)

// Strict L1 coherence (T18): once an invalidation has returned nil, no read
// that starts afterwards, in any Store, returns an older value — with L1 on
// in every Store. Broken variants: an invalidation that does not wait for
// other Stores' acknowledgements, and an L1 hit that does not check its
// Store's lease.

// l1Race runs writers that bump rows of a fake database and invalidate them
// (by key, by tag, or with Set, from any Store) against readers on Stores
// that all have L1; a third Store joins halfway. Every heard invalidation is
// applied only after a 1 ms delay (hook), so that delivery is never quicker
// than the writers: without the wait the race is lost every time, not by
// luck. It returns stale reads, reads and L1 hits.
func l1Race(t *testing.T, client func(testing.TB) redis.UniversalClient, p readPath, d time.Duration, broken bool) (stale, reads, l1Hits int64) {
	const keys = 6
	prefix := uniquePrefix()
	var (
		mu     sync.Mutex
		caches []*aside.Cache[int]
		stores []*aside.Store
	)
	join := func() {
		store, err := aside.NewStore(client(t), aside.WithPrefix(prefix), aside.WithOpTimeout(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = store.Close() })
		aside.SetStoreHooks(store, &aside.TestHooks{NoAckWait: broken, BeforeApply: func() { time.Sleep(time.Millisecond) }})
		c, err := aside.New[int](store, "items", aside.WithL1(100, time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "the subscription", func() bool { up, _, _ := aside.BusState(store); return up })
		mu.Lock()
		stores, caches = append(stores, store), append(caches, c)
		mu.Unlock()
	}
	pick := func() (*aside.Store, *aside.Cache[int]) {
		mu.Lock()
		defer mu.Unlock()
		i := rand.N(len(caches))
		return stores[i], caches[i]
	}
	join()
	join()
	var db, floor [keys]atomic.Int64
	var rows [keys]sync.Mutex
	name := func(k int) string { return string(rune('a' + k)) }
	tag := func(k int) aside.CallOption { return aside.Tags("row:" + name(k)) }
	load := func(k int) aside.Loader[int] {
		return func(context.Context) (int, error) {
			v := db[k].Load()
			time.Sleep(time.Duration(rand.N(1000)) * time.Microsecond)
			return int(v), nil
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var staleN, readN atomic.Int64
	for range 2 { // writers
		loopUntil(stop, &wg, func(i int) bool {
			k := rand.N(keys)
			rows[k].Lock() // a row lock held from the write to its invalidation: Sets of one key land in order
			v := db[k].Add(1)
			store, c := pick()
			var err error
			switch i % 3 {
			case 0:
				err = c.Invalidate(bgCtx, name(k))
			case 1:
				err = store.InvalidateTags(bgCtx, "row:"+name(k))
			case 2:
				err = c.Set(bgCtx, name(k), int(v), tag(k))
			}
			rows[k].Unlock()
			if err != nil {
				t.Error(err)
				return false
			}
			raise(&floor[k], v)
			time.Sleep(time.Duration(rand.N(3000)) * time.Microsecond)
			return true
		})
	}
	for range 6 { // readers, each on a random Store at every read
		loopUntil(stop, &wg, func(int) bool {
			k := rand.N(keys)
			min := floor[k].Load()
			_, c := pick()
			v, err := p.get(bgCtx, c, name(k), load(k), tag(k))
			if err != nil {
				t.Error(err)
				return false
			}
			readN.Add(1)
			if int64(v) < min {
				staleN.Add(1)
			}
			return true
		})
	}
	time.Sleep(d / 2)
	join() // a Store that joins mid-run
	time.Sleep(d / 2)
	close(stop)
	waitGroup(t, &wg)
	for _, c := range caches {
		l1Hits += int64(c.Stats().L1Hits)
	}
	return staleN.Load(), readN.Load(), l1Hits
}

func TestT18StrictL1NoStaleReadInAnyStore(t *testing.T) {
	requireLong(t)
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) { checkL1Race(t, b.client, p) })
	})
	t.Run("sentinel", func(t *testing.T) { checkL1Race(t, startSentinelGroup(t).client, readPaths[0]) })
	t.Run("ring", func(t *testing.T) { checkL1Race(t, startRing(t), readPaths[0]) })
}

func checkL1Race(t *testing.T, client func(testing.TB) redis.UniversalClient, p readPath) {
	expectBroken(t, "no stale read with L1 in every Store", func(broken bool) bool {
		stale, reads, hits := l1Race(t, client, p, 1500*time.Millisecond, broken)
		t.Logf("broken=%v: %d stale of %d reads, %d from L1", broken, stale, reads, hits)
		if !broken && (reads < 200 || hits == 0) {
			t.Errorf("%d reads, %d L1 hits: the race did not exercise L1", reads, hits)
		}
		return stale == 0
	})
}

// TestT18SilentStoreBoundsTheWait: Store P holds a value in L1; then every
// byte between P and Redis is swallowed (a paused process, a black-holed
// connection). Store Q invalidates: the invalidation waits for P's lease to
// end, not longer, and counts P as silent; a read on P started after it
// returned does not return the old value; once the network heals P serves
// from L1 again, the new value. Broken variant: P's L1 hit skips the lease
// check.
func TestT18SilentStoreBoundsTheWait(t *testing.T) {
	requireLong(t)
	forEachBackend(t, func(t *testing.T, b *backend) {
		if b.cluster != nil {
			t.Skip("a proxy in front of a Cluster would be bypassed by its redirections")
		}
		expectBroken(t, "a silent Store serves nothing older than a returned invalidation", func(broken bool) bool {
			return runSilentStore(t, b, broken)
		})
	})
}

func runSilentStore(t *testing.T, b *backend, broken bool) bool {
	prefix := uniquePrefix()
	px := asidetest.NewProxy(t, b.addr)
	var user, password string
	if b.addr == realAddr {
		user, password = realUser, realPassword
	}
	rdbP := redis.NewClient(&redis.Options{Addr: px.Addr(), DisableIdentity: true, ContextTimeoutEnabled: true,
		MaxRetries: -1, Username: user, Password: password})
	t.Cleanup(func() { _ = rdbP.Close() })
	// An op timeout of 1 s: P doubts its stream only after 2.25 s, as a
	// paused process would (its goroutines are paused too), so that within
	// the lease only the lease check keeps P from serving the old value.
	storeP, err := aside.NewStore(rdbP, aside.WithPrefix(prefix), aside.WithOpTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = storeP.Close() })
	aside.SetStoreHooks(storeP, &aside.TestHooks{NoLeaseCheck: broken})
	p, err := aside.New[int](storeP, "items", aside.WithL1(100, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	storeQ, _ := b.newStore(t, aside.WithPrefix(prefix))
	q := newCache[int](t, storeQ)
	eventually(t, "P's subscription", func() bool { up, _, _ := aside.BusState(storeP); return up })
	var db atomic.Int64
	db.Store(1)
	load := func(context.Context) (int, error) { return int(db.Load()), nil }
	mustGet(t, p, "k", load)
	if v := mustGet(t, p, "k", load); v != 1 || p.Stats().L1Hits != 1 {
		t.Fatalf("P read %d with %d L1 hits; want 1 from L1", v, p.Stats().L1Hits)
	}
	px.SetBlackhole(true)
	db.Store(2)
	t0 := time.Now()
	if err := q.Invalidate(bgCtx, "k"); err != nil {
		t.Fatal(err)
	}
	waited := time.Since(t0)
	v, _ := p.Get(bgCtx, "k", load)
	px.SetBlackhole(false)
	co := storeQ.Coherence()
	t.Logf("broken=%v: the invalidation waited %v for the silent Store (%d silent, %v in all); P then read %d",
		broken, waited, co.SilentStores, co.WaitTime, v)
	if waited > 1300*time.Millisecond { // the lease (1 s) and its margin, and scheduling
		t.Errorf("the invalidation waited %v for a silent Store; its lease bounds the wait to about 1.05 s", waited)
	}
	if co.SilentStores == 0 || co.InvalidationWaits == 0 {
		t.Errorf("coherence stats %+v: the silent Store was not counted", co)
	}
	eventuallyWithin(t, 10*time.Second, "P to serve from L1 again", func() bool {
		hits := p.Stats().L1Hits
		got, err := p.Get(bgCtx, "k", load)
		if err != nil || got != 2 {
			if got == 1 && !broken {
				t.Errorf("after healing P read the old value")
			}
			return false
		}
		got, _ = p.Get(bgCtx, "k", load)
		return got == 2 && p.Stats().L1Hits > hits
	})
	return v == 2
}
