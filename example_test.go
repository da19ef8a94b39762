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
	defer store.Close()
	products, _ := aside.New[Product](store, "product", aside.WithVersion(3), aside.WithProfile(aside.Master))

	loads := 0
	loadProduct := func(ctx context.Context) (Product, error) {
		loads++ // the slow repository call
		return Product{ID: 42, Name: "Laptop", Price: 999}, nil
	}
	ctx := context.Background()
	p, err := products.Get(ctx, aside.Key("42", "en"), loadProduct) // miss: loads and stores
	fmt.Println(p.Name, err)
	p, err = products.Get(ctx, aside.Key("42", "en"), loadProduct) // hit: one GET
	fmt.Println(p.Name, err, "loads:", loads)
	// Output:
	// Laptop <nil>
	// Laptop <nil> loads: 1
}

func ExampleCache_Invalidate() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb)
	defer store.Close()
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
	// a~3Ab a:b
}

func ExampleCache_Stats() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb)
	defer store.Close()
	c, _ := aside.New[string](store, "greeting")
	ctx := context.Background()
	hello := func(context.Context) (string, error) { return "hello", nil }
	_, _ = c.Get(ctx, "en", hello) // a miss: loaded, returned, and stored a round trip later
	_ = store.Wait(ctx)            // the fill has landed (only a test or tool needs to know)
	for range 2 {
		_, _ = c.Get(ctx, "en", hello) // hits
	}
	_, err := c.Get(ctx, "xx", func(context.Context) (string, error) { return "", errors.New("no such language") })
	s := c.Stats()
	fmt.Println(err)
	fmt.Printf("hits=%d misses=%d loads=%d load errors=%d\n", s.Hits, s.Misses, s.Loads, s.LoadErrors)
	// Output:
	// no such language
	// hits=2 misses=2 loads=1 load errors=1
}

func ExampleCache_GetMany() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb)
	defer store.Close()
	products, _ := aside.New[Product](store, "product")
	ctx := context.Background()

	// One call to the source for every miss; ids it does not return do not exist.
	loadProducts := func(_ context.Context, ids []string) (map[string]Product, error) {
		fmt.Println("loading", ids)
		out := map[string]Product{}
		for _, id := range ids {
			if id != "404" {
				out[id] = Product{Name: "Product " + id}
			}
		}
		return out, nil
	}
	_, _ = products.GetMany(ctx, []string{"1", "2"}, loadProducts)
	got, err := products.GetMany(ctx, []string{"1", "2", "3", "404"}, loadProducts)
	fmt.Println(len(got), got["3"].Name, err)
	// Output:
	// loading [1 2]
	// loading [3 404]
	// 3 Product 3 <nil>
}

func ExampleStore_InvalidateTags() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb)
	defer store.Close()
	details, _ := aside.New[string](store, "detail")
	listings, _ := aside.New[[]string](store, "listing")
	ctx := context.Background()
	laptops := aside.Tags("category:laptops")

	name := "Laptop"
	_, _ = details.Get(ctx, "42", func(context.Context) (string, error) { return name, nil }, laptops)
	_, _ = listings.Get(ctx, "laptops/page1", func(context.Context) ([]string, error) { return []string{name}, nil }, laptops)

	name = "Laptop Pro"                               // the catalogue changes...
	_ = store.InvalidateTags(ctx, "category:laptops") // ...one command drops every view of it

	d, _ := details.Get(ctx, "42", func(context.Context) (string, error) { return name, nil }, laptops)
	l, _ := listings.Get(ctx, "laptops/page1", func(context.Context) ([]string, error) { return []string{name}, nil }, laptops)
	fmt.Println(d, l)
	// Output: Laptop Pro [Laptop Pro]
}

func ExampleErrNotFound() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb) // the Default profile remembers "not found" for 30 s
	defer store.Close()
	users, _ := aside.New[string](store, "user")
	ctx := context.Background()

	lookups := 0
	findUser := func(context.Context) (string, error) {
		lookups++
		return "", fmt.Errorf("user 7: %w", aside.ErrNotFound)
	}
	for range 3 {
		_, err := users.Get(ctx, "7", findUser)
		fmt.Println(errors.Is(err, aside.ErrNotFound))
	}
	fmt.Println("lookups:", lookups)
	// Output:
	// true
	// true
	// true
	// lookups: 1
}

func ExampleStore_Write() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb)
	defer store.Close()
	prices, _ := aside.New[int](store, "price")
	ctx := context.Background()

	db := map[string]int{"sku-1": 100}
	load := func(context.Context) (int, error) { return db["sku-1"], nil }
	v, _ := prices.Get(ctx, "sku-1", load)
	fmt.Println(v)

	// The write first, then the invalidations: the order that keeps the cache right.
	err := store.Write(ctx, func(context.Context) error {
		db["sku-1"] = 80
		return nil
	}, prices.Changed("sku-1"), store.TagsChanged("price-list"))
	v, _ = prices.Get(ctx, "sku-1", load)
	fmt.Println(v, err)
	// Output:
	// 100
	// 80 <nil>
}

// A write whose invalidation cannot reach Redis has still committed: its
// error matches ErrQueued, the invalidation is replayed before this Store
// reads Redis again, and the handler answers success.
func ExampleErrQueued() {
	srv, _ := miniredis.Run()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), DisableIdentity: true, ContextTimeoutEnabled: true, MaxRetries: -1})
	defer rdb.Close()
	store, _ := aside.NewStore(rdb)
	prices, _ := aside.New[int](store, "price")
	ctx := context.Background()

	srv.Close() // Redis goes away
	committed := false
	err := store.Write(ctx, func(context.Context) error {
		committed = true // the transaction commits
		return nil
	}, prices.Changed("sku-1"))
	switch {
	case errors.Is(err, aside.ErrQueued):
		n, _ := store.Pending()
		fmt.Println("committed:", committed, "- invalidations queued:", n)
	case err != nil:
		fmt.Println("the write failed:", err)
	}
	_ = store.Close() // tries the queued invalidations once more; Redis is still away
	// Output: committed: true - invalidations queued: 1
}
