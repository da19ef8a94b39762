package main

import "testing"

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
