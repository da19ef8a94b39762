package aside_test

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidetest"
)

// TestBlackholedRedis: a TCP proxy in front of a real Redis first adds
// 200 ms to every request, then swallows all traffic. Every Get is served;
// before the breaker opens a request waits at most the op timeout, after it
// at most a millisecond; the transitions reach the observer.
func TestBlackholedRedis(t *testing.T) {
	requireReal(t)
	px := asidetest.NewProxy(t, realAddr)
	var ev events
	const opTimeout = 50 * time.Millisecond
	rdb := newClient(t, px.Addr())
	store, err := aside.NewStore(rdb, aside.WithPrefix(uniquePrefix()), aside.WithOpTimeout(opTimeout),
		aside.WithBreaker(3, 300*time.Millisecond), aside.WithObserver(ev.observe),
		aside.WithStallTolerance(0)) // each call's own bound; TestHungRedisStillCutOff has the default
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c := newCache[int](t, store)
	load := func(context.Context) (int, error) { return 7, nil }
	run := func(n int) (lat []time.Duration) {
		for i := range n {
			t0 := time.Now()
			v, err := c.Get(bgCtx, aside.Key("k", string(rune('a'+i%8))), load)
			lat = append(lat, time.Since(t0))
			if err != nil || v != 7 {
				t.Fatalf("Get = %d, %v; want 7 from the loader", v, err)
			}
		}
		return lat
	}
	heal := func() {
		deadline := time.Now().Add(waitFor)
		for store.BreakerState() != aside.BreakerClosed && time.Now().Before(deadline) {
			run(1)
			time.Sleep(20 * time.Millisecond)
		}
		if store.BreakerState() != aside.BreakerClosed {
			t.Fatalf("breaker %v after the network healed", store.BreakerState())
		}
	}
	run(8)                                // warm: entries in Redis
	px.SetLatency(200 * time.Millisecond) // slow
	slow := run(10)
	px.SetLatency(0)
	heal()
	px.SetBlackhole(true) // then silent
	before := run(3)      // the breaker opens after 3 failures
	after := run(1000)
	slices.Sort(after)
	t.Logf("slow Redis: max %v; black hole, before the breaker opens: max %v; after: p50 %v, p99 %v",
		slices.Max(slow), slices.Max(before), after[len(after)/2], after[len(after)*99/100])
	for _, d := range append(slow, before...) {
		if d > opTimeout+40*time.Millisecond { // one Redis call, cut at the op timeout, plus scheduling
			t.Errorf("a request took %v; the op timeout is %v", d, opTimeout)
		}
	}
	// No Redis call: far below the op timeout (the loader answers at once;
	// a bound of 1 ms failed beside two CPU-bound processes at 1.09 ms).
	if p99 := after[len(after)*99/100]; p99 > opTimeout/5 {
		t.Errorf("with the breaker open p99 = %v, want ≤ %v (no Redis call)", p99, opTimeout/5)
	}
	if ev.count(aside.EventBreakerOpen) == 0 {
		t.Error("no breaker-open event")
	}
	px.SetBlackhole(false)
	heal() // timed-out connections were discarded; the pool redials
	if ev.count(aside.EventBreakerClosed) < 2 {
		t.Errorf("%d breaker-closed events, want one per healing", ev.count(aside.EventBreakerClosed))
	}
}

// TestRedisOutOfMemory: a real redis-server at maxmemory with noeviction
// refuses writes with OOM errors. Reads keep being served (hits from what is
// there, misses from the loader), the errors are counted, and the breaker
// stays closed: the server answers, it is not down.
func TestRedisOutOfMemory(t *testing.T) {
	requireReal(t)
	srv, err := startRedis(0, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.stop()
	rdb := newClient(t, srv.addr)
	store, err := aside.NewStore(rdb, aside.WithOpTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c := newCache[string](t, store)
	pad := randomHex(1000) // 2000 bytes that s2 cannot shrink
	var loads atomic.Int32
	load := func(context.Context) (string, error) { loads.Add(1); return pad, nil }
	for i := range 3000 { // ~6 MB of entries into a 2 MB server
		if v, err := c.Get(bgCtx, aside.Key("k", strings.Repeat("n", i%7), string(rune(i))), load); err != nil || v != pad {
			t.Fatalf("Get %d = %v", i, err)
		}
	}
	s := c.Stats()
	t.Logf("3000 misses into a full Redis: %d Redis errors, %d bytes written, breaker %v", s.RedisErrors, s.BytesWritten, store.BreakerState())
	if s.RedisErrors == 0 {
		t.Error("no OOM error counted: the test did not fill Redis")
	}
	if store.BreakerState() != aside.BreakerClosed {
		t.Errorf("breaker %v: OOM replies must not open it", store.BreakerState())
	}
	// What was stored is still served from Redis.
	hits := s.Hits
	if _, err := c.Get(bgCtx, aside.Key("k", "", string(rune(0))), load); err != nil || c.Stats().Hits != hits+1 {
		t.Errorf("an entry stored before the OOM was not a hit: %v, %+v", err, c.Stats())
	}
}
