package aside_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asidecache/aside"
)

// outcomes is what a cache's reads were answered by: each read counts one.
func outcomes(s aside.Stats) uint64 {
	return s.L1Hits + s.Hits + s.StaleServed + s.NegativeHits + s.Waited + s.Misses + s.TagMisses
}

// TestEveryReadCountsOneOutcome: under stampedes across two Stores, with
// invalidations in between and through Get and GetMany, the outcome
// counters of the caches add up to the reads made. A caller that missed
// and then took another caller's load (a lease wait, in process or across)
// counts once, in Waited, not as a miss and a hit. Broken variant: every
// Redis read of a call counts, so a waited read is a hit as well.
func TestEveryReadCountsOneOutcome(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		counted, reads, waits := stampedeOutcomes(t, b, false)
		if counted != reads {
			t.Errorf("%d read outcomes counted for %d reads", counted, reads)
		}
		if waits == 0 {
			t.Log("no read waited for another's load this run: the test proved less than it can")
		}
		if counted, reads, waits := stampedeOutcomes(t, b, true); waits > 0 && counted == reads {
			t.Errorf("broken variant: %d outcomes for %d reads with %d waits: the test cannot tell", counted, reads, waits)
		}
	})
}

// stampedeOutcomes runs 8 goroutines of Gets (some starting with the lease
// script) and GetManys on two Stores over three keys with a slow loader,
// invalidating now and then, and returns the outcomes the caches counted,
// the reads made, and how many of them waited for another's load.
func stampedeOutcomes(t *testing.T, b *backend, broken bool) (counted, reads, waits uint64) {
	prefix := uniquePrefix()
	var caches []*aside.Cache[int]
	var stores []*aside.Store
	for range 2 {
		s, _ := b.newStore(t, aside.WithPrefix(prefix))
		c := newCache[int](t, s)
		aside.SetTestHooks(c, &aside.TestHooks{CountEachRead: broken})
		stores, caches = append(stores, s), append(caches, c)
	}
	load := func(context.Context) (int, error) { time.Sleep(5 * time.Millisecond); return 1, nil }
	loadMany := func(_ context.Context, keys []string) (map[string]int, error) {
		time.Sleep(5 * time.Millisecond)
		m := make(map[string]int, len(keys))
		for _, k := range keys {
			m[k] = 1
		}
		return m, nil
	}
	keys := []string{"a", "b", "c"}
	var made atomic.Uint64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := caches[g%2]
			for i := range 30 {
				if g == 0 && i%10 == 0 {
					if err := c.Invalidate(bgCtx, keys...); err != nil {
						t.Error(err)
					}
				}
				var err error
				if g%3 == 0 {
					_, err = c.GetMany(bgCtx, keys, loadMany)
					made.Add(uint64(len(keys)))
				} else {
					var opts []aside.CallOption
					if g%3 == 1 { // the read that starts with the lease script counts once too
						opts = append(opts, aside.LeaseFirstCall())
					}
					_, err = c.Get(bgCtx, keys[(g+i)%len(keys)], load, opts...)
					made.Add(1)
				}
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	for i, c := range caches {
		settled(t, stores[i])
		s := c.Stats()
		counted += outcomes(s)
		waits += s.LeaseWaits
	}
	return counted, made.Load(), waits
}

// TestAWaitedReadCountsAsWaited: a read that found another caller's fill
// under way and took its value counts one Waited (and one lease wait), no
// miss and no hit — the one load's caller counts the miss — the same when
// the load ran in its own process, so that a stampede reads as one miss,
// not as a hit ratio of 0. Broken variants: the waited read stays a miss;
// every Redis read counts (across processes: in its own, the read joins
// the load without reading again), so it is a hit as well.
func TestAWaitedReadCountsAsWaited(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		for _, across := range []bool{false, true} {
			t.Run(fmt.Sprintf("across=%v", across), func(t *testing.T) {
				r := waitedRead(t, b, across, aside.TestHooks{})
				if r.waited != 1 || r.misses != 0 || r.hits != 0 || r.all != 1 || r.loads != 1 {
					t.Errorf("a waited read counted %+v; want 1 waited only, 1 load", r)
				}
				if r := waitedRead(t, b, across, aside.TestHooks{WaitsAsMisses: true}); r.misses != 1 || r.waited != 0 {
					t.Errorf("broken variant (waits counted as misses): %+v: the test cannot tell", r)
				}
				if !across {
					return // a joiner takes its own process's flight without reading Redis again: nothing to count twice
				}
				if r := waitedRead(t, b, across, aside.TestHooks{CountEachRead: true}); r.hits == 0 {
					t.Error("broken variant: the waited read counted no hit: the test cannot tell")
				}
			})
		}
	})
}

// waitedOutcome is what a read that waited for another's load counted.
type waitedOutcome struct {
	misses, hits, waited, all uint64
	loads                     int32
}

// waitedRead makes a read wait for the fill of another caller's load (in
// its own Store, or across Stores) and returns what that read counted:
// its counters; and the loads made.
func waitedRead(t *testing.T, b *backend, across bool, hooks aside.TestHooks) waitedOutcome {
	prefix := uniquePrefix()
	sa, _ := b.newStore(t, aside.WithPrefix(prefix))
	ca := newCache[int](t, sa)
	held := holdFirstFill(ca, hooks)
	cb := ca
	if across {
		sb, _ := b.newStore(t, aside.WithPrefix(prefix))
		cb = newCache[int](t, sb)
		aside.SetTestHooks(cb, &hooks)
	}
	var loaded atomic.Int32
	got := make(chan int, 1)
	go func() { v, _ := ca.Get(bgCtx, "k", countingLoader(1, &loaded)); got <- v }()
	recv(t, held.filling, "the fill")
	recv(t, got, "the holder")
	before := cb.Stats()
	other := make(chan int, 1)
	go func() { v, _ := cb.Get(bgCtx, "k", countingLoader(2, &loaded)); other <- v }()
	eventually(t, "the other read to wait", func() bool { return cb.Stats().LeaseWaits == before.LeaseWaits+1 })
	close(held.proceed)
	if v := recv(t, other, "the other read"); v != 1 {
		t.Errorf("the other read got %d, want the fill's 1", v)
	}
	s := cb.Stats()
	return waitedOutcome{misses: s.Misses - before.Misses, hits: s.Hits - before.Hits, waited: s.Waited - before.Waited,
		all: outcomes(s) - outcomes(before), loads: loaded.Load()}
}
