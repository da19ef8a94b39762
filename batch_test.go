package aside_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// recordingBatch is a batch loader over a fake table that records each
// call's keys. Keys starting with "missing" do not exist.
type recordingBatch struct {
	mu    sync.Mutex
	calls [][]string
	block chan struct{} // when set, each call waits on it
	err   error
}

func (r *recordingBatch) load(_ context.Context, keys []string) (map[string]string, error) {
	r.mu.Lock()
	r.calls = append(r.calls, slices.Sorted(slices.Values(keys)))
	block := r.block
	r.mu.Unlock()
	if block != nil {
		<-block
	}
	if r.err != nil {
		return nil, r.err
	}
	out := map[string]string{}
	for _, k := range keys {
		if len(k) < 7 || k[:7] != "missing" {
			out[k] = "value-" + k
		}
	}
	return out, nil
}

func (r *recordingBatch) callKeys() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func keyRange(prefix string, from, to int) []string {
	var ks []string
	for i := from; i < to; i++ {
		ks = append(ks, fmt.Sprintf("%s%03d", prefix, i))
	}
	return ks
}

func TestGetManyLoadsExactlyTheMisses(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[string](t, store)
		r := &recordingBatch{}
		keys := keyRange("k", 0, 100)
		if _, err := c.GetMany(bgCtx, keys[:70], r.load); err != nil {
			t.Fatal(err)
		}
		got, err := c.GetMany(bgCtx, keys, r.load)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 100 || got["k042"] != "value-k042" || got["k099"] != "value-k099" {
			t.Fatalf("GetMany returned %d values, k042=%q", len(got), got["k042"])
		}
		calls := r.callKeys()
		if len(calls) != 2 || !slices.Equal(calls[1], keys[70:]) {
			t.Fatalf("loader calls = %d, second with %d keys; want 2, the second with exactly the 30 misses", len(calls), len(calls[len(calls)-1]))
		}
		if _, err := c.GetMany(bgCtx, keys, r.load); err != nil || len(r.callKeys()) != 2 {
			t.Errorf("all hits called the loader again: %d calls, %v", len(r.callKeys()), err)
		}
	})
}

func TestGetManyNotFoundAndErrors(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[string](t, store)
		r := &recordingBatch{}
		keys := []string{"a", "missing-1", "b", "missing-2"}
		got, err := c.GetMany(bgCtx, keys, r.load)
		if err != nil || len(got) != 2 {
			t.Fatalf("GetMany = %v, %v; want a and b, no error", got, err)
		}
		if _, err := c.GetMany(bgCtx, keys, r.load); err != nil || len(r.callKeys()) != 1 {
			t.Errorf("absent keys were loaded again (%d calls): negative caching per key", len(r.callKeys()))
		}
		if _, err := c.Get(bgCtx, "missing-1", func(context.Context) (string, error) { return "x", nil }); !errors.Is(err, aside.ErrNotFound) {
			t.Errorf("Get of a key GetMany found absent = %v, want ErrNotFound", err)
		}
		failing := &recordingBatch{err: errors.New("db down")}
		got, err = c.GetMany(bgCtx, []string{"a", "c", "d"}, failing.load)
		var be *aside.BatchError
		if !errors.As(err, &be) || len(be.Errs) != 2 || !errors.Is(err, failing.err) || got["a"] != "value-a" {
			t.Errorf("GetMany with a failing loader = %v, %v; want a's cached value and a BatchError for c and d", got, err)
		}
	})
}

