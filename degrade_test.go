package aside_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidetest"
)

// events collects observer events for assertions.
type events struct {
	mu   sync.Mutex
	seen []aside.EventKind
}

func (e *events) observe(ev aside.Event) {
	e.mu.Lock()
	e.seen = append(e.seen, ev.Kind)
	e.mu.Unlock()
}

func (e *events) count(k aside.EventKind) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, s := range e.seen {
		if s == k {
			n++
		}
	}
	return n
}

// TestRedisKilledMidRun kills a real redis-server while requests run: every
// Get is still served by the loader, the breaker opens, and after a restart
// on the same port it closes and hits resume.
func TestRedisKilledMidRun(t *testing.T) {
	requireLong(t)
	requireReal(t)
	srv, err := startRedis(0)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.stop()
	var ev events
	rdb := newClient(t, srv.addr)
	store, err := aside.NewStore(rdb, aside.WithOpTimeout(time.Second), aside.WithBreaker(3, 100*time.Millisecond), aside.WithObserver(ev.observe))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c := newCache[string](t, store)
	var loads atomic.Int32
	load := func(context.Context) (string, error) { loads.Add(1); return "value", nil }
	getAll := func(phase string) {
		t.Helper()
		for i := range 50 {
			v, err := c.Get(bgCtx, aside.Key("k", string(rune('a'+i%5))), load)
			if err != nil || v != "value" {
				t.Fatalf("%s: Get = %q, %v; want the value, no error", phase, v, err)
			}
		}
	}
	getAll("before kill")
	if loads.Load() != 5 {
		t.Fatalf("loads before kill = %d, want 5", loads.Load())
	}
	srv.kill()
	start := time.Now()
	getAll("redis down")
	down := time.Since(start)
	if store.BreakerState() != aside.BreakerOpen || ev.count(aside.EventBreakerOpen) != 1 {
		t.Errorf("breaker = %v with %d open events, want open once", store.BreakerState(), ev.count(aside.EventBreakerOpen))
	}
	if s := c.Stats(); s.RedisErrors < 3 || s.Degraded == 0 {
		t.Errorf("stats while down = %+v, want >= 3 Redis errors and degraded reads", s)
	}
	t.Logf("50 Gets with Redis down took %v", down)

	restarted, err := startRedis(srv.port)
	if err != nil {
		t.Fatal(err)
	}
	defer restarted.stop()
	deadline := time.Now().Add(waitFor)
	for store.BreakerState() != aside.BreakerClosed {
		if time.Now().After(deadline) {
			t.Fatal("breaker did not close after Redis came back")
		}
		getAll("recovering")
		time.Sleep(20 * time.Millisecond)
	}
	getAll("refill") // the restarted Redis is empty: one more load per key at most
	settled(t, store)
	before, hitsBefore := loads.Load(), c.Stats().Hits
	getAll("after restart")
	if loads.Load() != before || c.Stats().Hits-hitsBefore != 50 {
		t.Errorf("after restart: %d new loads, %d new hits; want 0 and 50", loads.Load()-before, c.Stats().Hits-hitsBefore)
	}
	if ev.count(aside.EventBreakerClosed) < 1 {
		t.Error("no breaker-closed event")
	}
}

func TestMiniredisOutageServedByLoader(t *testing.T) {
	srv := miniredis.RunT(t)
	b := &backend{addr: srv.Addr(), mini: srv}
	store, _ := b.newStore(t, aside.WithBreaker(2, time.Hour))
	c := newCache[int](t, store)
	mustGet(t, c, "k", func(context.Context) (int, error) { return 1, nil })
	srv.Close()
	var loads atomic.Int32
	for range 10 {
		if got := mustGet(t, c, "k", countingLoader(2, &loads)); got != 2 {
			t.Fatalf("Get with Redis down = %d, want the loader's 2", got)
		}
	}
	if s := c.Stats(); s.RedisErrors != 2 || s.Degraded != 8 {
		t.Errorf("stats = %+v, want 2 Redis errors then 8 reads skipping Redis", s)
	}
	if err := c.Set(bgCtx, "k", 3); !errors.Is(err, aside.ErrUnavailable) {
		t.Errorf("Set with the breaker open = %v, want ErrUnavailable", err)
	}
	if err := c.Invalidate(bgCtx, "k"); !errors.Is(err, aside.ErrUnavailable) {
		t.Errorf("Invalidate with the breaker open = %v, want ErrUnavailable", err)
	}
}

