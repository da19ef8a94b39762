package aside_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// The seam matrix: every read path × L1 placement × kind of invalidation ×
// fault, on every backend. In each cell Store A invalidates and Store B
// reads, every read of B in a coalesced batch (both read afterwards); the
// row goes from version 1 to 2 before the invalidation. It must
// show: no read that started after the invalidation returned gets version 1
// — in any Store, with L1 or without (strict L1, with a 300 ms lease so that
// a Store cut off by a fault costs the invalidation at most that); no key
// left stale in any Store; the breaker back to
// closed and the replay queue drained; no read past its wait budget. No
// goroutine is left: TestMain checks with goleak.

type matrixPath struct {
	name               string
	fillTags, readTags []string
	many, negative     bool
	stale              bool // read in the stale window (stale-while-revalidate)
	leaseFirst         bool // every read starts with the lease script (read.go)
}

var matrixPaths = []matrixPath{
	{name: "Get", fillTags: []string{"t1", "t2"}, readTags: []string{"t1", "t2"}},
	{name: "Get-subset-of-tags", fillTags: []string{"t1", "t2"}, readTags: []string{"t1"}},
	{name: "GetMany", fillTags: []string{"t1", "t2"}, readTags: []string{"t1", "t2"}, many: true},
	{name: "negative", fillTags: []string{"t1", "t2"}, readTags: []string{"t1", "t2"}, negative: true},
	{name: "stale-while-revalidate", fillTags: []string{"t1", "t2"}, readTags: []string{"t1"}, stale: true},
	{name: "Get-untagged"},
	{name: "Get-lease-first", fillTags: []string{"t1", "t2"}, readTags: []string{"t1", "t2"}, leaseFirst: true},
}

var matrixL1 = []string{"off", "reader", "every"}

var matrixInvalidations = []string{"Invalidate", "InvalidateTags", "Set", "MarkStale", "MarkTagsStale", "Purge", "version"}

var matrixFaults = []string{"none", "caller-cancelled", "breaker", "pubsub-killed"}

// faultHook makes a client fail every command, as an unreachable Redis
// does, while down is set. It works on every topology; Pub/Sub reads are not
// hooked, so the bus goes on until its heartbeats fail.
type faultHook struct{ down *atomic.Bool }

// addFault makes every command of rdb fail while down is set — on a Cluster
// or a Ring, the node clients' too: the check of an outage asks each node.
func addFault(rdb redis.UniversalClient, down *atomic.Bool) {
	h := faultHook{down}
	rdb.AddHook(h)
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		c.OnNewNode(func(n *redis.Client) { n.AddHook(h) })
	case *redis.Ring:
		for _, s := range c.GetShardClients() {
			s.AddHook(h)
		}
		c.OnNewNode(func(n *redis.Client) { n.AddHook(h) })
	}
}

var errRefused = &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused (injected)")}

func (faultHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h faultHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.down.Load() {
			cmd.SetErr(errRefused)
			return errRefused
		}
		return next(ctx, cmd)
	}
}

func (h faultHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.down.Load() {
			for _, c := range cmds {
				c.SetErr(errRefused)
			}
			return errRefused
		}
		return next(ctx, cmds)
	}
}

// topology is a backend of the matrix: how to make a client, and how to
// kill every Pub/Sub connection (nil when it cannot).
type topology struct {
	name       string
	client     func(t testing.TB) redis.UniversalClient
	killPubSub func(t *testing.T)
}

func backendTopology(t *testing.T, b *backend) topology {
	top := topology{name: b.name, client: b.client}
	switch {
	case b.cluster != nil:
		top.killPubSub = func(t *testing.T) {
			for _, a := range b.cluster {
				rc := redis.NewClient(&redis.Options{Addr: a, DisableIdentity: true})
				_ = rc.ClientKillByFilter(bgCtx, "TYPE", "pubsub").Err()
				_ = rc.Close()
			}
		}
	case b.mini == nil:
		top.killPubSub = func(t *testing.T) { _ = adminClient(t).ClientKillByFilter(bgCtx, "TYPE", "pubsub").Err() }
	}
	return top
}

