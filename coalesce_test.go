package aside_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// Coalesced reads (coalesce.go): concurrent reads share one round trip,
// each caller gets its own keys' answers, no caller takes the answer to a
// read sent before it arrived, and one caller's cancellation fails no
// other's read.

// holdBatches makes a batch's own goroutine claim no batch before release
// is closed: readers gather in the pending one (up to the most a batch
// waits for: the reader that fills it sends it).
// Reads start with their read step (ReadFirst): these tests' misses must
// not move them onto the lease script.
func holdBatches(s *aside.Store, h *aside.TestHooks, release <-chan struct{}) {
	h.ReadFirst = true
	h.BeforeBatchClaim = func() {
		select {
		case <-release:
		case <-time.After(waitFor): // a bug fails the test, never hangs it
		}
	}
	aside.SetStoreHooks(s, h)
}

// TestConcurrentReadsShareARoundTrip: an untagged Get, a tagged Get and a
// GetMany that arrive while a read is on the wire go out as one batch, and
// each caller gets its own keys' values; four readers fill a batch, and the
// fourth sends it at once. A goroutine alone never batches.
func TestConcurrentReadsShareARoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, rdb := b.newStore(t)
		_, cluster := rdb.(*redis.ClusterClient)
		release := make(chan struct{})
		var mu sync.Mutex
		var batches [][]string
		h := &aside.TestHooks{AfterBatchRead: func(k []string) {
			mu.Lock()
			batches = append(batches, k)
			mu.Unlock()
		}}
		holdBatches(store, h, release)
		c := newCache[string](t, store)
		valueOf := func(key string) aside.Loader[string] {
			return func(context.Context) (string, error) { return "v-" + key, nil }
		}
		get := func(key string, errs chan<- error, opts ...aside.CallOption) {
			v, err := c.Get(bgCtx, key, valueOf(key), opts...)
			if err == nil && v != "v-"+key {
				err = fmt.Errorf("Get(%s) = %q", key, v)
			}
			errs <- err
		}
		collect := func(errs <-chan error, n int) {
			t.Helper()
			for range n {
				if err := recv(t, errs, "a reader"); err != nil {
					t.Error(err)
				}
			}
		}
		sent := func() int { mu.Lock(); defer mu.Unlock(); return len(batches) }

		// Alone: ten Gets, one after the other, no batch.
		for i := range 10 {
			key := "k" + strconv.Itoa(i)
			var opts []aside.CallOption
			if i == 4 {
				opts = append(opts, aside.Tags("t1", "t2")) // a tagged read: entry and tags in one MGET
			}
			if v, err := c.Get(bgCtx, key, valueOf(key), opts...); err != nil || v != "v-"+key {
				t.Fatalf("%s = %q, %v", key, v, err)
			}
			settled(t, store)
		}
		if n := sent(); n != 0 {
			t.Fatalf("%d batches sent by one goroutine reading alone", n)
		}

		// Three readers gather; the batch's goroutine sends them as one —
		// two of them of one key with the same tags, read once for both.
		h.BatchEveryRead = true
		errs := make(chan error, 8)
		go get("k4", errs, aside.Tags("t1", "t2"))
		go get("k4", errs, aside.Tags("t1", "t2"))
		go func() {
			m, err := c.GetMany(bgCtx, []string{"k5", "k6"}, func(_ context.Context, ks []string) (map[string]string, error) {
				return nil, errors.New("GetMany loaded: its keys were cached")
			})
			if err == nil && (m["k5"] != "v-k5" || m["k6"] != "v-k6") {
				err = fmt.Errorf("GetMany = %v", m)
			}
			errs <- err
		}()
		// k4 and its 2 tags, twice; k5 and k6.
		eventually(t, "8 keys pending", func() bool { return aside.PendingReads(store) == 8 })
		close(release)
		collect(errs, 3)
		keysIn := func(bs [][]string) (n int) {
			for _, b := range bs {
				n += len(b)
			}
			return n
		}
		// On a Cluster, reads coalesce per master (T27): the three reads
		// make at most three batches, and share them where they can.
		if n := sent(); !cluster && (n != 1 || len(batches[0]) != 5) || cluster && (n > 3 || keysIn(batches) != 5) {
			t.Fatalf("batches %v, want one of 5 keys (on a Cluster, at most 3 of 5 keys in all)", batches)
		}

		// Four readers fill a batch: the fourth sends it, whatever its goroutine does.
		four := []string{"k1", "k2", "k3", "k7"}
		if cluster { // one master's keys: one batch
			four = sameNodeKeysN(t, rdb, c, 4)
			for _, k := range four {
				mustGet(t, c, k, valueOf(k))
			}
			settled(t, store)
		}
		first := sent()
		release = make(chan struct{})
		holdBatches(store, h, release)
		for _, k := range four[:3] {
			go get(k, errs)
		}
		eventually(t, "3 keys pending", func() bool { return aside.PendingReads(store) == 3 })
		go get(four[3], errs)
		collect(errs, 4)
		close(release)
		if n := sent(); n != first+1 || len(batches[first]) != 4 {
			t.Fatalf("batches %v, want another one of 4 keys", batches)
		}
		if s := c.Stats(); s.Hits != 8 && !cluster || s.RedisErrors != 0 {
			t.Errorf("stats %+v: want 8 hits, no Redis error", s)
		}
	})
}

