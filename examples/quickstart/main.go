// Command quickstart shows aside in front of a deliberately slow repository:
// miss versus hit latency, 100 concurrent requests sharing one load, an
// invalidation after a write, Redis going away, and the cache's stats.
//
//	go run ./examples/quickstart                               # in-process Redis (miniredis)
//	ASIDE_REDIS_ADDR=127.0.0.1:6379 go run ./examples/quickstart
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

type Product struct {
	ID    string
	Name  string
	Price int
}

// repository stands for the database: every call takes 50 ms.
type repository struct {
	mu     sync.Mutex
	prices map[string]int
	calls  atomic.Int32
}

func (r *repository) Product(ctx context.Context, id string) (Product, error) {
	r.calls.Add(1)
	select {
	case <-time.After(50 * time.Millisecond):
	case <-ctx.Done():
		return Product{}, ctx.Err()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return Product{ID: id, Name: "Product " + id, Price: r.prices[id]}, nil
}

func (r *repository) SetPrice(id string, price int) {
	r.mu.Lock()
	r.prices[id] = price
	r.mu.Unlock()
}

func main() {
	ctx := context.Background()
	redis.SetLogger(silent{}) // the demo kills Redis on purpose; its dial errors are expected
	addr, mini := os.Getenv("ASIDE_REDIS_ADDR"), (*miniredis.Miniredis)(nil)
	if addr == "" {
		mini = miniredis.NewMiniRedis()
		if err := mini.Start(); err != nil {
			log.Fatal(err)
		}
		defer mini.Close()
		addr = mini.Addr()
	}
	// aside needs bounded Redis calls: let the context deadline reach the socket.
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, DisableIdentity: true, MaxRetries: -1})
	defer rdb.Close()

	store, err := aside.NewStore(rdb, aside.WithPrefix("quickstart"+fmt.Sprint(time.Now().UnixNano())), aside.WithBreaker(3, time.Second))
	if err != nil {
		log.Fatal(err)
	}
	products, err := aside.New[Product](store, "product", aside.WithProfile(aside.Master))
	if err != nil {
		log.Fatal(err)
	}
	repo := &repository{prices: map[string]int{"42": 999, "7": 15}}
	get := func(ctx context.Context, id string) (Product, error) {
		return products.Get(ctx, aside.Key(id), func(ctx context.Context) (Product, error) {
			return repo.Product(ctx, id)
		})
	}
	where := "miniredis (in process)"
	if mini == nil {
		where = addr
	}
	fmt.Println("Redis:", where)

	// 1. Miss, then hit. The miss returns as soon as the loader does; its
	// fill lands in Redis one round trip later (a read in between would wait
	// for it). A service's next request comes later than that; the demo
	// waits for the fill instead, so that what it times is a hit.
	start := time.Now()
	p, _ := get(ctx, "42")
	miss := time.Since(start)
	_ = store.Wait(ctx)
	start = time.Now()
	_, _ = get(ctx, "42")
	hit := time.Since(start)
	fmt.Printf("1. miss %-10v (loader ran)   hit %-10v  %v\n", miss.Round(time.Microsecond), hit.Round(time.Microsecond), p)

	// 2. A stampede: 100 concurrent requests on a cold key share one load.
	before := repo.calls.Load()
	var wg sync.WaitGroup
	start = time.Now()
	for range 100 {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = get(ctx, "7") }()
	}
	wg.Wait()
	fmt.Printf("2. 100 concurrent requests on a cold key: %d loader call(s), %v\n", repo.calls.Load()-before, time.Since(start).Round(time.Millisecond))

	// 3. Write to the source first, then invalidate: the next read is fresh.
	repo.SetPrice("42", 899)
	if err := products.Invalidate(ctx, aside.Key("42")); err != nil {
		log.Fatal(err)
	}
	p, _ = get(ctx, "42")
	fmt.Printf("3. after the price change and Invalidate: %v\n", p)

	// 4. Redis goes away: requests are still served, by the loader. The
	// first ones wait for the op timeout (100 ms); once the breaker is open
	// they go straight to the loader.
	if mini != nil {
		mini.Close()
		for i := 1; i <= 5; i++ {
			start = time.Now()
			p, err = get(ctx, "42")
			fmt.Printf("4. Redis down, request %d: %v err=%v in %v, breaker %v\n", i, p, err, time.Since(start).Round(time.Millisecond), store.BreakerState())
		}
	} else {
		_ = products.Invalidate(ctx, aside.Key("42"), aside.Key("7")) // leave the shared Redis clean
	}

	s := products.Stats()
	fmt.Printf("stats: hits=%d misses=%d loads=%d load-time=%v redis-errors=%d degraded=%d bytes-written=%d\n",
		s.Hits, s.Misses, s.Loads, s.LoadTime.Round(time.Millisecond), s.RedisErrors, s.Degraded, s.BytesWritten)
}

type silent struct{}

func (silent) Printf(context.Context, string, ...any) {}
