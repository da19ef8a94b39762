package aside_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/asidecache/aside"
)

func ExampleGetBatch() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb)
	defer store.Close()
	products, _ := aside.New[Product](store, "product")
	ctx := context.Background()

	batch := aside.Batch[int, Product]{
		Key: func(id int) string { return aside.Key(fmt.Sprint(id), "en") },
		Load: func(_ context.Context, ids []int) (map[int]Product, error) { // the misses' ids, not keys
			slices.Sort(ids)
			fmt.Println("load", ids)
			out := map[int]Product{}
			for _, id := range ids {
				out[id] = Product{ID: id, Name: fmt.Sprint("product ", id)}
			}
			return out, nil
		},
		Tags: func(id int) []string { return []string{fmt.Sprint("product:", id)} },
	}
	_, _ = aside.GetBatch(ctx, products, []int{1, 2}, batch)
	byID, err := aside.GetBatch(ctx, products, []int{1, 2, 3}, batch)
	fmt.Println(byID[3].Name, err)
	_ = store.InvalidateTags(ctx, "product:2") // one entry's own tag
	_, _ = aside.GetBatch(ctx, products, []int{1, 2, 3}, batch)
	// Output:
	// load [1 2]
	// load [3]
	// product 3 <nil>
	// load [2]
}

func ExampleCache_Peek() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb)
	defer store.Close()
	sessions, _ := aside.New[string](store, "session")
	ctx := context.Background()

	_, err := sessions.Peek(ctx, "s1")
	fmt.Println(errors.Is(err, aside.ErrMiss))
	_ = sessions.Set(ctx, "s1", "ada")
	name, err := sessions.Peek(ctx, "s1")
	fmt.Println(name, err)
	// Output:
	// true
	// ada <nil>
}

func ExampleExpireAt() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb)
	defer store.Close()
	tokens, _ := aside.New[string](store, "token")
	ctx := context.Background()

	fetchToken := func(ctx context.Context) (string, error) {
		// The upstream says this token expires in 2 s: cache it no longer,
		// whatever the profile's TTL.
		aside.ExpireAt(ctx, time.Now().Add(2*time.Second))
		return "tok-123", nil
	}
	t, err := tokens.Get(ctx, "upstream", fetchToken)
	fmt.Println(t, err)
	// Output:
	// tok-123 <nil>
}

var errNoSuchUser = errors.New("users: no such user")

func ExampleWithNotFound() {
	rdb, done := exampleClient()
	defer done()
	store, _ := aside.NewStore(rdb)
	defer store.Close()
	users, _ := aside.New[string](store, "user", aside.WithNotFound(errNoSuchUser))
	ctx := context.Background()

	find := func(context.Context) (string, error) { return "", errNoSuchUser } // the repository's own error
	for range 2 {                                                              // loaded, then cached: the same identity both times
		_, err := users.Get(ctx, "7", find)
		fmt.Println(errors.Is(err, errNoSuchUser), errors.Is(err, aside.ErrNotFound))
	}
	// Output:
	// true true
	// true true
}

func ExampleBuiltinProfile() {
	rdb, done := exampleClient()
	defer done()
	catalog, err := aside.BuiltinProfile(aside.Master) // a copy: change only what differs
	if err != nil {
		panic(err)
	}
	catalog.Name, catalog.TTL, catalog.NegativeTTL = "catalog", time.Hour, 0
	store, err := aside.NewStore(rdb, aside.WithProfiles(catalog))
	if err != nil {
		panic(err)
	}
	defer store.Close()
	products, _ := aside.New[Product](store, "product", aside.WithProfile("catalog"))
	fmt.Println(products.Stats().Profile, catalog.StaleWindow)
	// Output:
	// catalog 24h0m0s
}
