// Command bench measures aside side by side with a hand-written floor and
// with its peers, against one Redis, in one process, and prints Markdown
// tables: medians of several repeats, with ratios to the floor taken from
// the same run (the machine is shared and noisy; only ratios travel).
//
//	cd bench && go run . -addr 127.0.0.1:6379
//
// Subjects: the floor (go-redis GET/SET + msgpack, no protection), aside
// (default, with 2 tags, with L1), go-redis/cache v9 (with and without its
// TinyLFU local cache) and sturdyc (in memory only: the L1 reference).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rcache "github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"
	"github.com/viccon/sturdyc"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/asidecache/aside"
)

// user encodes to about 1 KB of msgpack.
type user struct {
	ID        int64
	Name      string
	Email     string
	Bio       string
	Interests []string
	Score     float64
	Created   time.Time
}

var sample = user{
	ID: 123456, Name: "Ada Lovelace", Email: "ada@example.com",
	Bio:       strings.Repeat("Analyst, metaphysician, founder of scientific computing. ", 14),
	Interests: []string{"mathematics", "poetry", "engines", "music", "horses"},
	Score:     98.6, Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
}

var (
	addr    = flag.String("addr", "127.0.0.1:6379", "Redis address (loopback only)")
	repeats = flag.Int("repeats", 5, "repeats per measurement; the median is reported")
	benchT  = flag.Duration("benchtime", 200*time.Millisecond, "time per repeat")
	only    = flag.String("only", "", `run one section only: "stampede", "freshness" or "coherence"`)
	counts  = flag.String("stores", "8", "coherence: numbers of Stores, comma-separated")
	rate    = flag.Int("rate", 1000, "coherence: invalidations per second")
	cluster = flag.String("cluster", "", "coherence: also on this Redis Cluster (comma-separated loopback addresses)")
	prefix  = "asidebench" + strconv.FormatInt(time.Now().UnixNano()%1e9, 10)
)

// newClient gives every subject the same client: bounded timeouts, as aside
// requires and as any production client should have.
func newClient(a string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: a, DisableIdentity: true, ContextTimeoutEnabled: true,
		MaxRetries: -1, DialTimeout: 100 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second})
}

// subject is one library's read path: get returns the value of key, loading
// it with load on a miss.
type subject struct {
	name  string
	get   func(ctx context.Context, key string, load func() (user, error)) (user, error)
	close func()
}

func floor(rdb *redis.Client) subject {
	return cacheAside("floor (GET/SET + msgpack)", rdb, prefix+":floor:")
}

// cacheAside is hand-written cache-aside over rdb: GET, else load and SET.
// Over a plain client it is the floor; over a client with go-redis's
// client-side cache it is that cache's peer row.
func cacheAside(name string, rdb *redis.Client, space string) subject {
	return subject{name: name, get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
		var u user
		b, err := rdb.Get(ctx, space+key).Bytes()
		if err == nil {
			err = msgpack.Unmarshal(b, &u)
			return u, err
		}
		if u, err = load(); err != nil {
			return u, err
		}
		if raw, err := msgpack.Marshal(u); err == nil {
			rdb.Set(ctx, space+key, raw, time.Minute)
		}
		return u, nil
	}, close: func() { _ = rdb.Close() }}
}

// newCSCClient is a client with go-redis's own client-side cache: RESP3,
// server-assisted invalidation (tracking).
func newCSCClient(a string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: a, Protocol: 3, DisableIdentity: true, ContextTimeoutEnabled: true,
		MaxRetries: -1, DialTimeout: 100 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second,
		ClientSideCacheConfig: &redis.ClientSideCacheConfig{MaxEntries: 10_000}})
}

const cscName = "go-redis client-side cache (GET/SET, RESP3)"

func asideSubject(name string, rdb *redis.Client, tagged bool, opts ...aside.Option) subject {
	store, err := aside.NewStore(rdb, aside.WithPrefix(prefix+strings.ReplaceAll(strings.ReplaceAll(name, " ", ""), "+", "")))
	must(err)
	c, err := aside.New[user](store, "user", opts...)
	must(err)
	var call []aside.CallOption
	if tagged {
		call = append(call, aside.Tags("team:7", "region:eu"))
	}
	return subject{name: name, close: func() { _ = store.Close() }, get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
		return c.Get(ctx, key, func(context.Context) (user, error) { return load() }, call...)
	}}
}

