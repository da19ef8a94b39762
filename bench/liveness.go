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
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	rcache "github.com/go-redis/cache/v9"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/asidecache/aside"
)

const (
	liveRows     = 2000
	liveWriteOne = 50 // one request in 50 is a write: 2 %
	liveTimeout  = 5 * time.Second
)

// product is a row; Version goes up by one with every write, so a read that
// returns a lower version than a write that had answered before the read
// began is a stale read.
type product struct {
	ID      int    `json:"id" msgpack:"i"`
	Version int64  `json:"version" msgpack:"v"`
	Payload string `json:"payload" msgpack:"p"`
}

// source is the database: PostgreSQL where reachable, else rows in memory
// that take as long as the database's reads.
type source struct {
	pool  *pgxpool.Pool
	mu    sync.Mutex
	rows  map[int]int64
	reads atomic.Int64
	table string
}

const pgRead = "SELECT version, payload, pg_sleep(0.002)::text FROM %s WHERE id = $1"

func openSource(ctx context.Context) (*source, string) {
	s := &source{table: prefix + "_products", rows: map[int]int64{}}
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		url = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	pool, err := pgxpool.New(ctx, url+"&pool_max_conns=32")
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		return s, "rows in memory, 2.5 ms a read (no PostgreSQL: " + err.Error() + ")"
	}
	for _, q := range []string{
		fmt.Sprintf("CREATE TABLE %s (id int PRIMARY KEY, version bigint NOT NULL, payload text NOT NULL)", s.table),
		fmt.Sprintf("INSERT INTO %s SELECT i, 1, repeat('x', 400) FROM generate_series(1, %d) i", s.table, liveRows),
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			pool.Close()
			return s, "rows in memory (PostgreSQL: " + err.Error() + ")"
		}
	}
	s.pool = pool
	return s, "PostgreSQL 127.0.0.1:5432, a read ~2.5 ms (pg_sleep 2 ms)"
}

func (s *source) close() {
	if s.pool != nil {
		_, _ = s.pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+s.table)
		s.pool.Close()
	}
}

func (s *source) read(ctx context.Context, id int) (product, error) {
	s.reads.Add(1)
	p := product{ID: id}
	if s.pool == nil {
		time.Sleep(2500 * time.Microsecond)
		s.mu.Lock()
		p.Version = max(s.rows[id], 1)
		s.mu.Unlock()
		p.Payload = strings.Repeat("x", 400)
		return p, nil
	}
	var sleep string
	err := s.pool.QueryRow(ctx, fmt.Sprintf(pgRead, s.table), id).Scan(&p.Version, &p.Payload, &sleep)
	return p, err
}

// write bumps the row's version in one transaction and returns it.
func (s *source) write(ctx context.Context, id int) (int64, error) {
	if s.pool == nil {
		time.Sleep(2500 * time.Microsecond)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.rows[id] = max(s.rows[id], 1) + 1
		return s.rows[id], nil
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var v int64
	if err := tx.QueryRow(ctx, fmt.Sprintf("UPDATE %s SET version = version + 1 WHERE id = $1 RETURNING version", s.table), id).Scan(&v); err != nil {
		return 0, err
	}
	return v, tx.Commit(ctx)
}

// service is one variant's way to read and to write a product.
type service struct {
	name  string
	read  func(ctx context.Context, id int) (product, error)
	write func(ctx context.Context, id int) (int64, error) // the version committed
	close func()
}

func liveClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true, ContextTimeoutEnabled: true, MaxRetries: -1})
}

// breakerOpened counts the times an aside Store's breaker opened in the
// current run.
var breakerOpened atomic.Int64

// liveVariants are the services compared, in the order of the table.
var liveVariants = []string{"no cache", "go-redis/cache", "aside", "aside + L1", "aside + L1 ×2"}

