package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidepg"
)

// event is one line of a worker's record: a read ("r"), a load ("l"), a
// commit ("c"), an invalidation that returned ("i") or failed ("w"), or a
// sample of the worker's heap and goroutines ("m"), or its breaker opening, closing
// or a Redis error ("b"), and what its replay queue held once closed ("q"). Times are wall-clock ns: every process
// runs on this one machine.
type event struct {
	T      string `json:"t"`
	Worker int    `json:"w"`
	Cache  string `json:"c,omitempty"`
	Key    int    `json:"k"`
	Start  int64  `json:"s,omitempty"`
	End    int64  `json:"e"`
	V      int64  `json:"v,omitempty"`
	Tier   string `json:"tier,omitempty"`
	Err    string `json:"err,omitempty"`
	Heap   int64  `json:"h,omitempty"` // "m" samples: heap in use, bytes
	Gor    int    `json:"g,omitempty"` // and goroutines
	// "k" events: aside's own consistency checker's counts so far, over
	// the worker's caches.
	Check *checkCounts `json:"ck,omitempty"`
}

// recorder writes events as JSON lines; a SIGKILLed worker loses only what
// it had not flushed, and those reads are simply not checked.
type recorder struct {
	mu  sync.Mutex
	w   *bufio.Writer
	f   *os.File
	enc *json.Encoder
}

func newRecorder(path string) (*recorder, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(f, 1<<16)
	return &recorder{w: w, f: f, enc: json.NewEncoder(w)}, nil
}

func (r *recorder) add(e event) {
	r.mu.Lock()
	_ = r.enc.Encode(e)
	r.mu.Unlock()
}

func (r *recorder) flush() {
	r.mu.Lock()
	_ = r.w.Flush()
	r.mu.Unlock()
}

// outcomeSlot carries a read's outcome from the tracing hook to its record.
type outcomeKey struct{}

type slotTracer struct{}

func (slotTracer) Start(ctx context.Context, _, _ string) (context.Context, aside.Span) {
	slot, _ := ctx.Value(outcomeKey{}).(*aside.Outcomes)
	return ctx, slotSpan{slot}
}

type slotSpan struct{ slot *aside.Outcomes }

func (s slotSpan) End(os aside.Outcomes, _ error) {
	if s.slot != nil {
		*s.slot = os
	}
}

// loadErr is how a load's record says that the source failed: a row not
// found is an answer, not a failure.
func loadErr(err error) string {
	if err == nil || errors.Is(err, aside.ErrNotFound) {
		return ""
	}
	return err.Error()
}

// loadNote holds the loads a read runs until the read returns, to stamp
// them with its outcome — a degraded load runs without a lease, by design.
// A load that ends after its read returned (a background refresh) is
// recorded as it ends, as "background".
type loadNote struct {
	mu      sync.Mutex
	pending []event
	done    bool
}

func (n *loadNote) add(rec *recorder, e event) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done {
		e.Tier = "background"
		rec.add(e)
		return
	}
	n.pending = append(n.pending, e)
}

func (n *loadNote) finish(rec *recorder, tier string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.done = true
	for _, e := range n.pending {
		e.Tier = tier
		rec.add(e)
	}
}

// caches is the mix every worker runs, on one Store.
type caches struct {
	store  *aside.Store
	plain  *aside.Cache[row] // Get, and GetMany
	tagged *aside.Cache[row] // Get tagged by bucket; writers invalidate the bucket
	l1     *aside.Cache[row] // strict L1
	stale  *aside.Cache[row] // stale-while-revalidate profile: expiry only, never after an invalidation
}

const buckets = 16

func bucket(id int) string { return "bucket:" + strconv.Itoa(id%buckets) }

func key(id int) string { return aside.Key(strconv.Itoa(id)) }