// matrixCounts add up what the cells saw.
type matrixCounts struct {
	cells, reads, stale, keysStale, slow, breakerStuck atomic.Int64
}

func TestSeamMatrix(t *testing.T) {
	requireLong(t)
	forEachBackend(t, func(t *testing.T, b *backend) {
		// The backends are servers of their own, and a cell mostly waits (a
		// silent Store's L + margin, a breaker's cooldown): side by side,
		// the matrix takes its slowest backend's time, not their sum.
		t.Parallel()
		runMatrix(t, backendTopology(t, b), matrixPaths, matrixInvalidations)
	})
}

// TestSeamMatrixSentinelAndRing runs the matrix's L1 and fault columns on a
// Sentinel group and a two-shard Ring.
func TestSeamMatrixSentinelAndRing(t *testing.T) {
	paths := matrixPaths[:1]
	invs := []string{"Invalidate", "InvalidateTags"}
	t.Run("sentinel", func(t *testing.T) {
		g := startSentinelGroup(t)
		admin := func(t *testing.T) {
			rc := redis.NewClient(&redis.Options{Addr: g.master(t), DisableIdentity: true})
			defer rc.Close()
			_ = rc.ClientKillByFilter(bgCtx, "TYPE", "pubsub").Err()
		}
		runMatrix(t, topology{name: "sentinel", client: g.client, killPubSub: admin}, paths, invs)
	})
	t.Run("ring", func(t *testing.T) {
		newRing := startRing(t)
		runMatrix(t, topology{name: "ring", client: newRing}, paths, invs)
	})
}

func runMatrix(t *testing.T, top topology, paths []matrixPath, invs []string) {
	var n matrixCounts
	for _, p := range paths {
		for _, l1 := range matrixL1 {
			for _, inv := range invs {
				for _, fault := range matrixFaults {
					if fault == "pubsub-killed" && top.killPubSub == nil {
						continue // miniredis and the Ring have no CLIENT KILL here
					}
					if len(p.fillTags) == 0 && strings.Contains(inv, "Tags") {
						continue // nothing tagged to invalidate
					}
					name := strings.Join([]string{p.name, "L1=" + l1, inv, fault}, "/")
					t.Run(name, func(t *testing.T) { runCell(t, top, p, l1, inv, fault, &n, nil) })
				}
			}
		}
	}
	t.Logf("%s: %d cells, %d reads after an invalidation: %d stale where none is allowed, %d keys left stale, %d reads past their budget, %d breakers not closed",
		top.name, n.cells.Load(), n.reads.Load(), n.stale.Load(), n.keysStale.Load(), n.slow.Load(), n.breakerStuck.Load())
}

const (
	cellBudget   = 500 * time.Millisecond
	cellCooldown = 50 * time.Millisecond
)