func goRedisCache(name string, rdb *redis.Client, local bool) subject {
	o := &rcache.Options{Redis: rdb}
	if local {
		o.LocalCache = rcache.NewTinyLFU(10_000, time.Minute)
	}
	c := rcache.New(o)
	return subject{name: name, get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
		var u user
		err := c.Once(&rcache.Item{Ctx: ctx, Key: prefix + ":grc:" + name + ":" + key, Value: &u, TTL: time.Minute,
			Do: func(*rcache.Item) (any, error) { return load() }})
		return u, err
	}}
}

func sturdy() subject {
	c := sturdyc.New[user](10_000, 16, time.Minute, 10)
	return subject{name: "sturdyc (memory only)", get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
		return c.GetOrFetch(ctx, key, func(context.Context) (user, error) { return load() })
	}}
}

// subjects returns every subject, each with a client of its own, so that
// one's connection pool (or its failures) never affects another.
func subjects(a string) []subject {
	return []subject{
		floor(newClient(a)),
		asideSubject("aside", newClient(a), false),
		asideSubject("aside + 2 tags", newClient(a), true),
		asideSubject("aside + L1", newClient(a), false, aside.WithL1(10_000, time.Minute)),
		goRedisCache("go-redis/cache", newClient(a), false),
		goRedisCache("go-redis/cache + local", newClient(a), true),
		cacheAside(cscName, newCSCClient(a), prefix+":csc:"),
		sturdy(),
	}
}

// result is the median of repeated testing.Benchmark runs.
type result struct {
	nsPerOp float64
	allocs  int64
}

// measureAll runs every benchmark once per repeat, round-robin, so that a
// noisy moment of the machine hits all subjects alike, and returns each
// one's medians.
func measureAll(fns []func(b *testing.B)) []result {
	ns := make([][]float64, len(fns))
	allocs := make([][]int64, len(fns))
	for range *repeats {
		for i, fn := range fns {
			r := testing.Benchmark(fn)
			if r.N == 0 {
				ns[i], allocs[i] = append(ns[i], -1), append(allocs[i], 0)
				continue
			}
			ns[i] = append(ns[i], float64(r.T.Nanoseconds())/float64(r.N))
			allocs[i] = append(allocs[i], r.AllocsPerOp())
		}
	}
	out := make([]result, len(fns))
	for i := range fns {
		slices.Sort(ns[i])
		slices.Sort(allocs[i])
		out[i] = result{nsPerOp: ns[i][len(ns[i])/2], allocs: allocs[i][len(allocs[i])/2]}
	}
	return out
}

func instant() (user, error) { return sample, nil }

// quiet drops go-redis' own log lines: the Redis-down table provokes them.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func main() {
	redis.SetLogger(quiet{})
	testing.Init()
	flag.Parse()
	must(flag.Set("test.benchtime", benchT.String()))
	if host, _, err := net.SplitHostPort(*addr); err != nil || !(host == "127.0.0.1" || host == "localhost" || host == "::1") {
		fmt.Fprintln(os.Stderr, "bench: -addr must be a loopback address")
		os.Exit(2)
	}
	ctx := context.Background()
	rdb := newClient(*addr)
	version, err := redisVersion(ctx, rdb)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: no Redis at", *addr, err)
		os.Exit(1)
	}
	start := time.Now()
	fmt.Printf("# aside benchmarks\n\n%s, %d cores, %s %s/%s, Redis %s on %s; medians of %d × %v; ~1 KB msgpack value.\n\n",
		cpuModel(), runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH, version, *addr, *repeats, *benchT)

	switch *only {
	case "stampede":
		stampede(ctx)
		return
	case "freshness":
		freshness(ctx, freshWindow())
		return
	}
	if *only == "coherence" {
		runCoherence(ctx)
		fmt.Printf("\n_%s in %v_\n", "generated by `cd bench && go run . -only coherence`", time.Since(start).Round(time.Second))
		return
	}
	subs := subjects(*addr)
	hits(ctx, subs)
	misses(ctx, subs)
	batch(ctx)
	stampede(ctx)
	freshness(ctx, freshWindow())
	redisDown(ctx)
	runCoherence(ctx)
	for _, s := range subs {
		if s.close != nil {
			s.close()
		}
	}
	cleanup(ctx, rdb)
	fmt.Printf("\n_%s in %v_\n", "generated by `cd bench && go run .`", time.Since(start).Round(time.Second))
}