// openCaches opens the mix; extra options (the checker's) go to every cache.
func openCaches(redisAddr string, cluster bool, extra []aside.Option, opts ...aside.StoreOption) (*caches, error) {
	with := func(o ...aside.Option) []aside.Option { return append(o, extra...) }
	var rdb redis.UniversalClient
	if cluster {
		rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(redisAddr, ","), ContextTimeoutEnabled: true,
			DisableIdentity: true, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	} else {
		rdb = redis.NewClient(&redis.Options{Addr: redisAddr, ContextTimeoutEnabled: true, DisableIdentity: true,
			MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	}
	short := aside.Profile{Name: "short", TTL: 3 * time.Second, Jitter: time.Second, LoadTimeout: 2 * time.Second, EarlyRefresh: 1}
	swr := short
	swr.Name, swr.StaleWindow = "swr", 5*time.Second
	store, err := aside.NewStore(rdb, append([]aside.StoreOption{aside.WithPrefix("chaos"), aside.WithProfiles(short, swr),
		aside.WithTracer(slotTracer{}), aside.WithBreaker(3, 500*time.Millisecond)}, opts...)...)
	if err != nil {
		return nil, err
	}
	c := &caches{store: store}
	if c.plain, err = aside.New[row](store, "plain", with(aside.WithProfile("short"))...); err != nil {
		return nil, err
	}
	if c.tagged, err = aside.New[row](store, "tagged", with(aside.WithProfile("short"))...); err != nil {
		return nil, err
	}
	if c.l1, err = aside.New[row](store, "l1", with(aside.WithProfile("short"), aside.WithL1(1000, time.Second))...); err != nil {
		return nil, err
	}
	if c.stale, err = aside.New[row](store, "swr", with(aside.WithProfile("swr"))...); err != nil {
		return nil, err
	}
	return c, nil
}

// breakerEvents records the Store's breaker opening and closing ("b"), and
// the Redis errors that open it — at most one every 100 ms.
func breakerEvents(rec *recorder, id int) aside.Observer {
	var last atomic.Int64
	return func(e aside.Event) {
		now := time.Now().UnixNano()
		switch e.Kind {
		case aside.EventBreakerOpen, aside.EventBreakerClosed:
			rec.add(event{T: "b", Worker: id, End: now, Tier: e.Kind.String()})
		case aside.EventInconsistent: // aside's own checker, beside the run's
			k, _ := strconv.Atoi(e.Key)
			rec.add(event{T: "x", Worker: id, Cache: e.Cache, Key: k, End: now, Err: fmt.Sprint(e.Err)})
		case aside.EventRedisError:
			if l := last.Load(); now-l > int64(100*time.Millisecond) && last.CompareAndSwap(l, now) {
				rec.add(event{T: "b", Worker: id, End: now, Tier: e.Kind.String(), Err: fmt.Sprint(e.Err)})
			}
		}
	}
}

// runWorker reads (role "reader") or writes (role "writer") until SIGTERM.
func runWorker(role string, id int, redisAddr, table, out string, cfg config) error {
	keys := cfg.keys
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	src, err := openSource(ctx, cfg.dbURL, table)
	if err != nil {
		return err
	}
	defer src.close()
	rec, err := newRecorder(out)
	if err != nil {
		return err
	}
	defer rec.f.Close()
	defer rec.flush()
	c, err := openCaches(redisAddr, cfg.cluster, []aside.Option{checkWith(src, cfg)}, aside.WithObserver(breakerEvents(rec, id)))
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed {
			_ = c.store.Close()
		}
	}()
	go func() { // flush often: a SIGKILL loses at most this much
		for i := 0; ; i++ {
			time.Sleep(100 * time.Millisecond)
			if i%10 == 0 {
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				rec.add(event{T: "m", Worker: id, End: time.Now().UnixNano(), Heap: int64(m.HeapInuse), Gor: runtime.NumGoroutine()})
				rec.add(event{T: "k", Worker: id, End: time.Now().UnixNano(), Check: c.checkerCounts()})
			}
			rec.flush()
		}
	}()
	// SIGUSR1 asks a writer to commit its next write and then hang before
	// invalidating: the orchestrator SIGKILLs it there.
	var hang atomic.Bool
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			hang.Store(true)
		}
	}()
	var wg sync.WaitGroup
	var box *asidepg.Outbox
	if cfg.outbox && role == "writer" {
		// Each writer runs a relay too: the other one's applies what a
		// killed writer committed and never applied.
		// A grace of 2 s: on this 2-core machine a writer's deletion of the
		// rows it applied can lag past the default 500 ms, and a relay then
		// applies them again — a duplicate invalidation the checker cannot
		// see, which revokes a reader's lease (counted as a load beside a
		// lease). A killed writer's change still takes effect well within
		// the run's 3 s TTL.
		if box, err = asidepg.New(src.(*pgSource).pool, c.store, asidepg.WithGrace(2*time.Second)); err != nil {
			return err
		}
		wg.Go(func() { _ = box.Relay(ctx) })
		defer box.Close()
	}
	n := 4
	if role == "writer" {
		n = 1
	}
	for g := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(id), uint64(g)))
			zipf := rand.NewZipf(r, 1.2, 1, uint64(keys-1))
			for ctx.Err() == nil {
				k := int(zipf.Uint64())
				if role == "writer" {
					write(ctx, c, src, box, rec, id, k, cfg.broken, &hang)
					// 4–20 ms between writes (2–10 before the outbox): each write
					// now also inserts and deletes an outbox row, and the
					// PostgreSQL of a 2-core machine then ran loads past their
					// 2 s timeout.
					time.Sleep(time.Duration(4+r.IntN(16)) * time.Millisecond)
					continue
				}
				read(ctx, c, src, rec, id, r, zipf, k, cfg.loadWork)
				// A moment between reads, as a service's requests have: 24
				// reader goroutines in a closed loop took both cores from
				// PostgreSQL, whose single-row reads then took up to 1 s and
				// pushed reads past the liveness bound in steady windows.
				time.Sleep(time.Millisecond)
			}
		}()
	}
	wg.Wait()
	// A worker stopped cleanly drains its replay queue: Close replays it.
	closed = true
	err = c.store.Close()
	rec.add(event{T: "k", Worker: id, End: time.Now().UnixNano(), Check: c.checkerCounts()})
	pending, _ := c.store.Pending()
	e := event{T: "q", Worker: id, End: time.Now().UnixNano(), V: int64(pending)}
	if err != nil {
		e.Err = err.Error()
	}
	rec.add(e)
	return nil
}

