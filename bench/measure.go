package main

// How the tables measure: repeats round-robin in a new order each time,
// medians, and ratios to the floor taken repeat by repeat.

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// result is the median of repeated testing.Benchmark runs, with every
// repeat's time kept for ratios.
type result struct {
	nsPerOp float64
	allocs  int64
	runs    []float64 // ns/op of each repeat, in repeat order
	// pairedWith: the floor's ns/op in the repeats this result ran beside,
	// where those were not the table's floor row (pairedOne's local subjects)
	pairedWith []float64
}

// measureAll runs every benchmark once per repeat, round-robin in a new
// order each time, so that a noisy moment of the machine hits all subjects
// alike and none gains from its place in the round (in a fixed order, a
// second copy of the floor measured 1.05–1.17× the first), and returns each
// one's medians.
func measureAll(fns []func(b *testing.B)) []result {
	ns := make([][]float64, len(fns))
	allocs := make([][]int64, len(fns))
	for range *repeats {
		for _, i := range rand.Perm(len(fns)) { // no subject always runs first, or after the same one
			fn := fns[i]
			r := testing.Benchmark(fn)
			if r.N == 0 {
				ns[i], allocs[i] = append(ns[i], -1), append(allocs[i], 0)
				continue
			}
			ns[i] = append(ns[i], float64(r.T.Nanoseconds())/float64(r.N))
			allocs[i] = append(allocs[i], r.AllocsPerOp())
		}
	}
	out := make([]result, len(fns))
	for i := range fns {
		runs := slices.Clone(ns[i])
		slices.Sort(ns[i])
		slices.Sort(allocs[i])
		out[i] = result{nsPerOp: ns[i][len(ns[i])/2], allocs: allocs[i][len(allocs[i])/2], runs: runs}
	}
	return out
}

// ratio is r's time over base's: the median of the per-repeat ratios (each
// repeat ran both side by side), with their range.
func ratio(r, base result) string {
	var rs []float64
	against := base.runs
	if r.pairedWith != nil {
		against = r.pairedWith
	}
	for i := range r.runs {
		if i < len(against) && r.runs[i] > 0 && against[i] > 0 {
			rs = append(rs, r.runs[i]/against[i])
		}
	}
	if len(rs) == 0 {
		return "–"
	}
	slices.Sort(rs)
	switch {
	case len(rs) == 1:
		return fmt.Sprintf("%.2f", rs[0])
	case len(rs) >= 20: // many short turns: the middle half
		return fmt.Sprintf("%.2f (%.2f–%.2f)", rs[len(rs)/2], rs[len(rs)/4], rs[len(rs)*3/4])
	}
	return fmt.Sprintf("%.2f (%.2f–%.2f)", rs[len(rs)/2], rs[0], rs[len(rs)-1])
}