// TestSlowRedisBoundedByOpTimeout: against a Redis slower than every
// bound, a Get waits one call's timeout for its read (the op timeout, and
// with the default stall tolerance 4 op timeouts more) and is then served
// by its loader.
func TestSlowRedisBoundedByOpTimeout(t *testing.T) {
	const op = 50 * time.Millisecond
	for _, tc := range []struct {
		name  string
		opts  []aside.StoreOption
		bound time.Duration
	}{
		// One read and one write, each cut at the op timeout.
		{"no stall tolerance", []aside.StoreOption{aside.WithStallTolerance(0)}, 250 * time.Millisecond},
		// The read, waiting out what could have been a stall (4 op
		// timeouts), then the loader; the fill is not sent (no lease).
		{"default stall tolerance", nil, 5*op + 100*time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := miniredis.RunT(t)
			px := asidetest.NewProxy(t, srv.Addr())
			rdb := newClient(t, px.Addr())
			store, err := aside.NewStore(rdb, append(tc.opts, aside.WithOpTimeout(op), aside.WithBreaker(1, time.Second))...)
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			c := newCache[int](t, store)
			// The Store's first use records the cache's version (one call
			// of its own): done before Redis slows down, so the Get below
			// is a read, a load and a fill, nothing more.
			mustGet(t, c, "warm", func(context.Context) (int, error) { return 1, nil })
			px.SetLatency(300 * time.Millisecond)
			start := time.Now()
			if got := mustGet(t, c, "k", func(context.Context) (int, error) { return 9, nil }); got != 9 {
				t.Fatalf("Get = %d, want 9", got)
			}
			if d := time.Since(start); d > tc.bound {
				t.Errorf("Get took %v against a 300 ms Redis with a 50 ms op timeout, want ≤ %v", d, tc.bound)
			}
			if s := c.Stats(); s.RedisErrors == 0 {
				t.Errorf("stats = %+v, want the timeout counted", s)
			}
		})
	}
}

func TestNewStoreRejectsClientWithoutUsableTimeouts(t *testing.T) {
	srv := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()}) // 3 s default read timeout
	defer rdb.Close()
	_, err := aside.NewStore(rdb)
	if err == nil || !strings.Contains(err.Error(), "ContextTimeoutEnabled") {
		t.Fatalf("NewStore = %v, want an error naming ContextTimeoutEnabled", err)
	}
	if _, err := aside.NewStore(rdb, aside.WithOpTimeout(5*time.Second)); err != nil {
		t.Errorf("NewStore with an op timeout above the client's: %v", err)
	}
}

