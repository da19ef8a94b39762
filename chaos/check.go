package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"os"
	"slices"
	"sort"
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
}

// check finds, for every read, the newest invalidation of its key that had
// returned before the read began; a read that got an older version is
// stale. Each read is counted in the window it began in ("steady" outside
// them); a failed read is one that returned an error to its caller.
func check(events []event, windows []window) (total verdict, per map[string]*verdict) {
	invals := map[int][]event{} // by key, by return time
	for _, e := range events {
		if e.T == "i" {
			invals[e.Key] = append(invals[e.Key], e)
		}
	}
	for _, list := range invals {
		sort.Slice(list, func(i, j int) bool { return list[i].End < list[j].End })
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
			var floor int64
			var since int64
			for _, inv := range list[:i] {
				if inv.V > floor {
					floor, since = inv.V, inv.End
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
