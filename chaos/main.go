// Command chaos runs real aside Stores in worker processes against a Redis
// of its own and a PostgreSQL table, injects faults on a schedule — workers
// SIGKILLed mid-load or SIGSTOPped past their L1 lease, Redis stalled,
// killed and restarted empty, pub/sub connections killed — records every
// read, load and invalidation, and checks them: a read that began after an
// invalidation of its key had returned, and got an older version, is stale.
// It prints a Markdown report and exits 1 when a read was stale or failed.
//
//	cd chaos && go run . -d 60s
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidetest"
)

func main() {
	role := flag.String("role", "", "internal: reader or writer (a worker process)")
	id := flag.Int("id", 0, "internal: worker id")
	redisAddr := flag.String("redis", "", "internal: the run's Redis (a Cluster's masters, comma-separated)")
	cluster := flag.Bool("cluster", false, "run on a 3-master Redis Cluster with a replica each (scripts/redis-cluster.sh): adds failovers and resharding")
	out := flag.String("out", "", "internal: the worker's record file")
	table := flag.String("table", "", "internal: the run's table")
	dur := flag.Duration("d", 60*time.Second, "how long to run")
	readers := flag.Int("workers", 6, "reader processes")
	writers := flag.Int("writers", 2, "writer processes")
	keys := flag.Int("keys", 500, "rows in the source")
	every := flag.Duration("every", 4*time.Second, "time between faults")
	dbURL := flag.String("db", envOr("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"), `the source of truth: a PostgreSQL URL, or "memory" (a table in this process)`)
	broken := flag.Bool("broken", false, "writers skip invalidating the plain cache: the checker must fail")
	faultIDs := flag.String("faults", "all", "the faults to inject, comma-separated ids: "+faultIDList())
	keep := flag.Bool("keep", false, "keep the run's directory: the workers' records (JSON lines) and Redis' log")
	loadWork := flag.Duration("load-work", 0, "time each load spends after its query (more work per load: longer races with writers)")
	outbox := flag.Bool("outbox", true, "writers record their invalidations in the write's transaction (asidepg) and run its relay; on PostgreSQL only")
	checkHits := flag.Float64("check-hits", 0.01, "the fraction of hits aside's consistency checker (aside.WithCheck) samples in every worker")
	checkInvals := flag.Float64("check-invalidations", 0.2, "the fraction of invalidations it follows")
	checkBudget := flag.Float64("check-budget", 5, "its loader calls a second, per cache and worker")
	flag.Parse()
	cfg := config{dur: *dur, readers: *readers, writers: *writers, keys: *keys, every: *every, dbURL: *dbURL, broken: *broken,
		faults: *faultIDs, loadWork: *loadWork, keep: *keep, cluster: *cluster, outbox: *outbox && *dbURL != "memory",
		checkHits: *checkHits, checkInvals: *checkInvals, checkBudget: *checkBudget}
	if *role != "" {
		if err := runWorker(*role, *id, *redisAddr, *table, *out, cfg); err != nil {
			fmt.Fprintln(os.Stderr, "chaos worker:", err)
			os.Exit(1)
		}
		return
	}
	res, err := orchestrate(cfg, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(2)
	}
	if !res.held() {
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// proc is one worker process.
type proc struct {
	role string
	id   int
	cmd  *exec.Cmd
	out  string
}

// config is one run's settings.
type config struct {
	dur, every             time.Duration
	readers, writers, keys int
	dbURL                  string
	broken                 bool
	faults                 string        // fault ids, comma-separated; "" is all
	loadWork               time.Duration // each load's time after its query
	keep                   bool          // keep the run's directory
	cluster                bool          // a Redis Cluster instead of a single node
	outbox                 bool          // writes go through the asidepg outbox
	checkHits, checkInvals float64       // aside.WithCheck's sampling in the workers
	checkBudget            float64       // and its loads a second, per cache
}

// result is what the checker found.
type result struct {
	total verdict
	left  int
	// outboxLeft counts the outbox rows still there once the run has
	// waited for them to drain: changes that committed and never applied.
	outboxLeft int
	grew       int // worker processes whose goroutines or heap grew
	// undrained counts workers stopped cleanly whose replay queue still
	// held invalidations after Close.
	undrained int
}

func (r result) held() bool {
	return r.total.Stale == 0 && r.total.Failed == 0 && r.left == 0 && r.outboxLeft == 0 && r.total.Unleased == 0 && r.grew == 0 && r.undrained == 0 &&
		r.total.TooSlow == 0 && r.total.LostWaits == 0
}

type run struct {
	dir, table string
	cfg        config
	redis      *redisServer
	cluster    *clusterServer        // with -cluster, instead of redis
	admin      redis.UniversalClient // the orchestrator's own connection to the run's Redis
	proxy      *asidetest.Proxy      // odd-numbered workers reach Redis through it: latency, black holes
	self       string
	procs      []*proc
	next       int
}

// addr is where worker id reaches Redis: the Cluster's masters; on a
// single node, odd-numbered workers through the proxy (0: directly).
func (r *run) addr(id int) string {
	switch {
	case r.cluster != nil:
		return strings.Join(r.cluster.addrs, ",")
	case id%2 == 1:
		return r.proxy.Addr()
	}
	return r.redis.addr()
}

func (r *run) spawn(role string) (*proc, error) {
	r.next++
	p := &proc{role: role, id: r.next, out: filepath.Join(r.dir, fmt.Sprintf("%s-%d.jsonl", role, r.next))}
	p.cmd = exec.Command(r.self, "-role", role, "-id", strconv.Itoa(p.id), "-redis", r.addr(p.id), "-cluster="+strconv.FormatBool(r.cfg.cluster), "-db", r.cfg.dbURL,
		"-table", r.table, "-out", p.out, "-keys", strconv.Itoa(r.cfg.keys), "-broken="+strconv.FormatBool(r.cfg.broken),
		"-load-work", r.cfg.loadWork.String(), "-outbox="+strconv.FormatBool(r.cfg.outbox),
		"-check-hits", fmt.Sprint(r.cfg.checkHits), "-check-invalidations", fmt.Sprint(r.cfg.checkInvals),
		"-check-budget", fmt.Sprint(r.cfg.checkBudget))
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	r.procs = append(r.procs, p)
	return p, nil
}

func orchestrate(cfg config, w io.Writer) (result, error) {
	dur, readers, writers, keys, every, dbURL := cfg.dur, cfg.readers, cfg.writers, cfg.keys, cfg.every, cfg.dbURL
	ctx := context.Background()
	faults, err := pickFaults(cfg.faults, cfg.cluster)
	if err != nil {
		return result{}, err
	}
	self, err := os.Executable()
	if err != nil {
		return result{}, err
	}
	dir, err := os.MkdirTemp("", "aside-chaos-")
	if err != nil {
		return result{}, err
	}
	if !cfg.keep {
		defer os.RemoveAll(dir)
	} else {
		defer fmt.Fprintf(os.Stderr, "chaos: the workers' records are in %s\n", dir)
	}
	r := &run{dir: dir, table: fmt.Sprintf("chaos_rows_%d_%d", os.Getpid(), time.Now().UnixNano()%1e6), cfg: cfg, self: self}
	if dbURL == "memory" {
		table, addr, err := serveMemTable(keys)
		if err != nil {
			return result{}, err
		}
		defer table.close()
		r.cfg.dbURL = addr // the workers' -db
	}
	var box *outboxWatch
	if cfg.outbox {
		// A schema of the run's own, first on the workers' search_path:
		// the outbox and the source table live there.
		if box, err = newOutboxWatch(ctx, dbURL); err != nil {
			return result{}, fmt.Errorf("no PostgreSQL at %s (-db URL, or DATABASE_URL; -db memory keeps the table in this process): %w", dbURL, err)
		}
		defer box.close()
		r.cfg.dbURL = box.url
	}
	src, err := openSource(ctx, r.cfg.dbURL, r.table)
	if err != nil {
		return result{}, fmt.Errorf("no PostgreSQL at %s (-db URL, or DATABASE_URL; -db memory keeps the table in this process): %w", dbURL, err)
	}
	defer src.close()
	if err := src.create(ctx, keys); err != nil {
		return result{}, err
	}
	defer func() { _ = src.drop(ctx) }()
	if cfg.cluster {
		if r.cluster, err = startCluster(filepath.Join(dir, "cluster")); err != nil {
			return result{}, err
		}
		defer r.cluster.stop()
		r.admin = redis.NewClusterClient(&redis.ClusterOptions{Addrs: r.cluster.addrs, DisableIdentity: true, MaxRetries: -1})
	} else {
		if r.redis, err = startRedis(dir, 0); err != nil {
			return result{}, err
		}
		defer r.redis.kill()
		if r.proxy, err = asidetest.ListenProxy(r.redis.addr()); err != nil {
			return result{}, err
		}
		defer r.proxy.Close()
		r.admin = redis.NewClient(&redis.Options{Addr: r.redis.addr(), DisableIdentity: true, MaxRetries: -1})
	}
	defer r.admin.Close()
	for range readers {
		if _, err := r.spawn("reader"); err != nil {
			return result{}, err
		}
	}
	for range writers {
		if _, err := r.spawn("writer"); err != nil {
			return result{}, err
		}
	}
	defer func() {
		for _, p := range r.procs {
			if p.cmd.ProcessState == nil {
				_ = p.cmd.Process.Signal(syscall.SIGCONT)
				_ = p.cmd.Process.Kill()
				_ = p.cmd.Wait()
			}
		}
	}()

	started := time.Now()
	var windows []window
	box.watch()
	time.Sleep(every / 2) // warm-up: caches fill, L1 leases are taken
	for i := 0; time.Since(started)+every < dur; i++ {
		f := faults[i%len(faults)]
		w := window{Name: f.name, Start: time.Now().UnixNano(), Excused: f.excused, MayOverlap: f.mayOverlap, Slow: f.slow}
		undo, err := f.do(r)
		if err != nil {
			fmt.Fprintf(os.Stderr, "chaos: %s: %v\n", f.name, err)
		}
		if undo != nil {
			undo()
		}
		w.Undone = time.Now().UnixNano()
		w.End = w.Undone + int64(cmp.Or(f.after, time.Second)) // reads shortly after the undo still count to it
		windows = append(windows, w)
		time.Sleep(every)
	}
	if rest := dur - time.Since(started); rest > 0 {
		time.Sleep(rest)
	}
	for _, p := range r.procs {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range r.procs {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Wait()
		}
	}
	// What writers committed and did not apply — killed, stopped between
	// their commit and their apply — waits in the outbox: a relay of the
	// orchestrator's applies it, as any process's would.
	outboxLeft, err := box.drain(ctx, r, 10*time.Second)
	if err != nil {
		return result{}, err
	}
	left, err := leftStale(ctx, r, src)
	if err != nil {
		return result{}, err
	}
	var files []string
	for _, p := range r.procs {
		files = append(files, p.out)
	}
	events, err := readEvents(files)
	if err != nil {
		return result{}, err
	}
	if cfg.keep { // beside the records, for a second look
		if b, err := json.MarshalIndent(windows, "", "  "); err == nil {
			_ = os.WriteFile(filepath.Join(dir, "windows.json"), b, 0o644)
		}
	}
	total, per := check(events, windows)
	recoveries(events, windows)
	ps := growth(events)
	res := result{total: total, left: left, outboxLeft: outboxLeft, grew: grew(ps), undrained: undrained(events)}
	report(w, cfg, res, per, windows, events, ps)
	box.report(w, outboxLeft)
	return res, nil
}

// leftStale peeks every key of every cache through a fresh Store after the
// run and counts entries older than the source: what a fault left behind.
func leftStale(ctx context.Context, r *run, src source) (int, error) {
	c, err := openCaches(r.addr(0), r.cluster != nil, nil)
	if err != nil {
		return 0, err
	}
	defer c.store.Close()
	versions, err := src.versions(ctx)
	if err != nil {
		return 0, err
	}
	left := 0
	for id := range r.cfg.keys {
		for _, peek := range []func() (row, error){
			func() (row, error) { return c.plain.Peek(ctx, key(id)) },
			func() (row, error) { return c.tagged.Peek(ctx, key(id), aside.Tags(bucket(id))) },
			func() (row, error) { return c.l1.Peek(ctx, key(id)) },
			func() (row, error) { return c.stale.Peek(ctx, key(id)) },
		} {
			v, err := peek()
			if err == nil && v.Version < versions[id] {
				left++
			}
		}
	}
	return left, nil
}
