package main

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"
)

// report prints the run's Markdown report: a row per fault window, the
// workers' goroutines and heap, Redis' recovery after each fault.
func report(w io.Writer, dur time.Duration, readers, writers, keys int, total verdict, per map[string]*verdict, windows []window, left int, events []event) {
	invals, failedWrites := 0, 0
	for _, e := range events {
		switch e.T {
		case "i":
			invals++
		case "w":
			failedWrites++
		}
	}
	fmt.Fprintf(w, "# aside chaos run\n\n%v, %d reader and %d writer processes, %d rows in PostgreSQL, %d cores; %d faults.\n\n",
		dur, readers, writers, keys, runtime.NumCPU(), len(windows))
	fmt.Fprintf(w, "| window | reads | stale | max staleness | failed | loads | p50 | p99 | p99.9 | behind a commit (no invalidation returned) |\n|---|---|---|---|---|---|---|---|---|---|\n")
	names := make([]string, 0, len(per))
	for n := range per {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		v := per[n]
		fmt.Fprintf(w, "| %s | %d | %d%s | %.1f ms | %d | %d | %s |\n", n, v.Reads, v.Stale, tiers(v.StaleByTier), v.MaxStaleMs, v.Failed, v.Loads, latencyCells(v))
	}
	fmt.Fprintf(w, "| **total** | %d | %d%s | %.1f ms | %d | %d | %s |\n\n", total.Reads, total.Stale, tiers(total.StaleByTier), total.MaxStaleMs, total.Failed, total.Loads, latencyCells(&total))
	workerTable(w, events)
	fmt.Fprintf(w, "| fault | times | Redis answering again after it was undone: median | max |\n|---|---|---|---|\n")
	recoveries := map[string][]int64{}
	var order []string
	for _, win := range windows {
		if recoveries[win.Name] == nil {
			order = append(order, win.Name)
		}
		recoveries[win.Name] = append(recoveries[win.Name], win.Recovery)
	}
	for _, name := range order {
		rs := recoveries[name]
		slices.Sort(rs)
		ms := func(ns int64) time.Duration { return time.Duration(ns).Round(time.Millisecond) }
		fmt.Fprintf(w, "| %s | %d | %v | %v |\n", name, len(rs), ms(rs[len(rs)/2]), ms(rs[len(rs)-1]))
	}
	fmt.Fprintf(w, "\nInvalidations that returned: %d; writes whose invalidation returned an error (not counted, queued for replay): %d; cache entries left older than the source after the run: %d.\n",
		invals, failedWrites, left)
	seen := map[string]int{}
	for _, e := range events {
		if e.T == "r" && e.Err != "" {
			seen[e.Cache+": "+e.Err]++
		}
	}
	if len(seen) > 0 {
		fmt.Fprintln(w, "\nFailed reads, by cache and error:")
		fmt.Fprintln(w)
		for msg, n := range seen {
			fmt.Fprintf(w, "- %d × %s\n", n, msg)
		}
	}
	if total.Stale > 0 || total.Failed > 0 || left > 0 {
		fmt.Fprintln(w, "\n**FAILED**: a guarantee the README makes was broken.")
	} else {
		fmt.Fprintln(w, "\nEvery guarantee held: no stale read, no failed read, nothing left stale.")
	}
}

func latencyCells(v *verdict) string {
	r := func(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
	return fmt.Sprintf("%v | %v | %v | %d, up to %.0f ms", r(v.percentile(0.5)), r(v.percentile(0.99)), r(v.percentile(0.999)), v.BehindCommit, v.MaxBehindMs)
}

// workerTable shows each worker process that lived through the run: goroutines and
// heap after the first quarter (warm-up) and at the end.
func workerTable(w io.Writer, events []event) {
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
	var ids []int
	for id, ss := range samples {
		if ss[0].End < warm && ss[len(ss)-1].End > last-int64(2*time.Second) { // alive from the start to the end
			ids = append(ids, id)
		}
	}
	sort.Ints(ids)
	fmt.Fprintf(w, "| process | goroutines after warm-up → end | heap in use after warm-up → end |\n|---|---|---|\n")
	for _, id := range ids {
		ss := samples[id]
		i := sort.Search(len(ss), func(i int) bool { return ss[i].End >= warm })
		a, b := ss[min(i, len(ss)-1)], ss[len(ss)-1]
		fmt.Fprintf(w, "| %d | %d → %d | %.1f → %.1f MiB |\n", id, a.Gor, b.Gor, float64(a.Heap)/(1<<20), float64(b.Heap)/(1<<20))
	}
	fmt.Fprintln(w)
}

func tiers(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for t, n := range m {
		parts = append(parts, fmt.Sprintf("%s %d", t, n))
	}
	sort.Strings(parts)
	return " (" + strings.Join(parts, ", ") + ")"
}
