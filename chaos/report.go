package main

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// report prints the run's Markdown report: a row per fault window, the
// workers' goroutines and heap, the recovery after each fault.
func report(w io.Writer, cfg config, res result, per map[string]*verdict, windows []window, events []event, ps []procGrowth) {
	total, left := res.total, res.left
	invals, failedWrites, stopped := 0, 0, 0
	for _, e := range events {
		switch e.T {
		case "i":
			invals++
		case "w":
			failedWrites++
		case "q":
			stopped++
		}
	}
	where := "PostgreSQL"
	if cfg.dbURL == "memory" {
		where = "memory"
	}
	fmt.Fprintf(w, "# aside chaos run\n\n%v, %d reader and %d writer processes, %d rows in %s, %d cores; %d faults.\n\n",
		cfg.dur, cfg.readers, cfg.writers, cfg.keys, where, runtime.NumCPU(), len(windows))
	fmt.Fprintf(w, "| window | reads | stale | max staleness | failed | loads | duplicate loads | p50 | p99 | p99.9 | behind a commit (no invalidation returned) |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	names := make([]string, 0, len(per))
	for n := range per {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		v := per[n]
		fmt.Fprintf(w, "| %s | %d | %s | %.1f ms | %s | %d | %d | %s |\n", n, v.Reads, staleCell(v), v.MaxStaleMs, failedCell(v), v.Loads, v.Duplicate, latencyCells(v))
	}
	fmt.Fprintf(w, "| **total** | %d | %s | %.1f ms | %s | %d | %d | %s |\n\n", total.Reads, staleCell(&total), total.MaxStaleMs, failedCell(&total), total.Loads, total.Duplicate, latencyCells(&total))
	fmt.Fprintf(w, "Loads at peak: %d in 100 ms.\n\n", total.PeakLoads)
	livenessTable(w, per, windows, events)
	workerTable(w, ps)
	fmt.Fprintf(w, "| fault | times | recovery — from the undo until the last read served degraded: median | max |\n|---|---|---|---|\n")
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
		fmt.Fprintf(w, "| %s | %d | %v | %v |\n", name, len(rs), ms(rs[(len(rs)-1)/2]), ms(rs[len(rs)-1]))
	}
	queued := "queued for replay"
	if cfg.outbox {
		queued = "left in the outbox to its relay"
	}
	fmt.Fprintf(w, "\nInvalidations that returned: %d; writes whose invalidation returned an error (not counted, "+queued+"): %d; cache entries left older than the source after the run: %d.\n",
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
	checkerLine(w, cfg, total, events, windows)
	fmt.Fprintf(w, "\nWorkers stopped cleanly: %d; with invalidations left in their replay queue after Close: %d.\n", stopped, res.undrained)
	fmt.Fprintf(w, "\nLiveness: reads slower than %v outside the faults slow by design (a lease holder killed or paused, a Cluster master lost): %d; waiters whose budget ran out outside those faults (a lease nobody would fill): %d.\n",
		liveBound, total.TooSlow, total.LostWaits)
	fmt.Fprintf(w, "\nDuplicate loads outside the faults that lose leases (Redis stalled, restarted or evicting, a lease holder killed or paused): %d. Loads by callers whose wait budget ran out (no lease, nothing written, by design): %d.\n", total.Unleased, total.WaitedOut)
	if !res.held() {
		fmt.Fprintln(w, "\n**FAILED**: a guarantee the README makes was broken.")
	} else {
		fmt.Fprintln(w, "\nEvery guarantee held: no stale read, no failed read, nothing left stale, no load beside a lease, no worker growing, every replay queue drained, no read past the liveness bound, no waiter on a lease nobody would fill.")
	}
}

func staleCell(v *verdict) string {
	s := fmt.Sprintf("%d%s", v.Stale, tiers(v.StaleByTier))
	if v.Excused > 0 {
		s += fmt.Sprintf(" + %d excused (Redis lost acknowledged writes)", v.Excused)
	}
	return s
}

func failedCell(v *verdict) string {
	if v.BySource > 0 {
		return fmt.Sprintf("%d + %d by the source (its loader's error)", v.Failed, v.BySource)
	}
	return strconv.Itoa(v.Failed)
}

func latencyCells(v *verdict) string {
	r := func(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
	return fmt.Sprintf("%v | %v | %v | %d, up to %.0f ms", r(v.percentile(0.5)), r(v.percentile(0.99)), r(v.percentile(0.999)), v.BehindCommit, v.MaxBehindMs)
}

// workerTable shows each worker process that lived through the run:
// goroutines and heap after warm-up and at the end.
func workerTable(w io.Writer, ps []procGrowth) {
	fmt.Fprintf(w, "| process | goroutines after warm-up → end | heap in use after warm-up → end | flat |\n|---|---|---|---|\n")
	for _, p := range ps {
		fmt.Fprintf(w, "| %d | %d → %d | %.1f → %.1f MiB | %s |\n", p.id, p.warm.Gor, p.end.Gor,
			float64(p.warm.Heap)/(1<<20), float64(p.end.Heap)/(1<<20), map[bool]string{true: "yes", false: "**no**"}[p.flat()])
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

// livenessTable shows, per window, the slowest read, the reads past the
// liveness bound, the waiters whose budget ran out, and the database's
// load: loads per second against the steady window's.
func livenessTable(w io.Writer, per map[string]*verdict, windows []window, events []event) {
	if len(events) == 0 {
		return
	}
	span := map[string]time.Duration{}
	var faulty time.Duration
	for _, win := range windows {
		d := time.Duration(win.End - win.Start)
		span[win.Name] += d
		faulty += d
	}
	span["steady"] = time.Duration(events[len(events)-1].End-events[0].End) - faulty
	rate := func(n string) float64 {
		if span[n] <= 0 {
			return 0
		}
		return float64(per[n].Loads) / span[n].Seconds()
	}
	steady := 0.0
	if per["steady"] != nil {
		steady = rate("steady")
	}
	fmt.Fprintf(w, "| window | slowest read | reads past %v | waits run out (not by design) | loads/s | × steady |\n|---|---|---|---|---|---|\n", liveBound)
	names := make([]string, 0, len(per))
	for n := range per {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		v := per[n]
		ratio := "—"
		if steady > 0 {
			ratio = fmt.Sprintf("%.1f", rate(n)/steady)
		}
		fmt.Fprintf(w, "| %s | %.0f ms | %d | %d of %d | %.0f | %s |\n", n, v.MaxMs, v.TooSlow, v.LostWaits, v.WaitedOut, rate(n), ratio)
	}
	fmt.Fprintln(w)
}

// checkerLine reports aside's own consistency checker (aside.WithCheck in
// every worker) beside this run's checker of record: the last counts of
// each worker, summed, and the inconsistencies it confirmed by cache.
func checkerLine(w io.Writer, cfg config, total verdict, events []event, windows []window) {
	last := map[int]*checkCounts{}
	byCache, byWindow := map[string]int{}, map[string]int{}
	for _, e := range events {
		switch {
		case e.T == "k" && e.Check != nil:
			last[e.Worker] = e.Check
		case e.T == "x":
			byCache[e.Cache]++
			// Confirmed up to 2 s (its last window) after what caused it:
			// counted to the latest fault that began before and had not
			// ended 3 s earlier.
			name := "steady"
			for _, win := range windows {
				if e.End >= win.Start && e.End <= win.End+int64(3*time.Second) {
					name = win.Name
				}
			}
			byWindow[name]++
		}
	}
	var sum checkCounts
	for _, k := range last {
		sum.Hits += k.Hits
		sum.HitsInconsistent += k.HitsInconsistent
		for i := range sum.Invals {
			sum.Invals[i] += k.Invals[i]
			sum.InvalsInconsistent[i] += k.InvalsInconsistent[i]
			sum.Windows[i] = max(sum.Windows[i], k.Windows[i])
		}
		sum.Loads += k.Loads
		sum.Skipped += k.Skipped
	}
	fmt.Fprintf(w, "\naside's consistency checker (aside.WithCheck in every worker: %g of hits, rechecked after 100 ms, %g of invalidations, %g loads/s per cache): "+
		"hits checked %d, inconsistent %d; invalidations checked after %v / %v / %v: %d / %d / %d, inconsistent %d / %d / %d; its loads %d, samples skipped %d. "+
		"The run's checker of record: %d stale reads of %d (%s), aside's checker %d of its %d hits (%s)",
		cfg.checkHits, cfg.checkInvals, cfg.checkBudget, sum.Hits, sum.HitsInconsistent, sum.Windows[0], sum.Windows[1], sum.Windows[2],
		sum.Invals[0], sum.Invals[1], sum.Invals[2], sum.InvalsInconsistent[0], sum.InvalsInconsistent[1], sum.InvalsInconsistent[2],
		sum.Loads, sum.Skipped, total.Stale, total.Reads, percent(total.Stale, total.Reads), sum.HitsInconsistent, sum.Hits, percent(int(sum.HitsInconsistent), int(sum.Hits)))
	if total.Excused > 0 {
		fmt.Fprintf(w, " (+ %d excused: Redis lost acknowledged writes — aside's checker counts what they leave)", total.Excused)
	}
	fmt.Fprintln(w, ".")
	for _, m := range []struct {
		what   string
		counts map[string]int
	}{{"in cache", byCache}, {"during or just after", byWindow}} {
		names := make([]string, 0, len(m.counts))
		for n := range m.counts {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(w, "- inconsistencies confirmed %s %s: %d\n", m.what, n, m.counts[n])
		}
	}
}

func percent(n, of int) string {
	if of == 0 {
		return "none checked"
	}
	return fmt.Sprintf("%.3f %%", 100*float64(n)/float64(of))
}
