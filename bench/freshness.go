package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	rcache "github.com/go-redis/cache/v9"
	"github.com/viccon/sturdyc"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/asidecache/aside"
)

// instance is one process's view of a subject: a read through the cache,
// and the invalidation the subject offers after a write to the source.
type instance struct {
	get        func(ctx context.Context, key string, load func() (user, error)) (user, error)
	invalidate func(ctx context.Context, key string) error
	close      func()
}

// freshSubject makes the instances of one subject, all on one key space
// (as the processes of one service are).
type freshSubject struct {
	name string
	make func(space string) instance
}

func freshSubjects() []freshSubject {
	asideOn := func(space string, opts []aside.StoreOption, copts ...aside.Option) instance {
		rdb := newClient(*addr)
		store, err := aside.NewStore(rdb, append([]aside.StoreOption{aside.WithPrefix(space)}, opts...)...)
		must(err)
		c, err := aside.New[user](store, "user", copts...)
		must(err)
		for deadline := time.Now().Add(5 * time.Second); len(copts) > 0 && !store.Coherence().L1Serving && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond) // L1 serves once its subscription is trusted
		}
		return instance{
			get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
				return c.Get(ctx, key, func(context.Context) (user, error) { return load() })
			},
			invalidate: func(ctx context.Context, key string) error { return c.Invalidate(ctx, key) },
			close:      func() { _ = store.Close(); _ = rdb.Close() },
		}
	}
	grc := func(space string, local bool) instance {
		rdb := newClient(*addr)
		o := &rcache.Options{Redis: rdb}
		if local {
			o.LocalCache = rcache.NewTinyLFU(10_000, time.Minute)
		}
		c := rcache.New(o)
		return instance{
			get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
				var u user
				err := c.Once(&rcache.Item{Ctx: ctx, Key: space + ":" + key, Value: &u, TTL: time.Minute,
					Do: func(*rcache.Item) (any, error) { return load() }})
				return u, err
			},
			invalidate: func(ctx context.Context, key string) error { return c.Delete(ctx, space+":"+key) },
			close:      func() { _ = rdb.Close() },
		}
	}
	return []freshSubject{
		{"floor (GET/SET + msgpack, DEL)", func(space string) instance {
			rdb := newClient(*addr)
			return instance{
				get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
					var u user
					if b, err := rdb.Get(ctx, space+":"+key).Bytes(); err == nil {
						return u, msgpack.Unmarshal(b, &u)
					}
					u, err := load()
					if err == nil {
						raw, _ := msgpack.Marshal(u)
						rdb.Set(ctx, space+":"+key, raw, time.Minute)
					}
					return u, err
				},
				invalidate: func(ctx context.Context, key string) error { return rdb.Del(ctx, space+":"+key).Err() },
				close:      func() { _ = rdb.Close() },
			}
		}},
		{"aside", func(space string) instance { return asideOn(space, nil) }},
		{"aside + L1 (strict, the default)", func(space string) instance {
			return asideOn(space, nil, aside.WithL1(10_000, time.Minute))
		}},
		{"aside + L1 (WithRelaxedL1)", func(space string) instance {
			return asideOn(space, []aside.StoreOption{aside.WithRelaxedL1()}, aside.WithL1(10_000, time.Minute))
		}},
		{"go-redis/cache (Delete)", func(space string) instance { return grc(space, false) }},
		{cscName + " (DEL)", func(space string) instance {
			rdb := newCSCClient(*addr)
			s := cacheAside(cscName, rdb, space+":")
			return instance{get: s.get, close: s.close,
				invalidate: func(ctx context.Context, key string) error { return rdb.Del(ctx, space+":"+key).Err() }}
		}},
		{"go-redis/cache + TinyLFU local (Delete)", func(space string) instance { return grc(space, true) }},
		{"sturdyc, memory only (Delete)", func(string) instance {
			c := sturdyc.New[user](10_000, 16, time.Minute, 10)
			return instance{
				get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
					return c.GetOrFetch(ctx, key, func(context.Context) (user, error) { return load() })
				},
				invalidate: func(_ context.Context, key string) error { c.Delete(key); return nil },
				close:      func() {},
			}
		}},
	}
}

// freshness runs the same stale-read race through every subject: 2
// instances (as 2 processes), 2 writers that bump a row's version in the
// source and then invalidate it through a random instance, 4 readers whose
// loader reads the row and dawdles 0–2 ms. A read that started after an
// invalidation of version v had returned and got an older version is stale;
// a key whose instances still disagree with the source once the writers
// stopped is left stale.
func freshness(ctx context.Context, window time.Duration) {
	fmt.Printf("## Freshness: the same stale-read race through every subject\n\n")
	fmt.Printf("2 instances (as 2 processes) of each subject; 2 writers bump one of 8 rows and invalidate it through "+
		"either instance; 4 readers, loader dawdling 0–2 ms; %v per subject.\n\n", window)
	fmt.Println("| subject | reads | stale reads after an invalidation returned | keys left stale |")
	fmt.Println("|---|---|---|---|")
	for i, s := range freshSubjects() {
		space := prefix + "-fresh" + strconv.Itoa(i)
		insts := []instance{s.make(space), s.make(space)}
		reads, stale, left := freshRace(ctx, insts, window)
		for _, in := range insts {
			in.close()
		}
		fmt.Printf("| %s | %d | %d (%.3g %%) | %d of 8 |\n", s.name, reads, stale, 100*float64(stale)/float64(max(reads, 1)), left)
	}
	fmt.Println()
}

func freshRace(ctx context.Context, insts []instance, window time.Duration) (reads, stale int64, left int) {
	const keys = 8
	var db, floor [keys]atomic.Int64
	var rows [keys]sync.Mutex
	load := func(k int) func() (user, error) {
		return func() (user, error) {
			u := sample
			u.ID = db[k].Load()
			time.Sleep(time.Duration(rand.N(2000)) * time.Microsecond)
			return u, nil
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var readN, staleN atomic.Int64
	loop := func(fn func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					fn()
				}
			}
		}()
	}
	for range 2 {
		loop(func() {
			k := rand.N(keys)
			rows[k].Lock()
			v := db[k].Add(1)
			err := insts[rand.N(len(insts))].invalidate(ctx, strconv.Itoa(k))
			rows[k].Unlock()
			if err == nil {
				for cur := floor[k].Load(); cur < v && !floor[k].CompareAndSwap(cur, v); cur = floor[k].Load() {
				}
			}
			time.Sleep(time.Duration(rand.N(2000)) * time.Microsecond)
		})
	}
	for range 4 {
		loop(func() {
			k := rand.N(keys)
			min := floor[k].Load()
			u, err := insts[rand.N(len(insts))].get(ctx, strconv.Itoa(k), load(k))
			if err != nil {
				return
			}
			readN.Add(1)
			if u.ID < min {
				staleN.Add(1)
			}
		})
	}
	time.Sleep(window)
	close(stop)
	wg.Wait()
	time.Sleep(50 * time.Millisecond) // deliveries in flight land
	for k := range keys {
		for _, in := range insts {
			if u, err := in.get(ctx, strconv.Itoa(k), load(k)); err != nil || u.ID != db[k].Load() {
				left++
				break
			}
		}
	}
	return readN.Load(), staleN.Load(), left
}

// freshWindow is how long each subject races: long enough for thousands
// of reads, short in the CI smoke run.
func freshWindow() time.Duration { return max(10**benchT, 200*time.Millisecond) }
