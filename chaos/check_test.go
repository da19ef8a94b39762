package main

import (
	"context"
	"errors"
	"testing"

	"github.com/asidecache/aside"
)

// TestCheckerFindsStaleReads: the checker counts a read as stale only when
// it began after an invalidation of its key had returned and got an older
// version — and attributes it to its tier and fault window.
func TestCheckerFindsStaleReads(t *testing.T) {
	events := []event{
		{T: "i", Key: 1, End: 100, V: 2},                                      // version 2 committed, invalidation returned at 100
		{T: "r", Key: 1, Start: 90, End: 120, V: 1, Tier: "hit"},              // began before it returned: allowed
		{T: "r", Key: 1, Start: 110, End: 130, V: 1, Tier: "l1_hit"},          // began after: stale
		{T: "r", Key: 1, Start: 140, End: 150, V: 2, Tier: "hit"},             // fresh
		{T: "r", Key: 2, Start: 140, End: 150, V: 1, Tier: "hit"},             // another key, never invalidated
		{T: "r", Key: 1, Start: 200, End: 210, Err: "boom", Tier: "none"},     // failed
		{T: "l", Key: 1, Start: 112, End: 118},                                // a load
		{T: "r", Key: 1, Start: 300, End: 305, V: 1, Tier: "hit", Cache: "x"}, // stale, inside the fault window
	}
	windows := []window{{Name: "fault", Start: 250, End: 350}}
	total, per := check(events, windows)
	if total.Reads != 6 || total.Stale != 2 || total.Failed != 1 || total.Loads != 1 {
		t.Fatalf("total = %+v, want 6 reads, 2 stale, 1 failed, 1 load", total)
	}
	if total.StaleByTier["l1_hit"] != 1 || total.StaleByTier["hit"] != 1 {
		t.Errorf("stale by tier = %v", total.StaleByTier)
	}
	if per["fault"] == nil || per["fault"].Stale != 1 || per["steady"].Stale != 1 {
		t.Errorf("per window = fault %+v, steady %+v", per["fault"], per["steady"])
	}
	if total.MaxStaleMs != float64(305-100)/1e6 {
		t.Errorf("max staleness = %v ms", total.MaxStaleMs)
	}
}

// TestCheckerFailedInvalidations: an invalidation that failed counts from
// the return of the same worker's next one (a Store's invalidations take
// effect in order), and a stale read in an excusing window is counted apart.
func TestCheckerFailedInvalidations(t *testing.T) {
	events := []event{
		{T: "w", Worker: 7, Key: 1, End: 100, V: 2},               // failed: queued
		{T: "r", Key: 1, Start: 150, End: 160, V: 1},              // before the next return: allowed
		{T: "i", Worker: 8, Key: 9, End: 190, V: 5},               // another worker's: says nothing
		{T: "r", Key: 1, Start: 195, End: 196, V: 1},              // allowed still
		{T: "i", Worker: 7, Key: 3, End: 200, V: 4},               // worker 7's next one returned
		{T: "r", Key: 1, Start: 210, End: 220, V: 1, Tier: "hit"}, // stale
		{T: "r", Key: 1, Start: 310, End: 320, V: 1, Tier: "hit"}, // stale, but Redis lost writes here
	}
	total, _ := check(events, []window{{Name: "old snapshot", Start: 300, End: 400, Excused: true}})
	if total.Stale != 1 || total.Excused != 1 {
		t.Fatalf("stale %d, excused %d; want 1 and 1", total.Stale, total.Excused)
	}
}

// TestCheckerDuplicateLoads: two loads of one key of one cache in flight at
// once are a duplicate unless a write of the key (of its bucket, for the
// tagged cache) may have revoked the first one's lease between their starts
// — from its commit until its invalidation returned — and outside windows
// where Redis itself failed they break the run.
func TestCheckerDuplicateLoads(t *testing.T) {
	events := []event{
		{T: "l", Cache: "plain", Key: 1, Start: 100, End: 200},
		{T: "l", Cache: "plain", Key: 1, Start: 150, End: 160}, // duplicate
		{T: "l", Cache: "l1", Key: 1, Start: 150, End: 160},    // another cache
		{T: "c", Worker: 3, Key: 2, End: 300, V: 2},            // a write of key 2, returned at 320
		{T: "i", Worker: 3, Key: 2, End: 320, V: 2},
		{T: "l", Cache: "plain", Key: 2, Start: 290, End: 400},
		{T: "l", Cache: "plain", Key: 2, Start: 310, End: 320},                   // after the commit: the lease may be revoked
		{T: "l", Cache: "tagged", Key: 2 + buckets, Start: 100, End: 400},        // same bucket as key 2
		{T: "l", Cache: "tagged", Key: 2 + buckets, Start: 150, End: 160},        // before the write: duplicate
		{T: "l", Cache: "tagged", Key: 2 + buckets, Start: 330, End: 340},        // after it: the bucket's tag changed
		{T: "l", Cache: "tagged", Key: 3 + 2*buckets, Start: 5000, End: 5100},    // another bucket
		{T: "l", Cache: "tagged", Key: 3 + 2*buckets, Start: 5050, End: 5060},    // duplicate, in a window where Redis failed
		{T: "l", Cache: "swr", Key: 4, Start: 7000, End: 7100, Tier: "degraded"}, // without a lease, by design
		{T: "l", Cache: "swr", Key: 4, Start: 7050, End: 7060},                   // a duplicate, but beside no lease
		// Two callers whose wait budgets ran out together, each loading by
		// itself: by design, counted apart (WaitedOut), not as a lease broken.
		{T: "l", Cache: "plain", Key: 5, Start: 8000, End: 8100, Tier: "wait_timeout"},
		{T: "l", Cache: "plain", Key: 5, Start: 8050, End: 8060, Tier: "wait_timeout"},
	}
	total, _ := check(events, []window{{Name: "stall", Start: 5000, End: 6000, MayOverlap: true}})
	if total.Duplicate != 5 || total.Unleased != 2 || total.WaitedOut != 2 {
		t.Fatalf("duplicates %d (want 5), beside a lease outside Redis faults %d (want 2), after a wait budget ran out %d (want 2)",
			total.Duplicate, total.Unleased, total.WaitedOut)
	}
}