func read(ctx context.Context, c *caches, src source, rec *recorder, id int, r *rand.Rand, zipf *rand.Zipf, k int, work time.Duration) {
	var note loadNote
	load := func(cache string, k int) aside.Loader[row] {
		return func(ctx context.Context) (row, error) {
			s := time.Now().UnixNano()
			v, err := src.load(ctx, k)
			time.Sleep(work)
			note.add(rec, event{T: "l", Worker: id, Cache: cache, Key: k, Start: s, End: time.Now().UnixNano(), Err: loadErr(err)})
			return v, err
		}
	}
	var outcomes aside.Outcomes
	octx := context.WithValue(ctx, outcomeKey{}, &outcomes)
	start := time.Now().UnixNano()
	var v row
	var err error
	var name string
	switch p := r.IntN(10); {
	case p < 3:
		name = "plain"
		v, err = c.plain.Get(octx, key(k), load(name, k))
	case p < 5:
		name = "tagged"
		v, err = c.tagged.Get(octx, key(k), load(name, k), aside.Tags(bucket(k)))
	case p < 7:
		name = "l1"
		v, err = c.l1.Get(octx, key(k), load(name, k))
	case p < 8:
		name = "swr"
		v, err = c.stale.Get(octx, key(k), load(name, k))
	default: // a batch of the plain cache
		ids := []int{k, int(zipf.Uint64()), int(zipf.Uint64())}
		byID, err := aside.GetBatch(octx, c.plain, ids, aside.Batch[int, row]{
			Key: key,
			Load: func(ctx context.Context, ids []int) (map[int]row, error) {
				s := time.Now().UnixNano()
				m, err := src.loadMany(ctx, ids)
				time.Sleep(work)
				for _, id2 := range ids {
					note.add(rec, event{T: "l", Worker: id, Cache: "plain", Key: id2, Start: s, End: time.Now().UnixNano(), Err: loadErr(err)})
				}
				return m, err
			},
		})
		end := time.Now().UnixNano()
		tier := "batch" // a batch's loads take the tier of its keys' loads that had no lease, if any did
		for _, o := range []aside.Outcome{aside.OutcomeDegraded, aside.OutcomeWaitTimeout} {
			if outcomes[o] > 0 {
				tier = o.String()
				break
			}
		}
		note.finish(rec, tier)
		if ctx.Err() != nil {
			return // the worker is stopping: its own ctx ended the read
		}
		for _, id2 := range ids {
			e := event{T: "r", Worker: id, Cache: "batch", Key: id2, Start: start, End: end, V: byID[id2].Version, Tier: "batch"}
			if err != nil {
				e.Err = err.Error()
			}
			rec.add(e)
		}
		return
	}
	tier := "none"
	if o, one := outcomes.Only(); one {
		tier = o.String()
	}
	note.finish(rec, tier)
	e := event{T: "r", Worker: id, Cache: name, Key: k, Start: start, End: time.Now().UnixNano(), V: v.Version, Tier: tier}
	if err != nil && ctx.Err() == nil {
		e.Err = err.Error()
	}
	if ctx.Err() == nil {
		rec.add(e)
	}
}

// write commits a new version of k, then invalidates it the way the README
// recommends — with the outbox, its invalidations recorded in the write's
// transaction and applied just after its commit; without, Store.Write — and
// records the invalidation only once it has returned without error: the
// guarantee is about invalidations that returned.
func write(ctx context.Context, c *caches, src source, box *asidepg.Outbox, rec *recorder, id, k int, broken bool, hang *atomic.Bool) {
	var v int64
	changes := []aside.Change{c.plain.Changed(key(k)), c.l1.Changed(key(k)), c.stale.Changed(key(k)), c.store.TagsChanged(bucket(k))}
	if broken { // the checker's own test: a write that forgets one cache
		changes = changes[1:]
	}
	committed := func() {
		rec.add(event{T: "c", Worker: id, Key: k, End: time.Now().UnixNano(), V: v})
		if hang.Load() { // committed; the invalidation never runs
			rec.flush()
			select {}
		}
	}
	var err error
	if box != nil {
		var recorded asidepg.Recorded
		err = pgx.BeginFunc(ctx, src.(*pgSource).pool, func(tx pgx.Tx) (err error) {
			if v, err = src.(*pgSource).bumpIn(ctx, tx, k); err != nil {
				return err
			}
			recorded, err = box.Record(ctx, tx, changes...)
			return err
		})
		if err == nil {
			committed()
			err = recorded.Apply(ctx)
		}
	} else {
		err = c.store.Write(ctx, func(ctx context.Context) (err error) {
			v, err = src.bump(ctx, k)
			if err == nil {
				committed()
			}
			return err
		}, changes...)
	}
	if err == nil {
		rec.add(event{T: "i", Worker: id, Key: k, End: time.Now().UnixNano(), V: v})
	} else if ctx.Err() == nil {
		rec.add(event{T: "w", Worker: id, Key: k, End: time.Now().UnixNano(), V: v, Err: fmt.Sprint(err)})
	}
}
