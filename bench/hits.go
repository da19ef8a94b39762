package main

// The hit tables: one goroutine in shuffled turns against the floor, and
// many goroutines over warm keys.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// hitKeys and hitGoroutines shape the parallel hit column: goroutines per
// core over warm keys, as a busy service reads.
const (
	hitKeys       = 64
	hitGoroutines = 8 // per GOMAXPROCS
)

func hits(ctx context.Context, subs []subject) { hitTable(ctx, "Hit", subs) }

func hitTable(ctx context.Context, title string, subs []subject) {
	fmt.Println("## " + title)
	fmt.Println()
	fmt.Printf("| subject | 1 goroutine | allocs/op | × floor | %d goroutines, %d keys | × floor |\n", hitGoroutines*runtime.GOMAXPROCS(0), hitKeys)
	fmt.Println("|---|---|---|---|---|---|")
	var par []func(b *testing.B)
	for _, s := range subs {
		warm(ctx, s)
		par = append(par, parallelHits(ctx, s))
	}
	r1, rp := pairedOne(ctx, subs), measureAll(par)
	for i, s := range subs {
		fmt.Printf("| %s | %s | %d | %s | %s | %s |\n", s.name, dur(r1[i].nsPerOp), r1[i].allocs, ratio(r1[i], r1[0]),
			dur(rp[i].nsPerOp), ratio(rp[i], rp[0]))
	}
	fmt.Println()
	fmt.Println("Allocations include each subject's adapter closure (one per call); aside's own L1 hit allocates nothing (`BenchmarkL1`).")
	fmt.Println()
}

// pairedOne measures each subject's hit from one goroutine in blocks of
// about 200 µs — every subject once per round, in a new order each round,
// 100 rounds per turn, 10 turns per repeat — and reports per turn the mean
// time per hit, so that the floor and each subject run within a
// millisecond of each other. A single hit is a few per cent from the
// floor's; the machine drifts by more than that between two runs even 20 ms
// apart (in turns of 20 ms, the control measured 1.05× with a middle half
// of 0.89–1.22×; in blocks of 200 µs, 1.00× with 0.96–1.04×).
//
// The subjects that answer from memory run in rounds of their own, beside
// a copy of the floor (their ratios pair with it): their blocks are
// thousands of calls that churn the heap and the CPU's caches, which the
// next Redis subject's hit then pays for — in proportion to how much code
// and memory it touches, not to what it costs alone. Interleaved with them,
// every Redis subject measured slower (aside 1.09–1.15×, go-redis/cache
// 1.03–1.09×); with GOGC=800 aside measured 1.03×.
func pairedOne(ctx context.Context, subs []subject) []result {
	const block = 200 * time.Microsecond
	out := make([]result, len(subs))
	blocks := make([]int, len(subs)) // calls per block
	remote, local := []int{0}, []int{0}
	for i, s := range subs {
		n := 0
		for start := time.Now(); time.Since(start) < 20*block; n++ {
			_, _ = s.get(ctx, "hot", instant)
		}
		blocks[i] = max(1, n/20)
		out[i].allocs = int64(testing.AllocsPerRun(50, func() { _, _ = s.get(ctx, "hot", instant) }))
		switch {
		case i == 0:
		case blocks[i] > 40: // under 5 µs a hit: no round trip to Redis
			local = append(local, i)
		default:
			remote = append(remote, i)
		}
	}
	rounds := max(1, int(*benchT/10/block)) // per turn: each subject runs benchT/10 in all
	turns := func(group []int) [][]float64 {
		runs := make([][]float64, len(group))
		for range 10 * *repeats {
			spent := make([]time.Duration, len(group))
			for range rounds {
				for _, g := range rand.Perm(len(group)) {
					i := group[g]
					start := time.Now()
					for range blocks[i] {
						_, err := subs[i].get(ctx, "hot", instant)
						must(err)
					}
					spent[g] += time.Since(start)
				}
			}
			for g, i := range group {
				runs[g] = append(runs[g], float64(spent[g].Nanoseconds())/float64(blocks[i]*rounds))
			}
		}
		for g, i := range group[1:] {
			out[i].runs = runs[g+1]
		}
		return runs
	}
	out[0].runs = turns(remote)[0] // the other remote subjects' runs are set inside
	if len(local) > 1 {
		floorBeside := turns(local)[0]
		for _, i := range local[1:] {
			out[i].pairedWith = floorBeside // their ratios: to the floor of their own rounds
		}
	}
	for i := range out {
		ns := slices.Sorted(slices.Values(out[i].runs))
		out[i].nsPerOp = ns[len(ns)/2]
	}
	return out
}

// warm fills Redis, L1 subscriptions and local caches with "hot" and the
// parallel column's keys.
func warm(ctx context.Context, s subject) {
	for range 20 {
		_, _ = s.get(ctx, "hot", instant)
		time.Sleep(time.Millisecond)
	}
	for k := range hitKeys {
		_, _ = s.get(ctx, "w"+strconv.Itoa(k), instant)
	}
	time.Sleep(10 * time.Millisecond)
}

// parallelHits reads the warm keys from hitGoroutines goroutines per core,
// each request's key drawn at random, as a service's requests are
// independent. Read in order instead (each goroutine the next key),
// goroutines fall into step: two that once shared a read in flight (as
// go-redis/cache's Once shares a GET already sent, with callers that came
// after it) come back together and read the same key next, for good — on a
// Cluster its callers then sent 0.31 GET per hit, at random 0.84.
func parallelHits(ctx context.Context, s subject) func(b *testing.B) {
	var keys [hitKeys]string
	for k := range keys {
		keys[k] = "w" + strconv.Itoa(k)
	}
	return func(b *testing.B) {
		b.SetParallelism(hitGoroutines)
		var seed atomic.Uint64
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(seed.Add(1), 0))
			for pb.Next() {
				if _, err := s.get(ctx, keys[r.IntN(hitKeys)], instant); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
}
