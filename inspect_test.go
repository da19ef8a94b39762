package aside_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/asidecache/aside"
)

type inspected struct {
	Name string
	Blob string
}

// TestInspect reads entries as they are: value, flags, times, sizes, tags
// and whether each is current, TTL and a lease held, without loading.
func TestInspect(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		store, _ := b.newStore(t)
		c := newCache[inspected](t, store, aside.WithVersion(3))
		big := inspected{Name: "big", Blob: strings.Repeat("compressible ", 200)}
		load := func(v inspected) aside.Loader[inspected] {
			return func(context.Context) (inspected, error) { time.Sleep(2 * time.Millisecond); return v, nil }
		}
		before := time.Now()
		if _, err := c.Get(ctx, "big", load(big), aside.Tags("catalog", "shop")); err != nil {
			t.Fatal(err)
		}
		settled(t, store) // the fill follows the answer
		info, err := c.Inspect(ctx, "big")
		if err != nil {
			t.Fatal(err)
		}
		if !info.Found || info.Value != big || info.Version != 3 || info.Cache != "items" || info.RedisKey != aside.EntryKey(c, "big") {
			t.Fatalf("inspect: %+v", info)
		}
		if info.Format != 0xA1 || len(info.Flags) != 1 || info.Flags[0] != "s2" || info.Size >= info.PayloadSize {
			t.Errorf("flags %v, %d bytes stored of a %d-byte payload: want it compressed", info.Flags, info.Size, info.PayloadSize)
		}
		if info.Created.Before(before.Add(-time.Second)) || !info.FreshUntil.After(info.Created) || info.LoadTime < 2*time.Millisecond || info.TTL <= 0 || info.Lease != 0 {
			t.Errorf("times: created %v, fresh until %v, load %v, TTL %v, lease %v", info.Created, info.FreshUntil, info.LoadTime, info.TTL, info.Lease)
		}
		if len(info.Tags) != 2 || info.Tags[0].Name != "catalog" || info.Tags[0].State != "current" || info.Tags[1].State != "current" {
			t.Errorf("tags: %+v", info.Tags)
		}
		if err := store.MarkTagsStale(ctx, "catalog"); err != nil {
			t.Fatal(err)
		}
		if err := store.InvalidateTags(ctx, "shop"); err != nil {
			t.Fatal(err)
		}
		if info, _ = c.Inspect(ctx, "big"); info.Tags[0].State != "soft-stale" || info.Tags[1].State != "invalidated" {
			t.Errorf("tags after MarkTagsStale(catalog), InvalidateTags(shop): %+v", info.Tags)
		}

		// Store.Inspect, untyped, finds the highest version recorded.
		sinfo, err := store.Inspect(ctx, "items", "big", 0)
		if err != nil {
			t.Fatal(err)
		}
		m, ok := sinfo.Value.(map[string]any)
		if sinfo.Version != 3 || !ok || m["Name"] != "big" {
			t.Errorf("Store.Inspect: version %d, value %#v", sinfo.Version, sinfo.Value)
		}

		// Stale, negative, missing, a lease held.
		if _, err := c.Get(ctx, "small", load(inspected{Name: "small"})); err != nil {
			t.Fatal(err)
		}
		settled(t, store)
		if err := c.MarkStale(ctx, "small"); err != nil {
			t.Fatal(err)
		}
		if info, _ = c.Inspect(ctx, "small"); len(info.Flags) != 1 || info.Flags[0] != "stale" {
			t.Errorf("marked stale: flags %v", info.Flags)
		}
		if _, err := c.Get(ctx, "gone", func(context.Context) (inspected, error) { return inspected{}, aside.ErrNotFound }); !errors.Is(err, aside.ErrNotFound) {
			t.Fatal(err)
		}
		settled(t, store)
		if info, _ = c.Inspect(ctx, "gone"); !info.Found || info.Value != nil || len(info.Flags) != 1 || info.Flags[0] != "negative" {
			t.Errorf("negative: %+v", info)
		}
		if info, err = c.Inspect(ctx, "never"); err != nil || info.Found {
			t.Errorf("missing: %+v, %v", info, err)
		}
		started, release := make(chan struct{}), make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = c.Get(ctx, "slow", func(context.Context) (inspected, error) { close(started); <-release; return inspected{}, nil })
		}()
		select {
		case <-started:
		case <-time.After(waitFor):
			t.Fatal("the load did not start")
		}
		info, err = c.Inspect(ctx, "slow")
		close(release)
		<-done
		if err != nil || info.Found || info.Lease <= 0 {
			t.Errorf("a load under way: lease %v, found %v, %v", info.Lease, info.Found, err)
		}

		// Bad input.
		if _, err := c.Inspect(ctx, ""); err == nil {
			t.Error("an empty key inspected")
		}
		if _, err := store.Inspect(ctx, "no:such", "k", 0); err == nil || !strings.HasPrefix(err.Error(), "aside: ") {
			t.Errorf("a bad cache name: %v", err)
		}
		if _, err := store.Inspect(ctx, "items", "k", -1); err == nil {
			t.Error("a negative version inspected")
		}
	})
}
