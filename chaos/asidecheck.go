package main

import (
	"context"
	"strconv"
	"time"

	"github.com/asidecache/aside"
)

// aside's own consistency checker in every worker (aside.WithCheck): its
// settings, and its counts as the worker records them ("k" events) for the
// report to set beside the run's checker of record.

// checkWith is the consistency checker every worker runs (aside.WithCheck).
// Its windows and recheck are shorter than the defaults (1 s, 10 s, 60 s;
// 1 s): rows here change every few hundred milliseconds, and a stale entry
// the next write replaces within a second would never be seen a second
// later. The run's TTL is 3 s.
func checkWith(src source, cfg config) aside.Option {
	return aside.WithCheck(aside.Check[row]{
		Load: func(ctx context.Context, key string) (row, error) {
			id, err := strconv.Atoi(key)
			if err != nil {
				return row{}, err
			}
			return src.load(ctx, id)
		},
		Hits: cfg.checkHits, Invalidations: cfg.checkInvals, LoadsPerSecond: cfg.checkBudget,
		Windows: [3]time.Duration{100 * time.Millisecond, time.Second, 2 * time.Second}, Recheck: 100 * time.Millisecond,
	})
}

// checkCounts sums aside.CheckStats over a worker's caches.
type checkCounts struct {
	Hits, HitsInconsistent     int64
	Invals, InvalsInconsistent [3]int64
	Loads, Skipped             int64
	Windows                    [3]time.Duration
}

// checkerCounts reads the checker's counts of every cache.
func (c *caches) checkerCounts() *checkCounts {
	var k checkCounts
	for _, cache := range []*aside.Cache[row]{c.plain, c.tagged, c.l1, c.stale} {
		s := cache.Stats().Check
		k.Hits += int64(s.Hits.Checked)
		k.HitsInconsistent += int64(s.Hits.Inconsistent)
		for i, w := range s.Invalidations {
			k.Invals[i] += int64(w.Checked)
			k.InvalsInconsistent[i] += int64(w.Inconsistent)
			k.Windows[i] = w.Window
		}
		k.Loads += int64(s.Loads)
		k.Skipped += int64(s.Skipped)
	}
	return &k
}