// runCell runs one cell. With broken set, the Stores run that broken
// variant, and violations are only counted in n, not reported as failures.
func runCell(t *testing.T, top topology, p matrixPath, l1, inv, fault string, n *matrixCounts, broken *aside.TestHooks) {
	n.cells.Add(1)
	violation := t.Errorf
	if broken != nil {
		violation = t.Logf
	}
	prefix := uniquePrefix()
	clk := &clock{}
	prof := aside.Profile{Name: "matrix", TTL: time.Minute, LoadTimeout: 2 * time.Second, StaleWindow: time.Hour,
		NegativeTTL: time.Minute, WaitBudget: cellBudget}
	type side struct {
		store *aside.Store
		down  *atomic.Bool
		c     *aside.Cache[int]
		l1    bool
	}
	var db atomic.Int64
	db.Store(1)
	load := func(ctx context.Context) (int, error) {
		v := int(db.Load())
		time.Sleep(time.Duration(rand.N(2000)) * time.Microsecond) // widen the races
		if p.negative && v == 1 {
			return 0, aside.ErrNotFound
		}
		return v, nil
	}
	newSide := func(withL1 bool, version int, batched bool) *side {
		rdb := top.client(t)
		down := new(atomic.Bool)
		addFault(rdb, down)
		store, err := aside.NewStore(rdb, aside.WithPrefix(prefix), aside.WithOpTimeout(time.Second),
			aside.WithBreaker(2, cellCooldown), aside.WithClock(clk.now), aside.WithProfiles(prof),
			aside.WithL1Lease(300*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = store.Close() })
		// Store A reads as a Store does; every read of Store B goes in a
		// coalesced batch (coalesce.go).
		var h aside.TestHooks
		if broken != nil {
			h = *broken
		}
		h.BatchEveryRead = batched
		aside.SetStoreHooks(store, &h)
		opts := []aside.Option{aside.WithProfile("matrix"), aside.WithVersion(version)}
		if withL1 {
			opts = append(opts, aside.WithL1(100, time.Minute))
		}
		c, err := aside.New[int](store, "items", opts...)
		if err != nil {
			t.Fatal(err)
		}
		if withL1 {
			eventually(t, "the subscription", func() bool { up, _, _ := aside.BusState(store); return up })
		}
		return &side{store: store, down: down, c: c, l1: withL1}
	}
	a := newSide(l1 == "every", 1, false)
	bs := newSide(l1 != "off", 1, true)

	read := func(ctx context.Context, s *side, tags []string) (int, error) {
		opts := []aside.CallOption{aside.Tags(tags...)}
		if p.leaseFirst {
			opts = append(opts, aside.LeaseFirstCall())
		}
		var v int
		var err error
		if p.many {
			v, err = getViaMany(ctx, s.c, "k", load, opts...)
		} else {
			v, err = s.c.Get(ctx, "k", load, opts...)
		}
		if errors.Is(err, aside.ErrNotFound) {
			return 1, nil // the not-found of version 1
		}
		return v, err
	}
	// Fill: A writes the entry with every tag; each Store reads it as the
	// path reads (twice: L1).
	if v, err := read(bgCtx, a, p.fillTags); err != nil || v != 1 {
		t.Fatalf("fill = %d, %v", v, err)
	}
	for _, s := range []*side{a, a, bs, bs} {
		if v, err := read(bgCtx, s, p.readTags); err != nil || v != 1 {
			t.Fatalf("read before = %d, %v", v, err)
		}
	}
	if p.stale { // into the stale window: served stale while one refresh rewrites it
		clk.advance(2 * time.Minute)
		if _, err := read(bgCtx, bs, p.readTags); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the refresh", func() bool { return bs.c.Stats().Refreshes > 0 })
	}

	// The fault, before the invalidation.
	switch fault {
	case "breaker":
		bs.down.Store(true)
		for i := range 3 { // keys that are in no L1: each read reaches for Redis
			if _, err := bs.c.Get(bgCtx, "trip"+strconv.Itoa(i), load); err != nil && !errors.Is(err, aside.ErrNotFound) {
				t.Fatalf("read with Redis down: %v", err)
			}
		}
		// On a Cluster or a Ring, the check of the outage (every node
		// asked, in the background) opens it.
		eventually(t, "the breaker to open with Redis down", func() bool { return bs.store.BreakerState() == aside.BreakerOpen })
		_ = bs.c.Invalidate(bgCtx, "other") // fails and is queued: replayed on recovery
	case "pubsub-killed":
		top.killPubSub(t)
	}

	// The invalidation, after the source committed version 2.
	db.Store(2)
	soft := false
	var err error
	switch inv {
	case "Invalidate":
		err = a.c.Invalidate(bgCtx, "k")
	case "InvalidateTags":
		err = a.store.InvalidateTags(bgCtx, "t2")
	case "Set":
		err = a.c.Set(bgCtx, "k", 2, aside.Tags(p.fillTags...))
	case "MarkStale":
		err, soft = a.c.MarkStale(bgCtx, "k"), true
	case "MarkTagsStale":
		err, soft = a.store.MarkTagsStale(bgCtx, "t2"), true
	case "Purge":
		_, err = a.c.Purge(bgCtx)
	case "version": // a deploy: both Stores move to version 2 of the cache
		a, bs = newSide(a.l1, 2, false), newSide(bs.l1, 2, true)
	}
	if err != nil {
		t.Fatalf("%s: %v", inv, err)
	}

	// Reads after the invalidation returned.
	check := func(s *side, strict bool, ctx context.Context) {
		start := time.Now()
		v, err := read(ctx, s, p.readTags)
		if d := time.Since(start); d > cellBudget+time.Second {
			n.slow.Add(1)
			violation("a read took %v, budget %v", d, cellBudget)
		}
		if err != nil {
			if ctx == bgCtx {
				t.Errorf("read failed: %v", err)
			}
			return
		}
		n.reads.Add(1)
		if v != 2 && strict && !soft {
			n.stale.Add(1)
			violation("stale read: %d after %s returned (strict Store)", v, inv)
		}
	}
	if fault == "caller-cancelled" { // callers that give up mid-call: errors, never the old value
		for range 5 {
			ctx, cancel := context.WithTimeout(bgCtx, time.Duration(rand.N(3000))*time.Microsecond)
			check(bs, true, ctx)
			check(a, true, ctx)
			cancel()
		}
	}
	if fault == "breaker" {
		check(bs, true, bgCtx) // from the loader, while Redis is away
		bs.down.Store(false)
		time.Sleep(cellCooldown)
	}
	for range 3 {
		check(a, true, bgCtx)
		check(bs, true, bgCtx)
	}

	// No key left stale anywhere, once deliveries and refreshes are done.
	for _, s := range []*side{a, bs} {
		if !within(3*time.Second, func() bool { v, err := read(bgCtx, s, p.readTags); return err == nil && v == 2 }) {
			n.keysStale.Add(1)
			v, err := read(bgCtx, s, p.readTags)
			violation("key left stale: %d, %v", v, err)
		}
		if st := s.store.BreakerState(); st != aside.BreakerClosed {
			n.breakerStuck.Add(1)
			violation("breaker %v at the end", st)
		}
		if pending, _ := s.store.Pending(); pending != 0 {
			violation("%d invalidations still queued", pending)
		}
	}
}