// runT7: Redis dies; Invalidate fails (and is queued); Redis comes back
// from a snapshot that still holds the old entry. Returns what the first Get
// afterwards returns and how many invalidations are still pending.
func runT7(t *testing.T, dropQueue bool) (int, int) {
	dir := t.TempDir()
	srv, err := startRedisIn(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	rdb := newClient(t, srv.addr)
	store, err := aside.NewStore(rdb, aside.WithOpTimeout(300*time.Millisecond), aside.WithBreaker(100, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c := newCache[int](t, store)
	var db atomic.Int32
	db.Store(1)
	load := func(context.Context) (int, error) { return int(db.Load()), nil }
	mustGet(t, c, "k", load)
	if err := rdb.Save(bgCtx).Err(); err != nil { // the snapshot holds v1
		t.Fatal(err)
	}
	srv.kill()
	db.Store(2)
	if err := c.Invalidate(bgCtx, "k"); err == nil {
		t.Fatal("Invalidate with Redis down returned no error")
	}
	if n, _ := store.Pending(); n != 1 {
		t.Fatalf("pending invalidations = %d, want 1", n)
	}
	if dropQueue {
		aside.DropPending(store)
	}
	restarted, err := startRedisIn(dir, srv.port)
	if err != nil {
		t.Fatal(err)
	}
	defer restarted.stop()
	got := mustGet(t, c, "k", load)
	n, _ := store.Pending()
	return got, n
}

func TestT7ReplayBeforeTrustingRestoredRedis(t *testing.T) {
	requireLong(t)
	requireReal(t)
	if got, pending := runT7(t, false); got != 2 || pending != 0 {
		t.Errorf("first Get after the restore = v%d with %d pending, want v2 and a drained queue", got, pending)
	}
	if got, _ := runT7(t, true); got != 1 {
		t.Errorf("broken variant (queue dropped): v%d, want the restored v1 — the test must be able to fail", got)
	}
}

// TestT20InvalidationsTakeEffectInOrder: once an invalidation returns, every
// earlier invalidation of the same Store that failed has taken effect — in
// Redis and in the other Stores' L1 — also when a read of the writer's Store
// is replaying them at that moment (its replay is held back 300 ms). The
// broken variant, v1's, skips a replay that is running and returns first.
func TestT20InvalidationsTakeEffectInOrder(t *testing.T) {
	run := func(t *testing.T, racing, broken bool) (got int) {
		writer, fake := asidetest.New(t, aside.WithBreaker(1, 10*time.Millisecond))
		var replays atomic.Int32
		aside.SetStoreHooks(writer, &aside.TestHooks{UnorderedReplay: broken, BeforeReplay: func() {
			if racing && replays.Add(1) == 1 {
				time.Sleep(300 * time.Millisecond)
			}
		}})
		// Another process, with a strict L1, whose own connections stay up
		// while the writer's are down.
		rc := redis.NewClient(&redis.Options{Addr: fake.Miniredis().Addr(), DisableIdentity: true, ContextTimeoutEnabled: true, MaxRetries: -1})
		defer rc.Close()
		reader, err := aside.NewStore(rc)
		if err != nil {
			t.Fatal(err)
		}
		defer reader.Close()
		w, _ := aside.New[int](writer, "n")
		r, _ := aside.New[int](reader, "n", aside.WithL1(10, time.Minute))
		version := 1
		load := func(context.Context) (int, error) { return version, nil }
		mustGet(t, r, "k", load) // in Redis and in the reader's L1
		fake.Down()
		version = 2
		if err := w.Invalidate(bgCtx, "k"); err == nil {
			t.Fatal("Invalidate with Redis down returned nil")
		}
		fake.Up()
		time.Sleep(20 * time.Millisecond) // the writer's breaker may probe again (not Advance: entries would expire)
		replaying := make(chan struct{})
		if racing { // a read of the writer's Store replays the queue first
			go func() { defer close(replaying); mustGet(t, w, "other", load) }()
			time.Sleep(50 * time.Millisecond) // that replay now holds the queue
		} else {
			close(replaying)
		}
		if err := w.Invalidate(bgCtx, "other"); err != nil {
			t.Fatal(err)
		}
		got = mustGet(t, r, "k", load)
		select {
		case <-replaying:
		case <-time.After(5 * time.Second):
			t.Fatal("the racing read did not return")
		}
		return got
	}
	for _, racing := range []bool{false, true} {
		t.Run(fmt.Sprintf("racing=%v", racing), func(t *testing.T) {
			if got := run(t, racing, false); got != 2 {
				t.Errorf("the reader serves v%d after the writer's next invalidation returned, want v2", got)
			}
		})
	}
	if got := run(t, true, true); got != 1 {
		t.Errorf("broken variant (a running replay skipped): v%d, want the old v1 — the test must be able to fail", got)
	}
}

// TestReplayQueueOverflow: past 100 000 queued invalidations the queue is
// dropped and the Store stops reading Redis (every Get goes to its loader),
// but its invalidations still reach Redis and the other Stores.
func TestReplayQueueOverflow(t *testing.T) {
	g := newReplayRig(t)
	writer, fake, w, r := g.writer, g.fake, g.w, g.r
	fake.Down()
	overflow(w)
	if _, overflowed := writer.Pending(); !overflowed {
		t.Fatal("101 000 failed invalidations did not overflow the queue")
	}
	fake.Up()
	fake.Advance(time.Hour) // the breaker may probe again
	g.version = 2
	if err := w.Invalidate(bgCtx, "k"); err != nil {
		t.Fatalf("an invalidation after the overflow: %v, want it to reach Redis", err)
	}
	if got := mustGet(t, r, "k", g.load); got != 2 {
		t.Errorf("another Store reads v%d, want v2", got)
	}
	var loads atomic.Int32
	for range 2 {
		mustGet(t, w, "k", func(context.Context) (int, error) { loads.Add(1); return g.version, nil })
	}
	if loads.Load() != 2 {
		t.Errorf("the overflowed Store loaded %d times for 2 Gets, want 2: it must not read Redis", loads.Load())
	}
}

// TestReplayQueueOverflowDuringAReplay: failed invalidations that overflow
// the queue while a replay is writing drop it; the replay ends cleanly (it
// used to trim the dropped queue and panic) and the Store stops reading Redis.
func TestReplayQueueOverflowDuringAReplay(t *testing.T) {
	writer, fake := asidetest.New(t, aside.WithBreaker(1, time.Hour))
	w, _ := aside.New[int](writer, "n")
	var armed atomic.Bool
	aside.SetStoreHooks(writer, &aside.TestHooks{BeforeReplay: func() {
		if !armed.CompareAndSwap(true, false) {
			return
		}
		fake.Down()
		overflow(w) // the breaker is open: queued at once
		fake.Up()
	}})
	fake.Down()
	if err := w.Invalidate(bgCtx, "k"); err == nil {
		t.Fatal("Invalidate with Redis down returned nil")
	}
	fake.Up()
	fake.Advance(time.Hour)
	armed.Store(true)
	_ = writer.Close() // replays; the hook overflows the queue meanwhile
	if _, overflowed := writer.Pending(); !overflowed {
		t.Fatal("the queue did not overflow during the replay")
	}
}

// replayRig is two processes on one fake Redis: a writer whose breaker
// opens at the first failure, and a reader that has read "k" at version 1.
// The loaders of both return version.
type replayRig struct {
	writer  *aside.Store
	fake    *asidetest.Redis
	w, r    *aside.Cache[int]
	version int
}

func newReplayRig(t *testing.T) *replayRig {
	t.Helper()
	g := &replayRig{version: 1}
	g.writer, g.fake = asidetest.New(t, aside.WithBreaker(1, time.Hour))
	reader, err := aside.NewStore(g.fake.Client()) // another process on the same Redis
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reader.Close() })
	g.w, _ = aside.New[int](g.writer, "n")
	g.r, _ = aside.New[int](reader, "n")
	mustGet(t, g.r, "k", g.load)
	return g
}

func (g *replayRig) load(context.Context) (int, error) { return g.version, nil }

// overflow makes 101 000 invalidations of w fail (Redis must be down): one
// more than the replay queue holds.
func overflow(w *aside.Cache[int]) {
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("x", i)
	}
	for range 101 {
		_ = w.Invalidate(bgCtx, keys...)
	}
}