// newService returns the variant name over the Redis at addr.
func newService(name, addr string, db *source) service {
	key := func(id int) string { return strconv.Itoa(id) }
	switch name {
	case "go-redis/cache":
		{
			// As its README shows it: a client with go-redis' defaults.
			rdb := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
			c := rcache.New(&rcache.Options{Redis: rdb})
			return service{name: "go-redis/cache", close: func() { _ = rdb.Close() },
				read: func(ctx context.Context, id int) (product, error) {
					var p product
					err := c.Once(&rcache.Item{Ctx: ctx, Key: prefix + ":grc:" + key(id), Value: &p, TTL: time.Hour,
						Do: func(*rcache.Item) (any, error) { return db.read(ctx, id) }})
					return p, err
				},
				write: func(ctx context.Context, id int) (int64, error) {
					v, err := db.write(ctx, id)
					if err != nil {
						return 0, err
					}
					return v, c.Delete(ctx, prefix+":grc:"+key(id))
				}}
		}
	case "aside":
		return asideService(name, addr, db)
	case "aside + L1":
		return asideService(name, addr, db, aside.WithL1(10_000, time.Minute))
	case "aside + L1 ×2":
		// Two replicas of the service, each with its Store and its L1, the
		// requests spread between them: a strict L1's invalidation waits
		// for the other instance's acknowledgement.
		a := asideService(name, addr, db, aside.WithL1(10_000, time.Minute))
		b := asideService(name, addr, db, aside.WithL1(10_000, time.Minute))
		var n atomic.Uint64
		pick := func() service {
			if n.Add(1)%2 == 0 {
				return a
			}
			return b
		}
		return service{name: name, close: func() { a.close(); b.close() },
			read:  func(ctx context.Context, id int) (product, error) { return pick().read(ctx, id) },
			write: func(ctx context.Context, id int) (int64, error) { return pick().write(ctx, id) }}
	}
	return service{name: "no cache", read: db.read, write: db.write, close: func() {}}
}

func asideService(name, addr string, db *source, opts ...aside.Option) service {
	rdb := liveClient(addr)
	t0 := time.Now()
	debug := os.Getenv("LIVE_DEBUG") != ""
	sopts := []aside.StoreOption{aside.WithObserver(func(e aside.Event) {
		if e.Kind == aside.EventBreakerOpen {
			breakerOpened.Add(1)
		}
		if debug && (e.Kind == aside.EventBreakerOpen || e.Kind == aside.EventBreakerClosed || e.Err != nil && !strings.Contains(e.Err.Error(), "timeout")) {
			fmt.Fprintln(os.Stderr, time.Since(t0).Round(time.Millisecond), e.Kind, e.Err)
		}
	})}
	store, err := aside.NewStore(rdb, append(sopts, aside.WithPrefix(prefix+"live"))...)
	must(err)
	products, err := aside.New[product](store, "product", append(opts, aside.WithProfile(aside.Master))...)
	must(err)
	return service{name: name, close: func() { _ = store.Close(); _ = rdb.Close() },
		read: func(ctx context.Context, id int) (product, error) {
			return products.Get(ctx, aside.Key(strconv.Itoa(id)), func(ctx context.Context) (product, error) { return db.read(ctx, id) })
		},
		write: func(ctx context.Context, id int) (int64, error) {
			var v int64
			err := store.Write(ctx, func(ctx context.Context) (err error) {
				v, err = db.write(ctx, id)
				return err
			}, products.Changed(aside.Key(strconv.Itoa(id))))
			if errors.Is(err, aside.ErrQueued) {
				err = nil // committed; the invalidation is replayed (the README's handler)
			}
			return v, err
		}}
}

// handler serves GET /p/{id} and PUT /p/{id}: the product, or the version a
// write committed.
func (s service) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /p/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.Atoi(r.PathValue("id"))
		p, err := s.read(r.Context(), id)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = fmt.Fprintf(w, "%d", p.Version)
	})
	mux.HandleFunc("PUT /p/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.Atoi(r.PathValue("id"))
		v, err := s.write(r.Context(), id)
		if err != nil {
			// The version is there when the transaction committed: a
			// committed write answered as a failure.
			http.Error(w, strconv.FormatInt(v, 10)+" "+err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = fmt.Fprintf(w, "%d", v)
	})
	return mux
}

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

func pathID(url string) int {
	id, _ := strconv.Atoi(filepath.Base(url))
	return id
}
