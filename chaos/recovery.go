package main

import (
	"cmp"
	"math"
	"slices"
	"sort"
	"time"
)

// recoveries sets each window's Recovery: from the undo until the last
// degraded read (served by its loader because its Store could not use
// Redis) of a worker that was reading before the undo, among the reads
// over before the next fault began. Windows are in the order they were
// injected.
func recoveries(events []event, windows []window) {
	reads := map[int][]event{} // by worker, in End order
	for _, e := range events {
		if e.T == "r" && e.Tier != "" {
			reads[e.Worker] = append(reads[e.Worker], e)
		}
	}
	for i := range windows {
		w := &windows[i]
		until := int64(math.MaxInt64)
		if i+1 < len(windows) {
			until = windows[i+1].Start
		}
		for _, rs := range reads {
			j := sort.Search(len(rs), func(j int) bool { return rs[j].End >= w.Undone })
			if j == 0 {
				continue // a worker started since: it has nothing to recover from
			}
			for ; j < len(rs) && rs[j].Start < until; j++ {
				if rs[j].Start >= w.Undone && rs[j].End < until && rs[j].Tier == "degraded" {
					w.Recovery = max(w.Recovery, rs[j].End-w.Undone)
				}
			}
		}
	}
}

// undrained counts the workers that stopped cleanly with invalidations
// still in their replay queue after Close.
func undrained(events []event) (n int) {
	for _, e := range events {
		if e.T == "q" && (e.V != 0 || e.Err != "") {
			n++
		}
	}
	return n
}

// procGrowth is a worker process that lived through the run: its sample
// after warm-up (the first quarter) and its last.
type procGrowth struct {
	id        int
	warm, end event
}

// flat: no goroutine leak and no heap growth beyond GC's own swing — at
// most 16 goroutines more, and twice the heap or 32 MiB more.
func (p procGrowth) flat() bool {
	return p.end.Gor <= p.warm.Gor+16 && p.end.Heap <= max(2*p.warm.Heap, p.warm.Heap+32<<20)
}

func grew(ps []procGrowth) (n int) {
	for _, p := range ps {
		if !p.flat() {
			n++
		}
	}
	return n
}

// growth returns the workers that lived from the warm-up to the end.
func growth(events []event) []procGrowth {
	samples := map[int][]event{}
	var first, last int64
	for _, e := range events {
		if e.T != "m" {
			continue
		}
		samples[e.Worker] = append(samples[e.Worker], e)
		if first == 0 || e.End < first {
			first = e.End
		}
		last = max(last, e.End)
	}
	warm := first + (last-first)/4
	var out []procGrowth
	for id, ss := range samples {
		if ss[0].End < warm && ss[len(ss)-1].End > last-int64(2*time.Second) { // alive from the start to the end
			i := sort.Search(len(ss), func(i int) bool { return ss[i].End >= warm })
			out = append(out, procGrowth{id: id, warm: ss[min(i, len(ss)-1)], end: ss[len(ss)-1]})
		}
	}
	slices.SortFunc(out, func(a, b procGrowth) int { return cmp.Compare(a.id, b.id) })
	return out
}