// TestSeamMatrixCatchesBrokenVariants runs cells that failed before the
// protocol core with the broken variant that reproduces each defect: every
// one must show a violation, or the matrix could not catch its return.
func TestSeamMatrixCatchesBrokenVariants(t *testing.T) {
	requireLong(t)
	type brokenCell struct {
		what         string
		p            matrixPath
		l1, inv, flt string
		hooks        aside.TestHooks
		ring         bool
	}
	subset := matrixPaths[1] // Get naming a subset of the entry's tags
	cells := []brokenCell{
		{"L1 guarded by the call's tags (T11)", subset, "every", "InvalidateTags", "none", aside.TestHooks{CallTagsOnly: true}, false},
		{"refresh drops the entry's tags (T11)", matrixPaths[4], "off", "InvalidateTags", "none", aside.TestHooks{CallTagsOnly: true}, false},
		{"bus routed as a keyless command, trusted without heartbeats (T17)", matrixPaths[0], "every", "Invalidate", "none", aside.TestHooks{KeylessPublish: true, NoHeartbeat: true}, true},
		{"invalidation returns before other Stores' L1 acknowledge (T18)", matrixPaths[0], "reader", "Invalidate", "none",
			aside.TestHooks{NoAckWait: true, BeforeApply: func() { time.Sleep(20 * time.Millisecond) }}, false},
	}
	var newRing func(testing.TB) redis.UniversalClient
	for _, c := range cells {
		t.Run(c.what, func(t *testing.T) {
			top := topology{name: "miniredis-free", client: func(t testing.TB) redis.UniversalClient { return newClient(t, realAddrOrMini(t.(*testing.T))) }}
			runs := 1
			if c.ring {
				if newRing == nil {
					newRing = startRing(t)
				}
				top, runs = topology{name: "ring", client: newRing}, 12 // a prefix whose channel and "publish" share a shard escapes: 1 in 4096
			}
			var n matrixCounts
			for range runs {
				t.Run("cell", func(t *testing.T) { runCell(t, top, c.p, c.l1, c.inv, c.flt, &n, &c.hooks) })
			}
			if n.stale.Load()+n.keysStale.Load() == 0 {
				t.Errorf("%s: the matrix shows no violation: it could not catch this defect", c.what)
			}
		})
	}
}