// runCoherence measures L1 coherence on the -addr Redis and, with -cluster,
// on a Cluster.
func runCoherence(ctx context.Context) {
	var sizes []int
	for _, f := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		must(err)
		sizes = append(sizes, n)
	}
	window := max(20**benchT, 300*time.Millisecond)
	coherence(ctx, func() redis.UniversalClient { return newClient(*addr) }, "one Redis", sizes, *rate, window)
	if *cluster == "" {
		return
	}
	addrs := strings.Split(*cluster, ",")
	coherence(ctx, func() redis.UniversalClient {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, DisableIdentity: true, ContextTimeoutEnabled: true,
			MaxRetries: -1, DialTimeout: 100 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second})
	}, "3-master Cluster", sizes, *rate, window)
}

func hits(ctx context.Context, subs []subject) {
	fmt.Println("## Hit")
	fmt.Println()
	fmt.Println("| subject | 1 goroutine | allocs/op | × floor | parallel (GOMAXPROCS) | × floor |")
	fmt.Println("|---|---|---|---|---|---|")
	var one, par []func(b *testing.B)
	for _, s := range subs {
		for range 20 { // warm: fill Redis, L1 subscriptions, local caches
			_, _ = s.get(ctx, "hot", instant)
			time.Sleep(time.Millisecond)
		}
		one = append(one, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.get(ctx, "hot", instant); err != nil {
					b.Fatal(err)
				}
			}
		})
		par = append(par, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, _ = s.get(ctx, "hot", instant)
				}
			})
		})
	}
	r1, rp := measureAll(one), measureAll(par)
	for i, s := range subs {
		fmt.Printf("| %s | %s | %d | %.2f | %s | %.2f |\n", s.name, dur(r1[i].nsPerOp), r1[i].allocs, r1[i].nsPerOp/r1[0].nsPerOp,
			dur(rp[i].nsPerOp), rp[i].nsPerOp/rp[0].nsPerOp)
	}
	fmt.Println()
	fmt.Println("Allocations include each subject's adapter closure (one per call); aside's own L1 hit allocates nothing (`BenchmarkL1`).")
	fmt.Println()
}

