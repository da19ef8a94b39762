package aside_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/asidecache/aside"
)

// A write path that forgets to invalidate: the checker reloads a sample of
// hits (here every one), and a value still served after Recheck while the
// source holds another is reported, with its key, and counted.
func ExampleWithCheck() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb, aside.WithObserver(func(e aside.Event) {
		if e.Kind == aside.EventInconsistent {
			fmt.Println("inconsistent:", e.Cache, e.Key)
		}
	}))
	defer store.Close()
	var price atomic.Int64 // the source of truth
	price.Store(999)
	loadPrice := func(ctx context.Context, key string) (int64, error) { return price.Load(), nil }
	prices, _ := aside.New[int64](store, "price", aside.WithCheck(aside.Check[int64]{
		Load: loadPrice, Hits: 1, Invalidations: 1, Recheck: 50 * time.Millisecond,
	}))
	ctx := context.Background()
	load := func(ctx context.Context) (int64, error) { return loadPrice(ctx, "42") }
	_, _ = prices.Get(ctx, "42", load) // miss: loads 999
	_ = store.Wait(ctx)
	price.Store(899) // committed without an invalidation: the bug
	p, _ := prices.Get(ctx, "42", load)
	fmt.Println("served", p)
	for deadline := time.Now().Add(5 * time.Second); prices.Stats().Check.Hits.Checked == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	h := prices.Stats().Check.Hits
	fmt.Printf("hits checked %d, inconsistent %d\n", h.Checked, h.Inconsistent)
	// Output:
	// served 999
	// inconsistent: price 42
	// hits checked 1, inconsistent 1
}

// Inspect reads an entry as stored, without loading it or counting a read.
func ExampleCache_Inspect() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb, aside.WithPrefix("shop"))
	defer store.Close()
	products, _ := aside.New[Product](store, "product")
	ctx := context.Background()
	_, _ = products.Get(ctx, "42", func(ctx context.Context) (Product, error) {
		return Product{ID: 42, Name: "Laptop", Price: 999}, nil
	}, aside.Tags("catalog"))
	_ = store.Wait(ctx) // the fill follows the answer
	_ = store.MarkTagsStale(ctx, "catalog")

	info, _ := products.Inspect(ctx, "42")
	fmt.Println(info.RedisKey, info.Found, info.Value)
	fmt.Println(info.Tags[0].Name, info.Tags[0].State, info.TTL > 0, info.Lease)
	// Output:
	// shop:product:v1:{42} true {42 Laptop 999}
	// catalog soft-stale true 0s
}
