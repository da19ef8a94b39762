package aside_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asidecache/aside"
)

// l1Stores returns n Stores sharing one prefix (as n processes would), each
// with an L1 cache "items" whose subscription is up.
func l1Stores(t *testing.T, b *backend, n int) ([]*aside.Store, []*aside.Cache[int]) {
	t.Helper()
	prefix := uniquePrefix()
	var stores []*aside.Store
	var caches []*aside.Cache[int]
	for range n {
		s, _ := b.newStore(t, aside.WithPrefix(prefix))
		c, err := aside.New[int](s, "items", aside.WithL1(1000, time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "the subscription", func() bool { up, _, _ := aside.BusState(s); return up })
		stores, caches = append(stores, s), append(caches, c)
	}
	return stores, caches
}

func TestL1HitsSkipRedis(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		_, caches := l1Stores(t, b, 1)
		c := caches[0]
		var loads atomic.Int32
		for range 5 {
			if v := mustGet(t, c, "k", countingLoader(7, &loads)); v != 7 {
				t.Fatalf("Get = %d", v)
			}
		}
		if s := c.Stats(); s.L1Hits != 4 || loads.Load() != 1 {
			t.Errorf("stats %+v with %d loads; want 4 L1 hits after 1 load", s, loads.Load())
		}
		if err := c.Invalidate(bgCtx, "k"); err != nil {
			t.Fatal(err)
		}
		if v := mustGet(t, c, "k", countingLoader(8, &loads)); v != 8 {
			t.Errorf("after Invalidate: %d, want 8 (read-your-writes in the invalidating Store)", v)
		}
	})
}

// TestL1Coherence: 3 Stores with L1; one invalidates keys and tags while the
// others keep reading. Once a Store has seen the new value it never returns
// the old one again, and the bus delivers within a bounded time (reported).
func TestL1Coherence(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		stores, caches := l1Stores(t, b, 3)
		var db atomic.Int32
		load := func(context.Context) (int, error) { return int(db.Load()), nil }
		tag := aside.Tags("all")
		read := func(c *aside.Cache[int], key string) int {
			v, err := c.Get(bgCtx, key, load, tag)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		var delays []time.Duration
		for round := range 100 {
			key := []string{"a", "b"}[round%2]
			for _, c := range caches {
				read(c, key) // into every L1
			}
			v := db.Add(1)
			var err error
			if round%3 == 0 {
				err = stores[0].InvalidateTags(bgCtx, "all")
			} else {
				err = caches[0].Invalidate(bgCtx, key)
			}
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			if got := read(caches[0], key); got != int(v) {
				t.Fatalf("the invalidating Store read %d, want %d", got, v)
			}
			for _, c := range caches[1:] {
				for read(c, key) != int(v) {
					if time.Since(t0) > waitFor {
						t.Fatal("the bus never delivered")
					}
				}
				delays = append(delays, time.Since(t0))
				for range 20 {
					if got := read(c, key); got != int(v) {
						t.Fatalf("after delivery a Store read %d again, want %d", got, v)
					}
				}
			}
		}
		slices.Sort(delays)
		t.Logf("bus delivery (invalidate returned → other Store sees the new value): p50 %v, p99 %v, max %v",
			delays[len(delays)/2], delays[len(delays)*99/100], delays[len(delays)-1])
		if s := caches[1].Stats(); s.L1Hits == 0 {
			t.Error("no L1 hit at all: the test did not exercise L1")
		}
	})
}

// TestL1FlushedWhenSubscriptionDrops kills the pub/sub connections of a real
// Redis: the Stores' L1 must stop serving what it held (messages may have been
// lost), and resume after the subscription is back.
func TestL1FlushedWhenSubscriptionDrops(t *testing.T) {
	requireReal(t)
	b := &backend{addr: realAddr}
	stores, caches := l1Stores(t, b, 1)
	s, c := stores[0], caches[0]
	var loads atomic.Int32
	mustGet(t, c, "k", countingLoader(1, &loads))
	mustGet(t, c, "k", countingLoader(1, &loads))
	if c.Stats().L1Hits != 1 {
		t.Fatalf("no L1 hit before the kill: %+v", c.Stats())
	}
	_, epoch, _ := aside.BusState(s)
	if err := adminClient(t).Do(bgCtx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the subscription to drop", func() bool { _, e, _ := aside.BusState(s); return e != epoch })
	hits := c.Stats().Hits
	mustGet(t, c, "k", countingLoader(1, &loads))
	if s := c.Stats(); s.Hits != hits+1 {
		t.Errorf("after the pub/sub connection died the read was not served by Redis: %+v", s)
	}
	eventually(t, "the subscription to recover", func() bool { up, _, _ := aside.BusState(s); return up })
	l1 := c.Stats().L1Hits
	mustGet(t, c, "k", countingLoader(1, &loads))
	mustGet(t, c, "k", countingLoader(1, &loads))
	if c.Stats().L1Hits == l1 {
		t.Error("L1 did not resume after the subscription recovered")
	}
}

// runT8: B reads the old value from Redis; before B fills its L1, A
// invalidates the key and the bus delivers the message to B; then B fills.
// Returns what B's next Get returns.
func runT8(t *testing.T, b *backend, p readPath, broken bool) int {
	stores, caches := l1Stores(t, b, 2)
	a, bc := caches[0], caches[1]
	var db atomic.Int32
	db.Store(1)
	load := func(context.Context) (int, error) { return int(db.Load()), nil }
	mustGet(t, a, "k", load) // v1 in Redis
	read, proceed := make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	aside.SetTestHooks(bc, &aside.TestHooks{BeforeL1Fill: func(key string) {
		if key == "k" && once.CompareAndSwap(false, true) { // not GetMany's companion key, which B loads
			close(read)
			<-proceed
		}
	}, UncheckedL1: broken})
	done := make(chan int, 1)
	go func() { v, _ := p.get(bgCtx, bc, "k", load); done <- v }()
	recv(t, read, "B's Redis read")
	_, _, before := aside.BusState(stores[1])
	db.Store(2)
	if err := a.Invalidate(bgCtx, "k"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delivery to B", func() bool { _, _, n := aside.BusState(stores[1]); return n > before })
	close(proceed)
	recv(t, done, "B")
	return mustGetVia(t, p, bc, "k", load)
}

func TestInterleavingT8(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) {
			if got := runT8(t, b, p, false); got != 2 {
				t.Errorf("B's L1 served v%d after the invalidation, want v2", got)
			}
			if got := runT8(t, b, p, true); got != 1 {
				t.Errorf("broken variant (fill without the generation check): v%d, want the stale v1 — the test must be able to fail", got)
			}
		})
	})
}

func TestL1BadOptions(t *testing.T) {
	b := &backend{addr: realAddrOrMini(t)}
	store, _ := b.newStore(t)
	for _, opt := range []aside.Option{aside.WithL1(0, time.Second), aside.WithL1(10, 0), aside.WithL1(10, time.Hour)} {
		if _, err := aside.New[int](store, "x", opt); err == nil {
			t.Error("bad L1 options accepted")
		}
	}
}