// TestT21NoReadSharedFromBeforeTheCaller: a caller's read is issued after
// it arrived. A read of k is on the wire and has its answer (version 1);
// k is invalidated; a Get that starts now must not take that answer.
// Broken variant: a read joins a batch already sent that reads its key.
func TestT21NoReadSharedFromBeforeTheCaller(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) {
			expectBroken(t, "a Get after an invalidation gets no answer read before it", func(broken bool) bool {
				store, _ := b.newStore(t)
				var hold atomic.Bool
				held, release := make(chan struct{}), make(chan struct{})
				aside.SetStoreHooks(store, &aside.TestHooks{BatchEveryRead: true, ReadFirst: true, JoinSentBatch: broken,
					AfterBatchRead: func([]string) {
						if hold.CompareAndSwap(true, false) {
							close(held)
							select {
							case <-release:
							case <-time.After(waitFor):
							}
						}
					}})
				c := newCache[int](t, store)
				var db atomic.Int64
				db.Store(1)
				load := func(context.Context) (int, error) { return int(db.Load()), nil }
				mustGetVia(t, p, c, "k", load)

				hold.Store(true)
				first := make(chan error, 1)
				go func() { _, err := p.get(bgCtx, c, "k", load); first <- err }()
				recv(t, held, "the first read to come back from Redis")
				db.Store(2)
				if err := c.Invalidate(bgCtx, "k"); err != nil {
					t.Fatal(err)
				}
				type result struct {
					v   int
					err error
				}
				after := make(chan result, 1)
				go func() { v, err := p.get(bgCtx, c, "k", load); after <- result{v, err} }()
				var r result
				select {
				case r = <-after:
					close(release)
				case <-time.After(time.Second): // waits on the held read: only the broken variant
					close(release)
					r = <-after
				}
				if err := <-first; err != nil {
					t.Fatal(err)
				}
				settled(t, store)
				if r.err != nil {
					t.Fatal(r.err)
				}
				t.Logf("broken=%v: the Get after the invalidation read %d", broken, r.v)
				return r.v == 2
			})
		})
	})
}