func misses(ctx context.Context, subs []subject) {
	fmt.Println("## Miss + fill (instant loader, a new key each time)")
	fmt.Println()
	fmt.Println("| subject | per miss | allocs/op | × floor |")
	fmt.Println("|---|---|---|---|")
	var fns []func(b *testing.B)
	var names []string
	for _, s := range subs {
		if strings.HasPrefix(s.name, "sturdyc") {
			continue // no Redis round trip to compare
		}
		var n atomic.Int64
		names = append(names, s.name)
		fns = append(fns, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.get(ctx, "miss"+strconv.FormatInt(n.Add(1), 10), instant); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	rs := measureAll(fns)
	for i, name := range names {
		fmt.Printf("| %s | %s | %d | %.2f |\n", name, dur(rs[i].nsPerOp), rs[i].allocs, rs[i].nsPerOp/rs[0].nsPerOp)
	}
	fmt.Println()
}

func batch(ctx context.Context) {
	rdb := newClient(*addr)
	store, err := aside.NewStore(rdb, aside.WithPrefix(prefix+"batch"))
	must(err)
	defer store.Close()
	c, err := aside.New[user](store, "user")
	must(err)
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = strconv.Itoa(i)
	}
	loadMany := func(_ context.Context, ks []string) (map[string]user, error) {
		out := make(map[string]user, len(ks))
		for _, k := range ks {
			out[k] = sample
		}
		return out, nil
	}
	_, err = c.GetMany(ctx, keys, loadMany)
	must(err)
	raw, _ := msgpack.Marshal(sample)
	rawKeys := make([]string, 100)
	for i := range rawKeys {
		rawKeys[i] = prefix + ":mget:" + keys[i]
		rdb.Set(ctx, rawKeys[i], raw, time.Minute)
	}
	sc := sturdyc.New[user](10_000, 16, time.Minute, 10)
	keyFn := sc.BatchKeyFn("user")
	_, _ = sc.GetOrFetchBatch(ctx, keys, keyFn, loadMany)
	rows := []struct {
		name string
		fn   func() error
	}{
		{"floor: MGET + 100 decodes", func() error {
			vals, err := rdb.MGet(ctx, rawKeys...).Result()
			for _, v := range vals {
				var u user
				if s, ok := v.(string); ok {
					err = errors.Join(err, msgpack.Unmarshal([]byte(s), &u))
				}
			}
			return err
		}},
		{"aside GetMany", func() error { _, err := c.GetMany(ctx, keys, loadMany); return err }},
		{"aside: 100 × Get", func() error {
			for _, k := range keys {
				if _, err := c.Get(ctx, k, func(context.Context) (user, error) { return sample, nil }); err != nil {
					return err
				}
			}
			return nil
		}},
		{"sturdyc GetOrFetchBatch (memory)", func() error { _, err := sc.GetOrFetchBatch(ctx, keys, keyFn, loadMany); return err }},
	}
	fmt.Println("## 100 keys, all cached")
	fmt.Println()
	fmt.Println("| subject | per 100 keys | × aside GetMany |")
	fmt.Println("|---|---|---|")
	var fns []func(b *testing.B)
	for _, r := range rows {
		fns = append(fns, func(b *testing.B) {
			for b.Loop() {
				if err := r.fn(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	results := measureAll(fns)
	base := results[1].nsPerOp
	for i, r := range rows {
		fmt.Printf("| %s | %s | %.2f |\n", r.name, dur(results[i].nsPerOp), results[i].nsPerOp/base)
	}
	fmt.Println()
}

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

// redisDown points every subject at a port where nothing listens and
// measures requests served by the loader.
func redisDown(ctx context.Context) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	dead := ln.Addr().String()
	_ = ln.Close()
	fmt.Println("## Redis down (connection refused), loader instant")
	fmt.Println()
	fmt.Println("| subject | first 5 requests, mean | steady state p50 | p99 | errors returned |")
	fmt.Println("|---|---|---|---|---|")
	for _, s := range subjects(dead) {
		if strings.HasPrefix(s.name, "sturdyc") {
			continue
		}
		var lat []time.Duration
		var errs int
		for i := range 205 {
			t0 := time.Now()
			if _, err := s.get(ctx, "k"+strconv.Itoa(i%10), instant); err != nil {
				errs++
			}
			lat = append(lat, time.Since(t0))
		}
		first := time.Duration(0)
		for _, d := range lat[:5] {
			first += d / 5
		}
		steady := slices.Clone(lat[5:])
		slices.Sort(steady)
		fmt.Printf("| %s | %v | %v | %v | %d of 205 |\n", s.name, first.Round(time.Microsecond),
			steady[len(steady)/2].Round(time.Microsecond), steady[len(steady)*99/100].Round(time.Microsecond), errs)
		if s.close != nil {
			s.close()
		}
	}
	fmt.Println()
}

func redisVersion(ctx context.Context, rdb *redis.Client) (string, error) {
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "redis_version:"); ok {
			return v, nil
		}
	}
	return "?", nil
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return runtime.GOARCH
}

// cleanup removes this run's keys.
func cleanup(ctx context.Context, rdb *redis.Client) {
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	for len(keys) > 0 {
		n := min(len(keys), 500)
		rdb.Unlink(ctx, keys[:n]...)
		keys = keys[n:]
	}
}

func dur(ns float64) string {
	switch {
	case ns < 0:
		return "failed"
	case ns < 1e3:
		return fmt.Sprintf("%.0f ns", ns)
	case ns < 1e6:
		return fmt.Sprintf("%.1f µs", ns/1e3)
	}
	return fmt.Sprintf("%.2f ms", ns/1e6)
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
