package asidetest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidetest"
)

// In a real test, t is the test's own *testing.T, and everything New
// starts is stopped when the test ends. Examples have none, so they use
// this one.
var t = &testing.T{}

func ExampleNew() {
	store, redis := asidetest.New(t)
	prices, _ := aside.New[int](store, "price", aside.WithProfile(aside.Transactional)) // 30 s fresh
	var calls asidetest.Counter
	load := asidetest.Counting(&calls, func(context.Context) (int, error) { return 1999, nil })
	ctx := context.Background()

	_, _ = prices.Get(ctx, "sku-1", load)
	_, _ = prices.Get(ctx, "sku-1", load)
	fmt.Println("loads after two reads:", calls.Calls())

	redis.Advance(time.Minute) // the entry expires
	_, _ = prices.Get(ctx, "sku-1", load)
	fmt.Println("loads after a minute:", calls.Calls())
	// Output:
	// loads after two reads: 1
	// loads after a minute: 2
}

func ExampleRedis_Down() {
	store, redis := asidetest.New(t, aside.WithOpTimeout(50*time.Millisecond))
	prices, _ := aside.New[int](store, "price")
	ctx := context.Background()

	redis.Down()
	v, err := prices.Get(ctx, "sku-1", func(context.Context) (int, error) { return 1999, nil })
	fmt.Println(v, err, prices.Stats().RedisErrors > 0)

	_, err = prices.Get(ctx, "sku-2", asidetest.Failing[int](nil))
	fmt.Println(err)
	// Output:
	// 1999 <nil> true
	// asidetest: injected loader failure
}
