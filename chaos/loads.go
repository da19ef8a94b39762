package main

import (
	"cmp"
	"math"
	"slices"

	"github.com/asidecache/aside"
)

// duplicateLoads returns the loads that began while another load of the
// same cache and key was in flight, unless a write could have revoked the
// first one's lease in between: its invalidation ran between its commit and
// its return (never, if it did not return), and it concerns the key — or,
// for the tagged cache, any key of the bucket. leasedOnly leaves out the
// loads that run without a lease by design (unleased).
func duplicateLoads(events []event, leasedOnly bool) []event {
	type ck struct {
		cache string
		key   int // for the tagged cache's writes: -1 - bucket
	}
	type span struct{ from, to int64 }
	returned := map[[3]int64]int64{} // worker, key, version → when the invalidation returned
	for _, e := range events {
		if e.T == "i" {
			returned[[3]int64{int64(e.Worker), int64(e.Key), e.V}] = e.End
		}
	}
	loads := map[ck][]event{}
	writes := map[ck][]span{}
	for _, e := range events {
		switch e.T {
		case "l":
			if !leasedOnly || !unleased(e.Tier) {
				loads[ck{e.Cache, e.Key}] = append(loads[ck{e.Cache, e.Key}], e)
			}
		case "c":
			to, ok := returned[[3]int64{int64(e.Worker), int64(e.Key), e.V}]
			if !ok {
				to = math.MaxInt64
			}
			for _, c := range []ck{{"plain", e.Key}, {"l1", e.Key}, {"swr", e.Key}, {"tagged", -1 - e.Key%buckets}} {
				writes[c] = append(writes[c], span{e.End, to})
			}
		}
	}
	var out []event
	for id, ls := range loads {
		slices.SortFunc(ls, func(a, b event) int { return cmp.Compare(a.Start, b.Start) })
		ws := writes[id]
		if id.cache == "tagged" {
			ws = writes[ck{"tagged", -1 - id.key%buckets}]
		}
		var inFlight int64 // the latest end of the loads begun so far
		var since int64    // when the load that set it began
		for _, l := range ls {
			if l.Start < inFlight && !slices.ContainsFunc(ws, func(w span) bool { return w.from <= l.Start && w.to >= since }) {
				out = append(out, l)
			}
			if l.End > inFlight {
				inFlight, since = l.End, l.Start
			}
		}
	}
	return out
}

// unleased reports whether a load of a read answered so ran without a lease
// by design: a degraded read's (Redis unusable), or a wait_timeout read's —
// a caller whose wait budget ran out before the holder filled the key loads
// by itself and writes nothing. The latter's budget (LoadTimeout, 2 s here)
// can end after the window of the fault that delayed the holder, and such
// callers of one key in several processes end theirs together: before they
// were told apart, they counted as a lease that did not hold (the likely
// cause of 2 in a CI rehearsal's steady window; 3–6 per run since).
func unleased(tier string) bool {
	return tier == aside.OutcomeDegraded.String() || tier == aside.OutcomeWaitTimeout.String()
}
