package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// stampede: 4 instances (own clients and caches, as 4 processes) × 64
// goroutines ask for one cold key; the loader takes 50 ms.
func stampede(ctx context.Context) {
	fmt.Println("## Stampede: 4 processes × 64 goroutines, one cold key, 50 ms loader")
	fmt.Println()
	fmt.Println("| subject | loader calls per key | all done: median (min – max) | errors |")
	fmt.Println("|---|---|---|---|")
	makers := []struct {
		name string
		make func(i int) subject
	}{
		{"floor (GET/SET + msgpack)", func(int) subject { return floor(newClient(*addr)) }},
		{"aside", func(i int) subject { return asideShared(newClient(*addr)) }},
		{"go-redis/cache", func(int) subject { return goRedisCache("go-redis/cache", newClient(*addr), false) }},
		{"go-redis/cache + local", func(int) subject { return goRedisCache("go-redis/cache + local", newClient(*addr), true) }},
		{"sturdyc (memory only)", func(int) subject { return sturdy() }},
	}
	for round, m := range makers {
		var instances []subject
		for i := range 4 {
			instances = append(instances, m.make(i))
		}
		var calls, errs atomic.Int64
		load := func() (user, error) {
			calls.Add(1)
			time.Sleep(50 * time.Millisecond)
			return sample, nil
		}
		// warm the connection pools, as running services have them
		for _, s := range instances {
			var wg sync.WaitGroup
			for range 64 {
				wg.Add(1)
				go func() { defer wg.Done(); _, _ = s.get(ctx, "warm", instant) }()
			}
			wg.Wait()
		}
		var walls []time.Duration
		for rep := range *repeats { // a new cold key each repeat
			key := "cold" + strconv.Itoa(round) + "-" + strconv.Itoa(rep)
			go1 := make(chan struct{})
			var wg sync.WaitGroup
			for _, s := range instances {
				for range 64 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-go1
						if _, err := s.get(ctx, key, load); err != nil {
							errs.Add(1)
						}
					}()
				}
			}
			t0 := time.Now()
			close(go1)
			wg.Wait()
			walls = append(walls, time.Since(t0))
		}
		slices.Sort(walls)
		fmt.Printf("| %s | %.1f | %v (%v – %v) | %d |\n", m.name, float64(calls.Load())/float64(len(walls)),
			walls[len(walls)/2].Round(100*time.Microsecond), walls[0].Round(100*time.Microsecond),
			walls[len(walls)-1].Round(100*time.Microsecond), errs.Load())
		for _, s := range instances {
			if s.close != nil {
				s.close()
			}
		}
	}
	fmt.Println()
}

var sharedPrefix = prefix + "stampede"

func asideShared(rdb *redis.Client) subject {
	store, err := aside.NewStore(rdb, aside.WithPrefix(sharedPrefix))
	must(err)
	c, err := aside.New[user](store, "user")
	must(err)
	return subject{name: "aside", close: func() { _ = store.Close() }, get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
		return c.Get(ctx, key, func(context.Context) (user, error) { return load() })
	}}
}
