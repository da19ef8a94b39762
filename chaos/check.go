package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"os"
	"slices"
	"sort"
	"time"
)

// window is a fault's time span: from its injection until it was undone.
type window struct {
	Name       string
	Start, End int64
	Recovery   int64 // ns from undoing it until the next successful Redis read (0: not measured)
}

// verdict is what the checker found in one span of time.
type verdict struct {
	Reads, Stale, Failed, Loads int
	MaxStaleMs                  float64
	StaleByTier                 map[string]int
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
	at := func(t int64) *verdict {
		name := "steady"
		for _, w := range windows {
			if t >= w.Start && t <= w.End {
				name = w.Name
				break
			}
		}
		if per[name] == nil {
			per[name] = &verdict{StaleByTier: map[string]int{}}
		}
		return per[name]
	}
	total.StaleByTier = map[string]int{}
	for _, e := range events {
		switch e.T {
		case "l":
			at(e.Start).Loads++
			total.Loads++
		case "r":
			v := at(e.Start)
			v.Reads++
			total.Reads++
			v.latencies = append(v.latencies, e.End-e.Start)
			total.latencies = append(total.latencies, e.End-e.Start)
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
			if e.V < floor {
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
