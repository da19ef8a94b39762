package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"os"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/asidecache/aside"
)

// window is a fault's time span: from its injection until it was undone.
type window struct {
	Name       string
	Start, End int64
	Undone     int64 // when it was undone
	Recovery   int64 // ns from the undo until every worker had a read answered through Redis again
	Excused    bool  // Redis lost acknowledged writes: stale reads in it are what no cache could prevent
	MayOverlap bool  // Redis failed, or a lease holder died or paused: loads may overlap
	Slow       bool  // reads may outlast liveBound by design (see fault.slow)
}

// liveBound is the longest a read may take outside the faults that are
// slow by design: the longer of what a read waits for Redis — an op
// timeout and the stall tolerance: 500 ms with the workers' settings — and
// what it waits on a lease whose holder fell silent (cut off, or stopped
// with Redis) — the lease's life, 1 s, as it is not renewed — and 500 ms
// for its own load on a loaded machine.
const liveBound = 1500 * time.Millisecond

// verdict is what the checker found in one span of time.
type verdict struct {
	Reads, Stale, Failed, Loads int
	// BySource counts the failed reads whose error was their loader's: the
	// source failed or did not answer within LoadTimeout. Reported, not a
	// broken guarantee: aside returns what the loader returns.
	BySource    int
	MaxStaleMs  float64
	StaleByTier map[string]int
	// Duplicate counts loads that began while another load of the same
	// key of the same cache was in flight, with no write of the key (or of
	// its tag, for the tagged cache) between their starts: what a lease
	// prevents across processes. PeakLoads is the most loads that began in
	// one 100 ms (the source's load at peak).
	Duplicate, PeakLoads int
	// Unleased counts the duplicates among loads that were not degraded
	// (their Store could use Redis, so each held a lease), outside every
	// window in which Redis failed or a lease holder died or paused: each
	// is a lease that did not hold.
	Unleased int
	// WaitedOut counts the loads of callers whose wait budget ran out before
	// the lease's holder filled the key: without a lease by design, so
	// reported, not a failure (they are not in Unleased).
	WaitedOut int
	// LostWaits counts, among WaitedOut, those outside the faults that make
	// a lease's holder die or pause: a waiter on a lease that nobody would
	// fill (a holder that had finished, or could not reach Redis). A
	// liveness failure.
	LostWaits int
	// TooSlow counts reads that took longer than liveBound, outside the
	// faults that are slow by design: a liveness failure. MaxMs is the
	// slowest read.
	TooSlow int
	MaxMs   float64
	// Excused counts stale reads that began in a window where Redis itself
	// lost acknowledged writes (restored from an older snapshot).
	Excused int
	// BehindCommit counts reads that got a version older than one committed
	// at least a millisecond before they began, whose invalidation had not
	// returned (a writer killed between the two, or still on its way):
	// what only a durable invalidation could close. Reported, not a failure.
	BehindCommit int
	MaxBehindMs  float64
	latencies    []int64 // ns, of the reads that began in this span
}

// percentile returns the p-th percentile of v's read latencies.
func (v *verdict) percentile(p float64) time.Duration {
	if len(v.latencies) == 0 {
		return 0
	}
	slices.Sort(v.latencies)
	return time.Duration(v.latencies[min(len(v.latencies)-1, int(p*float64(len(v.latencies))))])
}