// TestABatchOutlivesACancelledReader: two readers wait in one batch; the
// first one's caller gives up. It returns its context's error at once; the
// other still reads its key from Redis (no load, no Redis error). Broken
// variant: the batch is sent on its first reader's context.
func TestABatchOutlivesACancelledReader(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		expectBroken(t, "a reader's cancellation fails no other reader", func(broken bool) bool {
			store, rdb := b.newStore(t)
			release := make(chan struct{})
			h := &aside.TestHooks{BatchOnCaller: broken}
			holdBatches(store, h, release)
			c := newCache[int](t, store)
			var loads atomic.Int64
			load := func(context.Context) (int, error) { loads.Add(1); return 7, nil }
			ka, kb := sameNodeKeys(t, rdb, c)
			mustGet(t, c, ka, load)
			mustGet(t, c, kb, load)
			loads.Store(0)
			h.BatchEveryRead = true

			ctx, cancel := context.WithCancel(bgCtx)
			defer cancel()
			gaveUp := make(chan error, 1)
			go func() { _, err := c.Get(ctx, ka, load); gaveUp <- err }()
			eventually(t, "the first reader pending", func() bool { return aside.PendingReads(store) == 1 })
			other := make(chan error, 1)
			go func() {
				v, err := c.Get(bgCtx, kb, load)
				if err == nil && v != 7 {
					err = fmt.Errorf("%s = %d", kb, v)
				}
				other <- err
			}()
			eventually(t, "both readers pending", func() bool { return aside.PendingReads(store) == 2 })
			cancel()
			// The batch is still held: a reader that gave up returns without it.
			if err := recv(t, gaveUp, "the reader that gave up"); !errors.Is(err, context.Canceled) {
				t.Fatalf("the reader that gave up: %v", err)
			}
			close(release)
			if err := recv(t, other, "the other reader"); err != nil {
				t.Fatal(err)
			}
			settled(t, store)
			s := c.Stats()
			t.Logf("broken=%v: %d loads, %d Redis errors, breaker %v", broken, loads.Load(), s.RedisErrors, store.BreakerState())
			return loads.Load() == 0 && s.RedisErrors == 0 && store.BreakerState() == aside.BreakerClosed
		})
	})
}

// sameNodeKeys returns two keys of c whose entries one server holds: on a
// Cluster, reads of different masters' keys go in different batches.
func sameNodeKeys(t *testing.T, rdb redis.UniversalClient, c *aside.Cache[int]) (string, string) {
	t.Helper()
	if _, ok := rdb.(*redis.ClusterClient); !ok {
		return "a", "b"
	}
	ks := sameNodeKeysN(t, rdb, c, 2)
	return ks[0], ks[1]
}

// sameNodeKeysN returns n keys of c on one master of the Cluster rdb.
func sameNodeKeysN[T any](t *testing.T, rdb redis.UniversalClient, c *aside.Cache[T], n int) []string {
	t.Helper()
	cc := rdb.(*redis.ClusterClient)
	on := map[string][]string{} // master → keys found on it
	for i := range 1000 {
		k := "same" + strconv.Itoa(i)
		m, err := cc.MasterForKey(bgCtx, aside.EntryKey(c, k))
		if err != nil {
			t.Fatal(err)
		}
		addr := m.Options().Addr
		if on[addr] = append(on[addr], k); len(on[addr]) == n {
			return on[addr]
		}
	}
	t.Fatalf("no %d keys on one master", n)
	return nil
}

// TestManyReadersOneBatchEach: 32 goroutines read 64 keys through Get
// (untagged and tagged) and GetMany while reads coalesce freely; every
// answer is its own key's.
func TestManyReadersOneBatchEach(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[string](t, store)
		load := func(key string) aside.Loader[string] {
			return func(context.Context) (string, error) { return "v-" + key, nil }
		}
		many := func(_ context.Context, ks []string) (map[string]string, error) {
			m := map[string]string{}
			for _, k := range ks {
				m[k] = "v-" + k
			}
			return m, nil
		}
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for g := range 32 {
			wg.Go(func() {
				for i := range 50 {
					key := "k" + strconv.Itoa((g*7+i)%64)
					var got map[string]string
					var err error
					switch i % 3 {
					case 0:
						var v string
						v, err = c.Get(bgCtx, key, load(key))
						got = map[string]string{key: v}
					case 1:
						var v string
						v, err = c.Get(bgCtx, key, load(key), aside.Tags("t"+strconv.Itoa(g%4)))
						got = map[string]string{key: v}
					default:
						other := "k" + strconv.Itoa((g+i)%64)
						got, err = c.GetMany(bgCtx, []string{key, other}, many)
					}
					for k, v := range got {
						if err == nil && v != "v-"+k {
							err = fmt.Errorf("%s read %q", k, v)
						}
					}
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Fatal("readers still running after 60 s")
		}
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		settled(t, store)
	})
}
