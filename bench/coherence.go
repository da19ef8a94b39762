package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// coherence measures what strict L1 coherence costs: an invalidation's
// latency while n Stores hold L1 leases (each Store with a client of its
// own, as n processes would have), against the same Stores in relaxed mode
// in the same run, and the bus traffic per Store at idle and under a steady
// rate of invalidations.
func coherence(ctx context.Context, newRDB func() redis.UniversalClient, where string, sizes []int, rate int, window time.Duration) {
	fmt.Printf("\n## L1 coherence: invalidation latency and bus traffic (%s)\n\n", where)
	fmt.Printf("Each row: n Stores with L1 (one client each, as n processes), one of them invalidating %d keys/s "+
		"from 4 goroutines for %v; traffic per Store per second, from `Store.Coherence()`.\n\n", rate, window)
	fmt.Println("| Stores | mode | invalidation p50 | p99 | max | heartbeats/s per Store, idle | under load | acks/s per Store under load | silent |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, n := range sizes {
		for _, relaxed := range []bool{false, true} {
			r := coherenceRun(ctx, newRDB, n, relaxed, rate, window)
			mode := "strict"
			if relaxed {
				mode = "relaxed"
			}
			fmt.Printf("| %d | %s | %s | %s | %s | %.1f | %.1f | %.1f | %d |\n", n, mode,
				r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.max.Round(10*time.Microsecond),
				r.idleBeats, r.loadBeats, r.loadAcks, r.silent)
		}
	}
}

type coherenceResult struct {
	p50, p99, max                  time.Duration
	idleBeats, loadBeats, loadAcks float64
	silent                         uint64
}

func coherenceRun(ctx context.Context, newRDB func() redis.UniversalClient, n int, relaxed bool, rate int, window time.Duration) coherenceResult {
	p := prefix + "-coh" + strconv.Itoa(n)
	var stores []*aside.Store
	var caches []*aside.Cache[int]
	for range n {
		rdb := newRDB()
		opts := []aside.StoreOption{aside.WithPrefix(p), aside.WithOpTimeout(time.Second)}
		if relaxed {
			opts = append(opts, aside.WithRelaxedL1())
		}
		s, err := aside.NewStore(rdb, opts...)
		must(err)
		c, err := aside.New[int](s, "items", aside.WithL1(1000, time.Minute))
		must(err)
		stores, caches = append(stores, s), append(caches, c)
		defer func() { _ = s.Close(); _ = rdb.Close() }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range stores {
		for !s.Coherence().L1Serving && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	traffic := func() (beats, acks uint64) {
		for _, s := range stores {
			co := s.Coherence()
			beats, acks = beats+co.Heartbeats, acks+co.AckMessages
		}
		return
	}
	perStore := func(d uint64, w time.Duration) float64 { return float64(d) / float64(n) / w.Seconds() }
	idle := min(window, 2*time.Second)
	b0, _ := traffic()
	time.Sleep(idle)
	idleBeats, _ := traffic()
	// Keys are read into every L1 first, so that every Store holds what is
	// invalidated.
	load := func(context.Context) (int, error) { return 1, nil }
	for k := range 64 {
		for _, c := range caches {
			_, _ = c.Get(ctx, strconv.Itoa(k), load)
		}
	}
	var mu sync.Mutex
	var lat []time.Duration
	b1, a1 := traffic()
	start := time.Now()
	var wg sync.WaitGroup
	const workers = 4
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			every := time.Second * workers / time.Duration(rate)
			next := start.Add(time.Duration(w) * every / workers)
			for i := w; time.Since(start) < window; i += workers {
				time.Sleep(time.Until(next))
				next = next.Add(every)
				t0 := time.Now()
				err := caches[0].Invalidate(ctx, strconv.Itoa(i%64))
				d := time.Since(t0)
				must(err)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b2, a2 := traffic()
	slices.Sort(lat)
	pct := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	return coherenceResult{
		p50: pct(0.5), p99: pct(0.99), max: lat[len(lat)-1],
		idleBeats: perStore(idleBeats-b0, idle), loadBeats: perStore(b2-b1, elapsed), loadAcks: perStore(a2-a1, elapsed),
		silent: stores[0].Coherence().SilentStores,
	}
}
