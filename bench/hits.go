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

func hits(ctx context.Context, subs []subject) {
	fmt.Println("## Hit")
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

// pairedOne measures each subject's hit from one goroutine in turns of a
// few milliseconds — every subject once per round, 10 rounds per repeat —
// so that the floor and each subject run within milliseconds of each other:
// a single hit is a few per cent from the floor's, less than this shared
// machine drifts between two 200 ms runs.
func pairedOne(ctx context.Context, subs []subject) []result {
	turn := *benchT / 10
	out := make([]result, len(subs))
	blocks := make([]int, len(subs))
	for i, s := range subs {
		n := 0
		for start := time.Now(); time.Since(start) < turn; n++ {
			_, _ = s.get(ctx, "hot", instant)
		}
		blocks[i] = n
		out[i].allocs = int64(testing.AllocsPerRun(50, func() { _, _ = s.get(ctx, "hot", instant) }))
	}
	for range 10 * *repeats {
		for _, i := range rand.Perm(len(subs)) {
			s := subs[i]
			start := time.Now()
			for range blocks[i] {
				_, err := s.get(ctx, "hot", instant)
				must(err)
			}
			out[i].runs = append(out[i].runs, float64(time.Since(start).Nanoseconds())/float64(blocks[i]))
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

// parallelHits reads the warm keys from hitGoroutines goroutines per core.
func parallelHits(ctx context.Context, s subject) func(b *testing.B) {
	var keys [hitKeys]string
	for k := range keys {
		keys[k] = "w" + strconv.Itoa(k)
	}
	return func(b *testing.B) {
		b.SetParallelism(hitGoroutines)
		var next atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for i := int(next.Add(7)); pb.Next(); i++ {
				if _, err := s.get(ctx, keys[i%hitKeys], instant); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
}
