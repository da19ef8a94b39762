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
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/viccon/sturdyc"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/asidecache/aside"
)

var (
	addr    = flag.String("addr", "127.0.0.1:6379", "Redis address (loopback only)")
	repeats = flag.Int("repeats", 5, "repeats per measurement; the median is reported")
	benchT  = flag.Duration("benchtime", 200*time.Millisecond, "time per repeat")
	only    = flag.String("only", "", `run some sections only: "paths" (hit, miss, batch), "stampede", "freshness", "down" or "coherence"`)
	counts  = flag.String("stores", "8", "coherence: numbers of Stores, comma-separated")
	rate    = flag.Int("rate", 1000, "coherence: invalidations per second")
	link    = flag.Duration("link", 250*time.Microsecond, "the delay a proxy adds to each request for the miss table over a slower link")
	serve   = flag.Bool("serve-link", false, "run the delaying proxy only (the bench starts it as a process of its own)")
	cluster = flag.String("cluster", "", "coherence: also on this Redis Cluster (comma-separated loopback addresses)")
	prefix  = "asidebench" + strconv.FormatInt(time.Now().UnixNano()%1e9, 10)
)

// result is the median of repeated testing.Benchmark runs, with every
// repeat's time kept for ratios.
type result struct {
	nsPerOp float64
	allocs  int64
	runs    []float64 // ns/op of each repeat, in repeat order
	// pairedWith: the floor's ns/op in the repeats this result ran beside,
	// where those were not the table's floor row (pairedOne's local subjects)
	pairedWith []float64
}

// measureAll runs every benchmark once per repeat, round-robin in a new
// order each time, so that a noisy moment of the machine hits all subjects
// alike and none gains from its place in the round (in a fixed order, a
// second copy of the floor measured 1.05–1.17× the first), and returns each
// one's medians.
func measureAll(fns []func(b *testing.B)) []result {
	ns := make([][]float64, len(fns))
	allocs := make([][]int64, len(fns))
	for range *repeats {
		for _, i := range rand.Perm(len(fns)) { // no subject always runs first, or after the same one
			fn := fns[i]
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
		runs := slices.Clone(ns[i])
		slices.Sort(ns[i])
		slices.Sort(allocs[i])
		out[i] = result{nsPerOp: ns[i][len(ns[i])/2], allocs: allocs[i][len(allocs[i])/2], runs: runs}
	}
	return out
}

// ratio is r's time over base's: the median of the per-repeat ratios (each
// repeat ran both side by side), with their range.
func ratio(r, base result) string {
	var rs []float64
	against := base.runs
	if r.pairedWith != nil {
		against = r.pairedWith
	}
	for i := range r.runs {
		if i < len(against) && r.runs[i] > 0 && against[i] > 0 {
			rs = append(rs, r.runs[i]/against[i])
		}
	}
	if len(rs) == 0 {
		return "–"
	}
	slices.Sort(rs)
	switch {
	case len(rs) == 1:
		return fmt.Sprintf("%.2f", rs[0])
	case len(rs) >= 20: // many short turns: the middle half
		return fmt.Sprintf("%.2f (%.2f–%.2f)", rs[len(rs)/2], rs[len(rs)/4], rs[len(rs)*3/4])
	}
	return fmt.Sprintf("%.2f (%.2f–%.2f)", rs[len(rs)/2], rs[0], rs[len(rs)-1])
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
	if *serve {
		serveLink()
		return
	}
	ctx := context.Background()
	rdb := newClient(*addr)
	version, err := redisVersion(ctx, rdb)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: no Redis at", *addr, err)
		os.Exit(1)
	}
	// Every section leaves its keys behind (a paths run: ~400 000 misses'
	// entries); they go at the end, so that the next run starts on the
	// Redis this one found, not on one it grew and whose expiries run on.
	defer cleanup(ctx, rdb)
	start := time.Now()
	fmt.Printf("# aside benchmarks\n\n%s, %d cores, %s %s/%s, Redis %s on %s; medians of %d × %v; ~1 KB msgpack value. Ratios: the median of the per-repeat ratios (both sides ran in each repeat), with their range (the middle half for the single-goroutine hit, measured in %d turns of %v per subject, in blocks of 200µs).\n\n",
		cpuModel(), runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH, version, *addr, *repeats, *benchT, 10**repeats, *benchT/10)

	switch *only {
	case "paths":
		subs := subjects(*addr)
		hits(ctx, subs)
		misses(ctx, missTitle, subs)
		linkMisses(ctx)
		batch(ctx)
		return
	case "stampede":
		stampede(ctx)
		return
	case "freshness":
		freshness(ctx, freshWindow())
		return
	case "down":
		redisDown(ctx)
		return
	}
	if *only == "coherence" {
		runCoherence(ctx)
		fmt.Printf("\n_%s in %v_\n", "generated by `cd bench && go run . -only coherence`", time.Since(start).Round(time.Second))
		return
	}
	subs := subjects(*addr)
	hits(ctx, subs)
	misses(ctx, missTitle, subs)
	linkMisses(ctx)
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

func misses(ctx context.Context, title string, subs []subject) {
	fmt.Println("## " + title)
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
		fmt.Printf("| %s | %s | %d | %s |\n", name, dur(rs[i].nsPerOp), rs[i].allocs, ratio(rs[i], rs[0]))
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
	must(store.Wait(ctx)) // the fills have landed: what follows reads hits
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
	fmt.Println("| subject | per 100 keys | allocs/op | × floor |")
	fmt.Println("|---|---|---|---|")
	var fns []func(b *testing.B)
	for _, r := range rows {
		fns = append(fns, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := r.fn(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	results := measureAll(fns)
	for i, r := range rows {
		fmt.Printf("| %s | %s | %d | %s |\n", r.name, dur(results[i].nsPerOp), results[i].allocs, ratio(results[i], results[0]))
	}
	fmt.Println()
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
		if strings.HasPrefix(s.name, "sturdyc") || s.name == floorAgain {
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
