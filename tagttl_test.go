package aside_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidetest"
)

// Tag keys live as long as an entry may depend on them: a tag per customer
// leaves no key behind once the entries that recorded it are gone.

var tagLifeProfile = aside.Profile{Name: "orders", TTL: time.Minute, LoadTimeout: time.Second, NegativeTTL: 10 * time.Second}

// tagKeys counts the tag keys in fake's Redis.
func tagKeys(t *testing.T, fake *asidetest.Redis) int {
	keys, err := fake.Client().Keys(bgCtx, "aside:#tag:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	return len(keys)
}

// TestTagKeysDoNotOutliveTheirEntries: 300 customers, each with an order
// tagged by its customer (a value, or a cached not-found), and 100 tags
// invalidated that nothing recorded. Once the longest entry's life has
// passed, no tag key is left. Broken variant: tag keys made without a life
// (as before): 300 stay for ever.
func TestTagKeysDoNotOutliveTheirEntries(t *testing.T) {
	expectBroken(t, "no tag key outlives the entries that recorded it", func(broken bool) bool {
		store, fake := asidetest.New(t, aside.WithProfiles(tagLifeProfile))
		aside.SetStoreHooks(store, &aside.TestHooks{PersistentTags: broken})
		c, err := aside.New[string](store, "order", aside.WithProfile("orders"))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 300 {
			customer := "c" + strconv.Itoa(i)
			load := func(context.Context) (string, error) { return "o", nil }
			if i%3 == 0 {
				load = asidetest.Failing[string](aside.ErrNotFound)
			}
			if _, err := c.Get(bgCtx, "o"+strconv.Itoa(i), load, aside.Tags("customer:"+customer)); err != nil && i%3 != 0 {
				t.Fatal(err)
			}
		}
		for i := range 100 {
			if err := store.InvalidateTags(bgCtx, "nobody:"+strconv.Itoa(i)); err != nil {
				t.Fatal(err)
			}
		}
		if n := tagKeys(t, fake); n != 300 {
			t.Fatalf("%d tag keys after 300 tagged loads and 100 invalidations of unused tags, want 300", n)
		}
		fake.Advance(tagLifeProfile.TTL + tagLifeProfile.LoadTimeout + 2*time.Second)
		n := tagKeys(t, fake)
		t.Logf("broken=%v: %d tag keys left", broken, n)
		return n == 0
	})
}

// TestTagKeyLivesAsLongAsItsLastEntry: order A of customer c is loaded at
// 0 s, order B at 50 s; at 80 s A has expired and B is still fresh: B is a
// hit, because B's fill extended the customer's tag key to B's life.
// Broken variant: fills do not extend tag keys; the key made for A expires
// with A and B is reloaded.
func TestTagKeyLivesAsLongAsItsLastEntry(t *testing.T) {
	expectBroken(t, "a later entry extends its tag key", func(broken bool) bool {
		store, fake := asidetest.New(t, aside.WithProfiles(tagLifeProfile))
		aside.SetStoreHooks(store, &aside.TestHooks{NoTagExtension: broken})
		c, err := aside.New[string](store, "order", aside.WithProfile("orders"))
		if err != nil {
			t.Fatal(err)
		}
		var loads asidetest.Counter
		load := asidetest.Counting(&loads, func(context.Context) (string, error) { return "o", nil })
		get := func(key string) {
			if _, err := c.Get(bgCtx, key, load, aside.Tags("customer:c")); err != nil {
				t.Fatal(err)
			}
		}
		get("A")
		fake.Advance(50 * time.Second)
		get("B")
		fake.Advance(30 * time.Second)
		get("B")
		t.Logf("broken=%v: %d loads", broken, loads.Calls())
		return loads.Calls() == 2
	})
}