// TestMemoryTable: -db memory's table answers loads, batches and bumps as
// the PostgreSQL one does — a missing row is not found, a bump is atomic.
func TestMemoryTable(t *testing.T) {
	table, addr, err := serveMemTable(3)
	if err != nil {
		t.Fatal(err)
	}
	defer table.close()
	ctx := context.Background()
	src, _ := openSource(ctx, addr, "")
	defer src.close()
	if v, err := src.bump(ctx, 1); err != nil || v != 2 {
		t.Fatalf("bump = %d, %v; want 2", v, err)
	}
	if _, err := src.bump(ctx, 7); err == nil {
		t.Error("bump of a missing row succeeded")
	}
	if r, err := src.load(ctx, 1); err != nil || r.Version != 2 {
		t.Errorf("load = %+v, %v", r, err)
	}
	if _, err := src.load(ctx, 9); !errors.Is(err, aside.ErrNotFound) {
		t.Errorf("load of a missing row: %v, want ErrNotFound", err)
	}
	if m, err := src.loadMany(ctx, []int{0, 1, 9}); err != nil || len(m) != 2 || m[1].Version != 2 {
		t.Errorf("loadMany = %v, %v", m, err)
	}
	if vs, err := src.versions(ctx); err != nil || len(vs) != 3 || vs[1] != 2 || vs[0] != 1 {
		t.Errorf("versions = %v, %v", vs, err)
	}
}

// TestCheckerRecovery: a fault's recovery ends with the last degraded read
// (Redis unusable to its Store) of a worker that was reading before the
// undo, up to the next fault; a worker started since does not count.
func TestCheckerRecovery(t *testing.T) {
	events := []event{
		{T: "r", Worker: 1, Start: 10, End: 20, Tier: "hit"},
		{T: "r", Worker: 2, Start: 10, End: 20, Tier: "degraded"},
		{T: "r", Worker: 1, Start: 101, End: 105, Tier: "l1_hit"},
		{T: "r", Worker: 2, Start: 101, End: 110, Tier: "degraded"},
		{T: "r", Worker: 2, Start: 111, End: 115, Tier: "hit"},
		{T: "r", Worker: 1, Start: 120, End: 130, Tier: "degraded"}, // the last one: 30 after the undo at 100
		{T: "r", Worker: 1, Start: 140, End: 150, Tier: "loaded"},
		{T: "r", Worker: 3, Start: 150, End: 160, Tier: "degraded"}, // started since
		{T: "r", Worker: 2, Start: 190, End: 220, Tier: "degraded"}, // over after the next fault began: its
		{T: "r", Worker: 2, Start: 210, End: 220, Tier: "degraded"}, // the next fault's
	}
	ws := []window{{Start: 50, Undone: 100}, {Start: 200, Undone: 205}}
	recoveries(events, ws)
	if ws[0].Recovery != 30 || ws[1].Recovery != 15 {
		t.Errorf("recoveries = %d, %d; want 30, 15", ws[0].Recovery, ws[1].Recovery)
	}
}

// TestCheckerUndrained: a worker stopped cleanly must have replayed its
// queue on Close — none left, and no error.
func TestCheckerUndrained(t *testing.T) {
	if n := undrained([]event{{T: "q"}, {T: "q", V: 2}, {T: "q", Err: "aside: unavailable"}, {T: "i", V: 3}}); n != 2 {
		t.Errorf("undrained = %d, want 2", n)
	}
}

// TestCheckerFailedBySource: a failed read whose own worker's load of the
// same key failed while it ran has its loader's error — counted apart; any
// other failed read breaks the run.
func TestCheckerFailedBySource(t *testing.T) {
	events := []event{
		{T: "l", Worker: 1, Cache: "tagged", Key: 5, Start: 100, End: 300, Err: "context deadline exceeded"},
		{T: "r", Worker: 1, Cache: "tagged", Key: 5, Start: 150, End: 310, Err: "aside: load: context deadline exceeded"}, // a joiner: by the source
		{T: "r", Worker: 2, Cache: "tagged", Key: 5, Start: 150, End: 310, Err: "aside: redis unavailable"},               // another worker: failed
		{T: "l", Worker: 1, Cache: "plain", Key: 6, Start: 100, End: 120, Err: "boom"},
		{T: "r", Worker: 1, Cache: "batch", Key: 6, Start: 90, End: 130, Err: "aside: batch: boom"}, // the batch's loader: by the source
	}
	total, _ := check(events, nil)
	if total.BySource != 2 || total.Failed != 1 {
		t.Errorf("by the source %d (want 2), failed %d (want 1)", total.BySource, total.Failed)
	}
}
