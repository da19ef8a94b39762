package aside_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/asidecache/aside"
)

// benchUser encodes to about 1 KB of msgpack.
type benchUser struct {
	ID        int64
	Name      string
	Email     string
	Bio       string
	Interests []string
	Score     float64
	Created   time.Time
}

var sampleUser = benchUser{
	ID: 123456, Name: "Ada Lovelace", Email: "ada@example.com",
	Bio:       strings.Repeat("Analyst, metaphysician, founder of scientific computing. ", 14),
	Interests: []string{"mathematics", "poetry", "engines", "music", "horses"},
	Score:     98.6, Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
}

// benchAddr is the real Redis when one is available (absolute numbers),
// else an in-process miniredis (relative numbers only).
func benchAddr(b *testing.B) string {
	if realAddr != "" {
		return realAddr
	}
	srv := miniredis.RunT(b)
	return srv.Addr()
}

func newBenchCache(b *testing.B, addr string) *aside.Cache[benchUser] {
	b.Helper()
	return benchCacheOn(b, newClient(b, addr))
}

// benchCacheOn is the benchmarks' cache of benchUser over rdb, in a Store
// of its own that is closed when b ends.
func benchCacheOn(b *testing.B, rdb redis.UniversalClient) *aside.Cache[benchUser] {
	b.Helper()
	store, err := aside.NewStore(rdb, aside.WithPrefix(uniquePrefix()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = store.Close() })
	c, err := aside.New[benchUser](store, "user")
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkHit compares a cache hit with the floor: a hand-written go-redis
// GET plus msgpack decode, with no protection at all. Both run in one
// process against one Redis — and, with a Cluster at hand, against a
// 3-master Cluster — so their ratio is meaningful on a noisy machine.
func BenchmarkHit(b *testing.B) {
	ctx := context.Background()
	for _, top := range benchTopologies(b) {
		b.Run("on="+top.name+"/subject=floor", func(b *testing.B) {
			rdb := top.client(b)
			key := uniquePrefix() + ":floor"
			raw, _ := msgpack.Marshal(sampleUser)
			rdb.Set(ctx, key, raw, time.Hour)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				data, err := rdb.Get(ctx, key).Bytes()
				if err != nil {
					b.Fatal(err)
				}
				var u benchUser
				if err := msgpack.Unmarshal(data, &u); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("on="+top.name+"/subject=aside", func(b *testing.B) {
			c := benchCacheOn(b, top.client(b))
			load := func(context.Context) (benchUser, error) { return sampleUser, nil }
			if _, err := c.Get(ctx, "hot", load); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Get(ctx, "hot", load); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchTopology is a kind of deployment the benchmarks run on.
type benchTopology struct {
	name   string
	client func(b *testing.B) redis.UniversalClient
}

// benchTopologies returns one node (the real Redis, else a miniredis);
// when the suite has one (ASIDE_CLUSTER_ADDRS, or ASIDE_LONG to start it),
// a 3-master Cluster; and with ASIDE_LONG, a two-shard Ring.
func benchTopologies(b *testing.B) []benchTopology {
	addr := benchAddr(b)
	tops := []benchTopology{{"node", func(b *testing.B) redis.UniversalClient { return newClient(b, addr) }}}
	if len(clusterAddrs) > 0 {
		tops = append(tops, benchTopology{"cluster", func(b *testing.B) redis.UniversalClient {
			return (&backend{cluster: clusterAddrs}).client(b)
		}})
	}
	if longRun && realAddr != "" {
		shards := startRingShards(b)
		tops = append(tops, benchTopology{"ring", func(b *testing.B) redis.UniversalClient {
			rdb := redis.NewRing(&redis.RingOptions{Addrs: shards, ContextTimeoutEnabled: true, MaxRetries: -1,
				DialTimeout: 200 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second, DisableIdentity: true})
			b.Cleanup(func() { _ = rdb.Close() })
			return rdb
		}})
	}
	return tops
}

// BenchmarkParallelHit measures hit throughput with every core busy: 8
// goroutines per core over 64 warm keys, on one node and (with a Cluster
// at hand: ASIDE_CLUSTER_ADDRS, or ASIDE_LONG to start one) on a 3-master
// Cluster; on the node each subject also runs with go-redis's automatic
// pipeliner (experimental in go-redis v9.22+), which batches concurrent
// callers' commands.
func BenchmarkParallelHit(b *testing.B) {
	ctx := context.Background()
	const keys = 64
	tops := benchTopologies(b)
	ap := benchTopology{"node+autopipeline", func(b *testing.B) redis.UniversalClient {
		ap, err := tops[0].client(b).(*redis.Client).AutoPipeline()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = ap.Close() })
		return ap
	}}
	tops = slices.Insert(tops, 1, ap)
	for _, top := range tops {
		b.Run("on="+top.name+"/subject=floor", func(b *testing.B) {
			rdb := top.client(b)
			prefix := uniquePrefix() + ":floor:"
			raw, _ := msgpack.Marshal(sampleUser)
			for k := range keys {
				rdb.Set(ctx, prefix+strconv.Itoa(k), raw, time.Hour)
			}
			b.ReportAllocs()
			b.SetParallelism(8)
			b.ResetTimer()
			var seed atomic.Uint64 // every request picks its key at random (hits.go in bench/ says why)
			b.RunParallel(func(pb *testing.PB) {
				r := rand.New(rand.NewPCG(seed.Add(1), 0))
				for pb.Next() {
					data, err := rdb.Get(ctx, prefix+strconv.Itoa(r.IntN(keys))).Bytes()
					var u benchUser
					if err == nil {
						err = msgpack.Unmarshal(data, &u)
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
		for _, tags := range []int{0, 2} {
			subject := "aside"
			var opts []aside.CallOption
			if tags > 0 {
				subject = "aside+2tags" // every read names the same two tags, as a tenant's and a region's
				opts = append(opts, aside.Tags("team:7", "region:eu"))
			}
			b.Run("on="+top.name+"/subject="+subject, func(b *testing.B) {
				c := benchCacheOn(b, top.client(b))
				load := func(context.Context) (benchUser, error) { return sampleUser, nil }
				for k := range keys {
					if _, err := c.Get(ctx, strconv.Itoa(k), load, opts...); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportAllocs()
				b.SetParallelism(8)
				b.ResetTimer()
				var seed atomic.Uint64
				b.RunParallel(func(pb *testing.PB) {
					r := rand.New(rand.NewPCG(seed.Add(1), 0))
					for pb.Next() {
						if _, err := c.Get(ctx, strconv.Itoa(r.IntN(keys)), load, opts...); err != nil {
							b.Error(err) // not Fatal: this goroutine is not the benchmark's
							return
						}
					}
				})
				if s := c.Stats(); s.Misses > keys {
					b.Errorf("%d misses: the hits were not hits", s.Misses)
				}
			})
		}
	}
}

// BenchmarkMiss measures a miss with an instant loader: the read, the load
// and the fill. The floor is GET (nil) + SET of the encoded value.
func BenchmarkMiss(b *testing.B) {
	addr := benchAddr(b)
	ctx := context.Background()
	b.Run("floor", func(b *testing.B) {
		rdb := newClient(b, addr)
		prefix := uniquePrefix() + ":floor:"
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			key := prefix + strconv.Itoa(i)
			if err := rdb.Get(ctx, key).Err(); err == nil {
				b.Fatal("unexpected hit")
			}
			raw, _ := msgpack.Marshal(sampleUser)
			if err := rdb.Set(ctx, key, raw, time.Minute).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("aside", func(b *testing.B) {
		c := newBenchCache(b, addr)
		load := func(context.Context) (benchUser, error) { return sampleUser, nil }
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			if _, err := c.Get(ctx, strconv.Itoa(i), load); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkStampede: every goroutine asks for keys that expire all the time
// (each iteration moves to a new key after a slow 1 ms load); loads/op shows
// how many loader calls the herd caused per request.
func BenchmarkStampede(b *testing.B) {
	c := newBenchCache(b, benchAddr(b))
	ctx := context.Background()
	var loads, gen atomic.Int64
	load := func(context.Context) (benchUser, error) {
		loads.Add(1)
		time.Sleep(time.Millisecond)
		return sampleUser, nil
	}
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := strconv.FormatInt(gen.Load()/64, 10) // 64 requests per key generation
			gen.Add(1)
			if _, err := c.Get(ctx, key, load); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(loads.Load())/float64(b.N), "loads/op")
}

// BenchmarkHitTags measures the hit path with 0, 1 and 4 tags: the entry
// and the tags' tokens travel in one pipeline, so a tagged hit stays one
// round trip.
func BenchmarkHitTags(b *testing.B) {
	addr := benchAddr(b)
	ctx := context.Background()
	load := func(context.Context) (benchUser, error) { return sampleUser, nil }
	for _, n := range []int{0, 1, 4} {
		b.Run(fmt.Sprintf("tags=%d", n), func(b *testing.B) {
			c := newBenchCache(b, addr)
			var opts []aside.CallOption
			for i := range n {
				opts = append(opts, aside.Tags(fmt.Sprint("tag-", i)))
			}
			if _, err := c.Get(ctx, "hot", load, opts...); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Get(ctx, "hot", load, opts...); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkInvalidateTag100k compares invalidating a tag carried by 100 000
// entries — one SET of its token — with what member-set designs do: delete
// every member key (pipelined UNLINKs in batches of 1000).
func BenchmarkInvalidateTag100k(b *testing.B) {
	if realAddr == "" {
		b.Skip("needs a real Redis")
	}
	const entries = 100_000
	ctx := context.Background()
	rdb := newClient(b, realAddr)
	prefix := uniquePrefix()
	store, err := aside.NewStore(rdb, aside.WithPrefix(prefix), aside.WithOpTimeout(time.Second))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	c, _ := aside.New[int](store, "n")
	// The entries, written by pipelined SETs of a realistic size.
	members := make([]string, entries)
	for i := range members {
		members[i] = fmt.Sprintf("%s:member:%d", prefix, i)
	}
	fill := func() {
		for i := 0; i < entries; i += 1000 {
			_, _ = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range members[i : i+1000] {
					p.Set(ctx, k, "x", time.Minute)
				}
				return nil
			})
		}
	}
	_ = c
	b.Run("aside/InvalidateTags", func(b *testing.B) {
		for b.Loop() {
			if err := store.InvalidateTags(ctx, "popular"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("member-set/UNLINK-all", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			fill()
			b.StartTimer()
			for i := 0; i < entries; i += 1000 {
				if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
					for _, k := range members[i : i+1000] {
						p.Unlink(ctx, k)
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// BenchmarkGetMany100 compares GetMany of 100 cached keys (one pipelined
// round trip) with 100 sequential Gets and with the floor — the same reads
// by hand: one MGET on a node; on a Cluster or a Ring, where an MGET cannot
// span nodes, one pipeline of GETs per node, the nodes in parallel — each
// with its values decoded, in one run, for the ~1 KB struct and for a small
// one (a price), since decoding dominates a batch of big values.
func BenchmarkGetMany100(b *testing.B) {
	for _, top := range benchTopologies(b) {
		b.Run("on="+top.name+"/value=1KB", func(b *testing.B) { benchGetMany(b, top.client(b), sampleUser) })
		b.Run("on="+top.name+"/value=small", func(b *testing.B) {
			benchGetMany(b, top.client(b), price{SKU: "sku-42", Cents: 1999, Currency: "EUR"})
		})
	}
}

type price struct {
	SKU      string
	Cents    int64
	Currency string
}

func benchGetMany[T any](b *testing.B, rdb redis.UniversalClient, sample T) {
	ctx := context.Background()
	store, err := aside.NewStore(rdb, aside.WithPrefix(uniquePrefix()))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	c, _ := aside.New[T](store, "v")
	keys, rawKeys := make([]string, 100), make([]string, 100)
	raw, _ := msgpack.Marshal(sample)
	for i := range keys {
		keys[i] = strconv.Itoa(i)
		rawKeys[i] = uniquePrefix() + ":raw:" + keys[i]
		if err := rdb.Set(ctx, rawKeys[i], raw, time.Hour).Err(); err != nil {
			b.Fatal(err)
		}
	}
	load := func(_ context.Context, ks []string) (map[string]T, error) {
		out := make(map[string]T, len(ks))
		for _, k := range ks {
			out[k] = sample
		}
		return out, nil
	}
	if _, err := c.GetMany(ctx, keys, load); err != nil {
		b.Fatal(err)
	}
	if err := store.Wait(ctx); err != nil { // the fills have landed
		b.Fatal(err)
	}
	one := func(context.Context) (T, error) { return sample, nil }
	b.Run("subject=floor", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			vals, err := readByHand(ctx, rdb, rawKeys)
			for _, v := range vals {
				var t T
				err = errors.Join(err, msgpack.Unmarshal([]byte(v), &t))
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("subject=GetMany", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if m, err := c.GetMany(ctx, keys, load); err != nil || len(m) != 100 {
				b.Fatal(err)
			}
		}
	})
	b.Run("subject=100xGet", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, k := range keys {
				if _, err := c.Get(ctx, k, one); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// readByHand reads keys as a careful hand-written client would: one MGET
// on a node; on a Cluster (a Ring), one pipeline of GETs per master (per
// shard), the nodes in parallel.
func readByHand(ctx context.Context, rdb redis.UniversalClient, keys []string) ([]string, error) {
	var nodeFor func(key string) (*redis.Client, error)
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		nodeFor = func(key string) (*redis.Client, error) { return c.MasterForKey(ctx, key) }
	case *redis.Ring:
		nodeFor = c.GetShardClientForKey
	default:
		res, err := rdb.MGet(ctx, keys...).Result()
		vals := make([]string, 0, len(res))
		for _, v := range res {
			s, _ := v.(string)
			vals = append(vals, s)
		}
		return vals, err
	}
	byMaster := map[*redis.Client][]string{}
	for _, k := range keys {
		m, err := nodeFor(k)
		if err != nil {
			return nil, err
		}
		byMaster[m] = append(byMaster[m], k)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	vals, errs := make([]string, 0, len(keys)), []error{}
	for m, ks := range byMaster {
		wg.Go(func() {
			p := m.Pipeline()
			cmds := make([]*redis.StringCmd, len(ks))
			for i, k := range ks {
				cmds[i] = p.Get(ctx, k)
			}
			_, err := p.Exec(ctx)
			mu.Lock()
			defer mu.Unlock()
			errs = append(errs, err)
			for _, c := range cmds {
				vals = append(vals, c.Val())
			}
		})
	}
	wg.Wait()
	return vals, errors.Join(errs...)
}

// BenchmarkL1 compares a hit with L1 on and off, in one run.
func BenchmarkL1(b *testing.B) {
	addr := benchAddr(b)
	ctx := context.Background()
	load := func(context.Context) (benchUser, error) { return sampleUser, nil }
	for _, mode := range []string{"strict", "relaxed", "off"} {
		on := mode != "off"
		b.Run("l1="+mode, func(b *testing.B) {
			rdb := newClient(b, addr)
			storeOpts := []aside.StoreOption{aside.WithPrefix(uniquePrefix())}
			if mode == "relaxed" {
				storeOpts = append(storeOpts, aside.WithRelaxedL1())
			}
			store, err := aside.NewStore(rdb, storeOpts...)
			if err != nil {
				b.Fatal(err)
			}
			defer store.Close()
			var opts []aside.Option
			if on {
				opts = append(opts, aside.WithL1(10_000, time.Minute))
			}
			c, err := aside.New[benchUser](store, "user", opts...)
			if err != nil {
				b.Fatal(err)
			}
			for deadline := time.Now().Add(waitFor); on && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				if _, err := c.Get(ctx, "hot", load); err != nil {
					b.Fatal(err)
				}
				if c.Stats().L1Hits > 0 {
					break // the subscription is up and L1 serves
				}
			}
			if _, err := c.Get(ctx, "hot", load); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.Get(ctx, "hot", load); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkCheck measures what the consistency checker costs a hit: off,
// and sampling 1 % of hits (the samples beyond its budget are dropped at
// the queue, as in production), on an L1 hit (16 goroutines per core) and
// on a Redis hit (one goroutine).
func BenchmarkCheck(b *testing.B) {
	addr := benchAddr(b)
	ctx := context.Background()
	load := func(context.Context) (benchUser, error) { return sampleUser, nil }
	check := aside.WithCheck(aside.Check[benchUser]{Load: func(context.Context, string) (benchUser, error) { return sampleUser, nil }, Hits: 0.01})
	for _, tier := range []string{"l1", "redis"} {
		for _, rate := range []string{"off", "1%"} {
			b.Run("tier="+tier+"/check="+rate, func(b *testing.B) {
				store, err := aside.NewStore(newClient(b, addr), aside.WithPrefix(uniquePrefix()))
				if err != nil {
					b.Fatal(err)
				}
				defer store.Close()
				var opts []aside.Option
				if tier == "l1" {
					opts = append(opts, aside.WithL1(10_000, time.Minute))
				}
				if rate != "off" {
					opts = append(opts, check)
				}
				c, err := aside.New[benchUser](store, "user", opts...)
				if err != nil {
					b.Fatal(err)
				}
				for deadline := time.Now().Add(waitFor); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
					if _, err := c.Get(ctx, "hot", load); err != nil {
						b.Fatal(err)
					}
					if st := c.Stats(); tier == "redis" && st.Hits > 0 || st.L1Hits > 0 {
						break
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				if tier == "redis" {
					for b.Loop() {
						if _, err := c.Get(ctx, "hot", load); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.SetParallelism(8)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := c.Get(ctx, "hot", load); err != nil {
							b.Fatal(err)
						}
					}
				})
			})
		}
	}
}