// check finds, for every read, the newest invalidation of its key that had
// returned before the read began; a read that got an older version is
// stale. Each read is counted in the window it began in ("steady" outside
// them); a failed read is one that returned an error to its caller.
func check(events []event, windows []window) (total verdict, per map[string]*verdict) {
	invals := map[int][]event{}  // by key, by return time
	commits := map[int][]event{} // by key, by commit time
	for _, e := range events {
		switch e.T {
		case "i":
			invals[e.Key] = append(invals[e.Key], e)
		case "c":
			commits[e.Key] = append(commits[e.Key], e)
		}
	}
	// An invalidation that failed has taken effect once a later one of the
	// same Store returned: a Store's invalidations take effect in order.
	for _, e := range replayedBy(events) {
		invals[e.Key] = append(invals[e.Key], e)
	}
	for _, m := range []map[int][]event{invals, commits} {
		for k, list := range m {
			sort.Slice(list, func(i, j int) bool { return list[i].End < list[j].End })
			// Each entry's V becomes the newest version up to it, and Start
			// when that version's event happened: one search per read.
			for i := range list {
				list[i].Start = list[i].End
				if i > 0 && list[i-1].V >= list[i].V {
					list[i].V, list[i].Start = list[i-1].V, list[i-1].Start
				}
			}
			m[k] = list
		}
	}
	per = map[string]*verdict{}
	// An event counts to the latest fault whose window it began in; any
	// window that holds it may excuse it.
	at := func(t int64) (v *verdict, in window) {
		name := "steady"
		for _, w := range windows {
			if t >= w.Start && t <= w.End {
				name = w.Name
				in.Excused = in.Excused || w.Excused
				in.MayOverlap = in.MayOverlap || w.MayOverlap
			}
			// A read or load that began before a slow fault and was still
			// running in it is slow by the fault too.
			if t <= w.End+int64(liveBound) && t >= w.Start-int64(liveBound) {
				in.Slow = in.Slow || w.Slow
			}
		}
		if per[name] == nil {
			per[name] = &verdict{StaleByTier: map[string]int{}}
		}
		return per[name], in
	}
	total.StaleByTier = map[string]int{}
	// The loads that failed, by worker, cache and key: a read that failed
	// while one of them ran has its loader's error.
	failedLoads := map[[2]string][]event{}
	for _, e := range events {
		if e.T == "l" && e.Err != "" {
			k := [2]string{strconv.Itoa(e.Worker), e.Cache + ":" + strconv.Itoa(e.Key)}
			failedLoads[k] = append(failedLoads[k], e)
		}
	}
	failedLoad := func(r event) bool {
		cache := r.Cache
		if cache == "batch" {
			cache = "plain"
		}
		// A load that overlapped the read: aside answers a load past its
		// LoadTimeout when the timeout fires, and the loader's own end (the
		// event's) can come a moment after the read's on a loaded machine.
		return slices.ContainsFunc(failedLoads[[2]string{strconv.Itoa(r.Worker), cache + ":" + strconv.Itoa(r.Key)}],
			func(l event) bool { return l.End >= r.Start && l.Start <= r.End })
	}
	for _, e := range duplicateLoads(events, false) {
		v, _ := at(e.Start)
		v.Duplicate++
		total.Duplicate++
	}
	for _, e := range duplicateLoads(events, true) {
		if v, in := at(e.Start); !in.MayOverlap {
			v.Unleased++
			total.Unleased++
		}
	}
	// A worker's first second is its start-up (connections dialed, scripts
	// loaded, eight processes starting on a few cores): not held to
	// liveBound.
	born := map[int]int64{}
	for _, e := range events {
		if e.T == "r" && (born[e.Worker] == 0 || e.Start < born[e.Worker]) {
			born[e.Worker] = e.Start
		}
	}
	perTick := map[int64]int{}
	for _, e := range events {
		if e.T == "l" {
			perTick[e.Start/int64(100*time.Millisecond)]++
		}
	}
	for _, n := range perTick {
		total.PeakLoads = max(total.PeakLoads, n)
	}
	for _, e := range events {
		switch e.T {
		case "l":
			v, _ := at(e.Start)
			v.Loads++
			total.Loads++
			if e.Tier == aside.OutcomeWaitTimeout.String() {
				v.WaitedOut++
				total.WaitedOut++
				if _, in := at(e.Start); !in.Slow {
					v.LostWaits++
					total.LostWaits++
				}
			}
		case "r":
			v, in := at(e.Start)
			v.Reads++
			total.Reads++
			v.latencies = append(v.latencies, e.End-e.Start)
			total.latencies = append(total.latencies, e.End-e.Start)
			ms := float64(e.End-e.Start) / 1e6
			v.MaxMs, total.MaxMs = max(v.MaxMs, ms), max(total.MaxMs, ms)
			if e.End-e.Start > int64(liveBound) && !in.Slow && e.Start > born[e.Worker]+int64(time.Second) {
				v.TooSlow++
				total.TooSlow++
			}
			if e.Err != "" && failedLoad(e) {
				v.BySource++
				total.BySource++
				continue
			}
			if e.Err != "" {
				v.Failed++
				total.Failed++
				continue
			}
			if e.V == 0 {
				continue // a batch key the source lacks: nothing to compare
			}
			list := invals[e.Key]
			i := sort.Search(len(list), func(i int) bool { return list[i].End >= e.Start }) // invalidations returned before the read began: list[:i]
			var floor, since int64
			if i > 0 {
				floor, since = list[i-1].V, list[i-1].Start
			}
			if cs := commits[e.Key]; len(cs) > 0 {
				j := sort.Search(len(cs), func(j int) bool { return cs[j].End >= e.Start-int64(time.Millisecond) })
				var newest, at int64
				if j > 0 {
					newest, at = cs[j-1].V, cs[j-1].Start
				}
				if e.V < newest && e.V >= floor {
					ms := float64(e.End-at) / 1e6
					for _, x := range []*verdict{v, &total} {
						x.BehindCommit++
						x.MaxBehindMs = max(x.MaxBehindMs, ms)
					}
				}
			}
			if e.V < floor && in.Excused {
				v.Excused++
				total.Excused++
			} else if e.V < floor {
				ms := float64(e.End-since) / 1e6
				for _, x := range []*verdict{v, &total} {
					x.Stale++
					x.StaleByTier[e.Tier]++
					x.MaxStaleMs = max(x.MaxStaleMs, ms)
				}
			}
		}
	}
	return total, per
}

// replayedBy returns, for each invalidation that failed ("w"), one that
// takes effect when the next invalidation of the same worker returned; none
// for those no later one followed (the worker died, or the run ended: the
// entries left stale at the end tell).
func replayedBy(events []event) []event {
	returned := map[int][]int64{} // by worker: return times, in order
	for _, e := range events {
		if e.T == "i" {
			returned[e.Worker] = append(returned[e.Worker], e.End)
		}
	}
	var out []event
	for _, e := range events {
		if e.T != "w" {
			continue
		}
		ts := returned[e.Worker] // events are in End order
		if i := sort.Search(len(ts), func(i int) bool { return ts[i] > e.End }); i < len(ts) {
			out = append(out, event{T: "i", Worker: e.Worker, Key: e.Key, End: ts[i], V: e.V})
		}
	}
	return out
}

// readEvents reads the JSON lines of every worker file; a torn last line
// (a worker killed mid-write) is skipped.
func readEvents(paths []string) ([]event, error) {
	var out []event
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				out = append(out, e)
			}
		}
		f.Close()
	}
	slices.SortFunc(out, func(a, b event) int { return cmp.Compare(a.End, b.End) })
	return out, nil
}
