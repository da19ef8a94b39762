package main

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// BenchmarkL1VsInProcess measures an L1 hit beside in-process caches'
// lookups in one run, with no adapter in between: aside's L1 (strict and
// relaxed), otter v2's GetIfPresent (with a TTL, as an L1 has, and
// without) and sync.Map's Load — one goroutine,
// and 8 per core over 64 warm keys.
//
//	cd bench && go test -run '^$' -bench L1VsInProcess -count 8 | benchstat -col /subject -
func BenchmarkL1VsInProcess(b *testing.B) {
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = "user:" + strconv.Itoa(i)
	}
	type lookup func(key string) (user, bool)
	subjects := []struct {
		name string
		make func(b *testing.B) lookup
	}{
		{"aside-strict", func(b *testing.B) lookup { return asideL1(b, keys, false) }},
		{"aside-relaxed", func(b *testing.B) lookup { return asideL1(b, keys, true) }},
		{"otter", func(b *testing.B) lookup {
			c := otter.Must(&otter.Options[string, user]{MaximumSize: 10_000, ExpiryCalculator: otter.ExpiryWriting[string, user](time.Minute)})
			for _, k := range keys {
				c.Set(k, sample)
			}
			return c.GetIfPresent
		}},
		{"otter-no-expiry", func(b *testing.B) lookup {
			c := otter.Must(&otter.Options[string, user]{MaximumSize: 10_000})
			for _, k := range keys {
				c.Set(k, sample)
			}
			return c.GetIfPresent
		}},
		{"sync.Map", func(b *testing.B) lookup {
			var m sync.Map
			for _, k := range keys {
				m.Store(k, sample)
			}
			return func(key string) (user, bool) {
				v, ok := m.Load(key)
				if !ok {
					return user{}, false
				}
				return v.(user), true
			}
		}},
	}
	for _, par := range []bool{false, true} {
		for _, s := range subjects {
			name := "goroutines=1/subject=" + s.name
			if par {
				name = "goroutines=8xP/subject=" + s.name
			}
			b.Run(name, func(b *testing.B) {
				get := s.make(b)
				b.ReportAllocs()
				b.ResetTimer()
				if !par {
					i := 0
					for b.Loop() {
						if _, ok := get(keys[i&63]); !ok {
							b.Fatal("miss")
						}
						i++
					}
					return
				}
				b.SetParallelism(8)
				b.RunParallel(func(pb *testing.PB) {
					i := 0
					for pb.Next() {
						if _, ok := get(keys[i&63]); !ok {
							b.Error("miss")
							return
						}
						i++
					}
				})
			})
		}
	}
}

// asideL1 is a cache with L1 on an in-process Redis, warm, serving from L1:
// its lookup is Get with a loader that fails the benchmark if called.
func asideL1(b *testing.B, keys []string, relaxed bool) func(string) (user, bool) {
	srv := miniredis.RunT(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), DisableIdentity: true, ContextTimeoutEnabled: true})
	b.Cleanup(func() { _ = rdb.Close() })
	opts := []aside.StoreOption{}
	if relaxed {
		opts = append(opts, aside.WithRelaxedL1())
	}
	store, err := aside.NewStore(rdb, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = store.Close() })
	c, err := aside.New[user](store, "user", aside.WithL1(10_000, time.Minute))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	load := func(context.Context) (user, error) { return sample, nil }
	for deadline := time.Now().Add(5 * time.Second); c.Stats().L1Hits < uint64(len(keys)); {
		if time.Now().After(deadline) {
			b.Fatal("L1 never served")
		}
		for _, k := range keys {
			if _, err := c.Get(ctx, k, load); err != nil {
				b.Fatal(err)
			}
		}
		_ = store.Wait(ctx)
	}
	before := c.Stats().Loads
	b.Cleanup(func() {
		if st := c.Stats(); st.Loads != before {
			b.Errorf("%d loads while measuring L1 hits", st.Loads-before)
		}
	})
	return func(key string) (user, bool) {
		v, err := c.Get(ctx, key, load)
		return v, err == nil
	}
}
