package aside_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

type Product struct {
	ID    int
	Name  string
	Price int
}

// exampleClient starts an in-process Redis so that the examples run without
// a server. The client sets its timeouts explicitly, as aside requires.
func exampleClient() (*redis.Client, func()) {
	srv, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), DisableIdentity: true, ContextTimeoutEnabled: true})
	return rdb, func() { _ = rdb.Close(); srv.Close() }
}

func ExampleCache_Get() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb, aside.WithPrefix("shop"))
	products, _ := aside.New[Product](store, "product", aside.WithVersion(3), aside.WithProfile(aside.Master))

	loads := 0
	loadProduct := func(ctx context.Context) (Product, error) {
		loads++ // the slow repository call
		return Product{ID: 42, Name: "Laptop", Price: 999}, nil
	}
	ctx := context.Background()
	p, err := products.Get(ctx, aside.Key("42", "en"), loadProduct) // miss: loads and stores
	fmt.Println(p.Name, err)
	p, err = products.Get(ctx, aside.Key("42", "en"), loadProduct) // hit: one HGET
	fmt.Println(p.Name, err, "loads:", loads)
	// Output:
	// Laptop <nil>
	// Laptop <nil> loads: 1
}

func ExampleCache_Invalidate() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb)
	prices, _ := aside.New[int](store, "price")
	ctx := context.Background()

	db := 100
	load := func(context.Context) (int, error) { return db, nil }
	v, _ := prices.Get(ctx, "sku-1", load)
	fmt.Println(v)

	db = 80                             // the source of truth commits first...
	_ = prices.Invalidate(ctx, "sku-1") // ...then the cache forgets
	v, _ = prices.Get(ctx, "sku-1", load)
	fmt.Println(v)
	// Output:
	// 100
	// 80
}

func ExampleWithProfiles() {
	rdb, done := exampleClient()
	defer done()
	inventory := aside.Profile{
		Name:          "inventory",
		TTL:           10 * time.Second,
		Jitter:        2 * time.Second,
		LoadTimeout:   500 * time.Millisecond,
		MaxEntryBytes: 64 << 10,
	}
	store, err := aside.NewStore(rdb, aside.WithProfiles(inventory))
	fmt.Println(err)
	_, err = aside.New[int](store, "stock", aside.WithProfile("inventory"))
	fmt.Println(err)
	_, err = aside.NewStore(rdb, aside.WithProfiles(aside.Profile{Name: "broken", LoadTimeout: time.Second}))
	fmt.Println(err)
	// Output:
	// <nil>
	// <nil>
	// aside: profile "broken": TTL must be > 0, got 0s
}

func ExampleKey() {
	fmt.Println(aside.Key("42", "en"))
	fmt.Println(aside.Key("a:b"), aside.Key("a", "b")) // never the same key
	// Output:
	// 42:en
	// a%3Ab a:b
}

func ExampleCache_Stats() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb)
	c, _ := aside.New[string](store, "greeting")
	ctx := context.Background()
	hello := func(context.Context) (string, error) { return "hello", nil }
	for range 3 {
		_, _ = c.Get(ctx, "en", hello)
	}
	_, err := c.Get(ctx, "xx", func(context.Context) (string, error) { return "", errors.New("no such language") })
	s := c.Stats()
	fmt.Println(err)
	fmt.Printf("hits=%d misses=%d loads=%d load errors=%d\n", s.Hits, s.Misses, s.Loads, s.LoadErrors)
	// Output:
	// no such language
	// hits=2 misses=2 loads=1 load errors=1
}