// TestGetManyJoinsConcurrentLoads: a Get holding the lease of one key and
// another batch overlapping this one are awaited, never loaded twice.
func TestGetManyJoinsConcurrentLoads(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, _ := b.newStore(t)
		c := newCache[string](t, store)
		release := make(chan struct{})
		var single atomic.Int32
		getDone := make(chan string, 1)
		go func() {
			v, _ := c.Get(bgCtx, "x", func(context.Context) (string, error) {
				single.Add(1)
				<-release
				return "value-x", nil
			})
			getDone <- v
		}()
		eventually(t, "the Get's load", func() bool { return single.Load() == 1 })
		r1 := &recordingBatch{block: make(chan struct{})}
		r2 := &recordingBatch{}
		var wg sync.WaitGroup
		var got1, got2 map[string]string
		wg.Add(1)
		go func() { defer wg.Done(); got1, _ = c.GetMany(bgCtx, []string{"x", "y", "z"}, r1.load) }()
		eventually(t, "the first batch's load", func() bool { return len(r1.callKeys()) == 1 })
		wg.Add(1)
		go func() { defer wg.Done(); got2, _ = c.GetMany(bgCtx, []string{"y", "z", "w"}, r2.load) }()
		time.Sleep(20 * time.Millisecond) // let the second batch reach its wait
		close(r1.block)
		close(release)
		waitGroup(t, &wg)
		if v := recv(t, getDone, "the Get"); v != "value-x" {
			t.Errorf("Get = %q", v)
		}
		c1, c2 := r1.callKeys(), r2.callKeys()
		if !slices.Equal(c1[0], []string{"y", "z"}) || len(c2) != 1 || !slices.Equal(c2[0], []string{"w"}) {
			t.Errorf("batch loads %v and %v; want [y z] (x is the Get's) and [w] (y, z are the first batch's)", c1, c2)
		}
		if len(got1) != 3 || len(got2) != 3 || got1["x"] != "value-x" || got2["y"] != "value-y" {
			t.Errorf("results %v and %v", got1, got2)
		}
	})
}

func TestGetManyWithRedisDown(t *testing.T) {
	srv := miniredis.RunT(t)
	b := &backend{addr: srv.Addr(), mini: srv}
	store, _ := b.newStore(t, aside.WithBreaker(1, time.Hour))
	c := newCache[string](t, store)
	srv.Close()
	r := &recordingBatch{}
	for range 2 {
		got, err := c.GetMany(bgCtx, []string{"a", "b", "missing"}, r.load)
		if err != nil || len(got) != 2 {
			t.Fatalf("GetMany with Redis down = %v, %v; want a and b from the loader", got, err)
		}
	}
	if calls := r.callKeys(); len(calls) != 2 || len(calls[1]) != 3 {
		t.Errorf("loader calls = %v, want one call with the 3 keys per GetMany", calls)
	}
}

// roundTrips counts the commands and pipelines a client sends.
type roundTrips struct{ n atomic.Int32 }

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { r.n.Add(1); return next(ctx, cmd) }
}
func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { r.n.Add(1); return next(ctx, cmds) }
}

func TestGetManyOfHitsIsOneRoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, rdb := b.newStore(t)
		c := newCache[string](t, store)
		r := &recordingBatch{}
		keys := keyRange("k", 0, 100)
		if _, err := c.GetMany(bgCtx, keys, r.load, aside.Tags("t1", "t2")); err != nil {
			t.Fatal(err)
		}
		settled(t, store)
		var rt roundTrips
		rdb.AddHook(&rt)
		got, err := c.GetMany(bgCtx, keys, r.load, aside.Tags("t1", "t2"))
		if err != nil || len(got) != 100 {
			t.Fatal(err)
		}
		if n := rt.n.Load(); n != 1 {
			t.Errorf("GetMany of 100 tagged hits took %d round trips, want 1", n)
		}
	})
}

func TestTaggedHitIsOneRoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, rdb := b.newStore(t)
		c := newCache[string](t, store)
		tags := aside.Tags("a", "b", "c", "d")
		mustGet := func() {
			if _, err := c.Get(bgCtx, "k", func(context.Context) (string, error) { return "v", nil }, tags); err != nil {
				t.Fatal(err)
			}
		}
		mustGet()
		settled(t, store)
		var rt roundTrips
		rdb.AddHook(&rt)
		mustGet()
		if n := rt.n.Load(); n != 1 || c.Stats().Hits != 1 {
			t.Errorf("a hit with 4 tags took %d round trips (%+v), want 1", n, c.Stats())
		}
	})
}
