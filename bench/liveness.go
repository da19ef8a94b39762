package main

// The liveness run: a catalogue service as a user writes it (net/http, a
// PostgreSQL table, reads through the cache, writes that commit and then
// invalidate), driven by an open-loop HTTP load — requests arrive at a fixed
// rate whether or not earlier ones have finished, so a stall shows as
// latency and as requests without an answer, not as a slower client. Each
// variant runs the same load against a redis-server of its own, under each
// fault: none, Redis stopped for 300 ms (SIGSTOP: a stall, as DEBUG SLEEP),
// and two CPU-bound neighbour processes on the machine.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

const (
	liveRows     = 2000
	liveWriteOne = 50 // one request in 50 is a write: 2 %
	liveTimeout  = 5 * time.Second
)

const pgRead = "SELECT version, payload, pg_sleep(0.002)::text FROM %s WHERE id = $1"

// breakerOpened counts the times an aside Store's breaker opened in the
// current run.
var breakerOpened atomic.Int64

// liveVariants are the services compared, in the order of the table.
var liveVariants = []string{"no cache", "go-redis/cache", "aside", "aside + L1", "aside + L1 ×2"}

// liveResult is one variant's run under one fault.
type liveResult struct {
	variant, fault            string
	sent, answered, noAnswer  int
	errs, writesFailed, stale int
	dbReads                   int64
	p50, p90, p99, p999, pmax time.Duration
	answeredPerSec            float64
	breaker                   string // times aside's breaker opened; "—" for the others
}

// zipf draws ids 1..liveRows, a few popular, most rare.
type zipfIDs struct {
	mu sync.Mutex
	z  *rand.Zipf
}

func (z *zipfIDs) next() int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return int(z.z.Uint64()) + 1
}

func liveness(ctx context.Context) {
	rate := *liveRate
	dur := *liveDur
	db, dbName := openSource(ctx)
	defer db.close()
	fmt.Printf("\n## Liveness: an HTTP service under open-loop load\n\n")
	fmt.Printf("%d requests/s for %v (open loop, vegeta), %d%% writes (a transaction, then the invalidation), Zipf-popular ids of %d rows; database: %s; Redis: a redis-server of its own per run; a request unanswered after %v counts as no answer. Faults: `stall` stops Redis for 300 ms (SIGSTOP) %v in; `cpu` runs two CPU-bound processes beside the service for the whole run. Stale: a read that began after a write of its row had answered, and returned an older version. DB reads: the loader's calls.\n\n",
		rate, dur, 100/liveWriteOne, liveRows, dbName, liveTimeout, *liveStallAt)
	fmt.Println("| fault | variant | answered/s | p50 | p90 | p99 | p99.9 | max | no answer | errors | committed writes reported failed | DB reads | stale reads | breaker opened |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, fault := range strings.Split(*liveFaults, ",") {
		for _, name := range liveVariants {
			if *liveOnly != "" && !slices.Contains(strings.Split(*liveOnly, ","), name) {
				continue
			}
			r, err := liveRun(ctx, db, fault, name, rate, dur)
			if err != nil {
				fmt.Fprintln(os.Stderr, "liveness:", fault, name, err)
				continue
			}
			fmt.Printf("| %s | %s | %.0f | %v | %v | %v | %v | %v | %d | %d | %d | %d | %d | %s |\n", r.fault, r.variant, r.answeredPerSec,
				ms(r.p50), ms(r.p90), ms(r.p99), ms(r.p999), ms(r.pmax), r.noAnswer, r.errs, r.writesFailed, r.dbReads, r.stale, r.breaker)
		}
	}
}

func ms(d time.Duration) string {
	if d >= 100*time.Millisecond {
		return strconv.FormatInt(d.Milliseconds(), 10) + " ms"
	}
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) + " ms"
}

// ownRedis starts a redis-server on a free loopback port; stop kills it.
func ownRedis() (addr string, pid int, stop func(), err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", 0, nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	dir, err := os.MkdirTemp("", "aside-live")
	if err != nil {
		return "", 0, nil, err
	}
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		return "", 0, nil, fmt.Errorf("redis-server: %w", err)
	}
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	stop = func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); _ = os.RemoveAll(dir) }
	c := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	defer c.Close()
	for i := 0; i < 100; i++ {
		if c.Ping(context.Background()).Err() == nil {
			return addr, cmd.Process.Pid, stop, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	return "", 0, nil, errors.New("redis-server did not answer")
}

// cpuHogs starts n processes that spin; stop kills them.
func cpuHogs(n int) (stop func()) {
	var cmds []*exec.Cmd
	for range n {
		cmd := exec.Command("sh", "-c", "while :; do :; done")
		if cmd.Start() == nil {
			cmds = append(cmds, cmd)
		}
	}
	return func() {
		for _, c := range cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}
}

type liveWrite struct {
	at      time.Time // when its answer arrived
	version int64
}

func liveRun(ctx context.Context, db *source, fault, variant string, rate int, dur time.Duration) (liveResult, error) {
	addr, pid, stopRedis, err := ownRedis()
	if err != nil {
		return liveResult{}, err
	}
	defer stopRedis()
	svc := newService(variant, addr, db)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return liveResult{}, err
	}
	srv := &http.Server{Handler: svc.handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Close(); svc.close() }()
	base := "http://" + ln.Addr().String() + "/p/"

	// Warm up: every row read once, so the run starts from a warm cache.
	for id := 1; id <= liveRows; id++ {
		if _, err := svc.read(ctx, id); err != nil {
			return liveResult{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	runtime.GC()
	db.reads.Store(0)
	breakerOpened.Store(0)

	ids := &zipfIDs{z: rand.NewZipf(rand.New(rand.NewPCG(7, 11)), 1.1, 4, liveRows-1)}
	var n atomic.Int64
	targeter := func(t *vegeta.Target) error {
		i := n.Add(1)
		t.Method, t.URL = http.MethodGet, base+strconv.Itoa(ids.next())
		if i%liveWriteOne == 0 {
			t.Method = http.MethodPut
		}
		return nil
	}
	attacker := vegeta.NewAttacker(vegeta.Timeout(liveTimeout), vegeta.KeepAlive(true), vegeta.Connections(10_000),
		vegeta.MaxConnections(10_000), vegeta.Workers(64), vegeta.MaxWorkers(100_000))

	switch fault {
	case "stall":
		t := time.AfterFunc(*liveStallAt, func() {
			_ = syscall.Kill(pid, syscall.SIGSTOP)
			time.Sleep(300 * time.Millisecond)
			_ = syscall.Kill(pid, syscall.SIGCONT)
		})
		defer t.Stop()
	case "cpu":
		defer cpuHogs(2)()
	case "none":
	default:
		return liveResult{}, fmt.Errorf("unknown fault %q (none, stall, cpu)", fault)
	}
	if os.Getenv("LIVE_DEBUG") != "" {
		t := time.AfterFunc(*liveStallAt+340*time.Millisecond, func() {
			f, _ := os.Create("/tmp/live-goroutines.txt")
			_ = pprof.Lookup("goroutine").WriteTo(f, 1)
			_ = f.Close()
		})
		defer t.Stop()
	}
	var results []*vegeta.Result
	for r := range attacker.Attack(vegeta.Targeter(targeter), vegeta.Rate{Freq: rate, Per: time.Second}, dur, variant) {
		results = append(results, r)
	}
	if os.Getenv("LIVE_DEBUG") != "" {
		slow := slices.Clone(results)
		slices.SortFunc(slow, func(a, b *vegeta.Result) int { return int(b.Latency - a.Latency) })
		t0 := results[0].Timestamp
		for _, r := range slow[:min(20, len(slow))] {
			fmt.Fprintf(os.Stderr, "%s %s at %v took %v code %d\n", r.Method, r.URL, r.Timestamp.Sub(t0).Round(time.Millisecond), r.Latency.Round(time.Millisecond), r.Code)
		}
	}
	r := summarize(variant, fault, results, db.reads.Load(), dur)
	r.breaker = "—"
	if strings.HasPrefix(variant, "aside") {
		r.breaker = strconv.FormatInt(breakerOpened.Load(), 10)
	}
	return r, nil
}

// summarize computes the row of a run: latencies of every request, answers,
// and stale reads against the writes that had answered before each read
// began.
func summarize(variant, fault string, results []*vegeta.Result, dbReads int64, dur time.Duration) liveResult {
	r := liveResult{variant: variant, fault: fault, sent: len(results), dbReads: dbReads}
	writes := map[int][]liveWrite{}
	var lat []time.Duration
	for _, res := range results {
		id := pathID(res.URL)
		switch {
		case res.Code == 0 || res.Latency >= liveTimeout:
			r.noAnswer++
			lat = append(lat, liveTimeout)
			continue
		case res.Method == http.MethodPut && res.Code == http.StatusInternalServerError:
			if v, err := strconv.ParseInt(strings.Fields(string(res.Body) + " x")[0], 10, 64); err == nil && v > 0 {
				r.writesFailed++ // it committed
				writes[id] = append(writes[id], liveWrite{at: res.End(), version: v})
			} else {
				r.errs++
			}
		case res.Code != http.StatusOK:
			r.errs++
		case res.Method == http.MethodPut:
			v, _ := strconv.ParseInt(string(res.Body), 10, 64)
			writes[id] = append(writes[id], liveWrite{at: res.End(), version: v})
		}
		r.answered++
		lat = append(lat, res.Latency)
	}
	for _, w := range writes {
		slices.SortFunc(w, func(a, b liveWrite) int { return a.at.Compare(b.at) })
	}
	for _, res := range results {
		if res.Method != http.MethodGet || res.Code != http.StatusOK {
			continue
		}
		got, _ := strconv.ParseInt(string(res.Body), 10, 64)
		var want int64
		for _, w := range writes[pathID(res.URL)] {
			if !w.at.Before(res.Timestamp) {
				break
			}
			want = max(want, w.version)
		}
		if got < want {
			r.stale++
		}
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(math.Ceil(p*float64(len(lat))))-1)]
	}
	r.p50, r.p90, r.p99, r.p999 = q(0.5), q(0.9), q(0.99), q(0.999)
	if len(lat) > 0 {
		r.pmax = lat[len(lat)-1]
	}
	r.answeredPerSec = float64(r.answered) / dur.Seconds()
	return r
}
