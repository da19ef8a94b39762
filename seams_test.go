package aside_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// The defects found where two features meet, each as a test that runs
// through every read path and against the broken variant that reproduces
// it, so that the test is seen to fail.

// TestT10BreakerClosesWhateverCallersDo: Redis down opens the breaker;
// Redis back, and from then on every caller's ctx has already ended (Get
// and Invalidate alike). The breaker closes within cooldown + op timeout,
// and the invalidation queued meanwhile is replayed. Broken variant: the
// probe is the caller's call, and a probe cut short keeps its slot (v1).
func TestT10BreakerClosesWhateverCallersDo(t *testing.T) {
	requireLong(t)
	const opTimeout, cooldown = 50 * time.Millisecond, 100 * time.Millisecond
	run := func(t *testing.T, down, up func(), rdb redis.UniversalClient, broken bool) bool {
		store, err := aside.NewStore(rdb, aside.WithPrefix(uniquePrefix()), aside.WithOpTimeout(opTimeout), aside.WithBreaker(1, cooldown))
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		aside.SetStoreHooks(store, &aside.TestHooks{CallerProbe: broken})
		c := newCache[int](t, store)
		load := func(context.Context) (int, error) { return 1, nil }
		down()
		if v, err := c.Get(bgCtx, "k", load); err != nil || v != 1 {
			t.Fatalf("Get with Redis down = %d, %v", v, err)
		}
		// The Get's call timed out (go-redis dials until the call's
		// deadline); the check of that timeout, unanswered, opens the breaker.
		eventually(t, "the breaker to open with Redis down", func() bool { return store.BreakerState() == aside.BreakerOpen })
		_ = c.Invalidate(bgCtx, "k") // queued
		up()
		dead, cancel := context.WithCancel(bgCtx)
		cancel()
		deadline := time.Now().Add(cooldown + opTimeout + 200*time.Millisecond) // + scheduling
		for i := 0; time.Now().Before(deadline) && store.BreakerState() != aside.BreakerClosed; i++ {
			if i%2 == 0 {
				_, _ = c.Get(dead, "k", load)
			} else {
				_ = c.Invalidate(dead, "k")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if store.BreakerState() != aside.BreakerClosed {
			return false
		}
		if _, err := c.Get(bgCtx, "k", load); err != nil {
			t.Fatal(err)
		}
		n, _ := store.Pending()
		return n == 0
	}
	t.Run("miniredis-restarted", func(t *testing.T) {
		expectBroken(t, "breaker back to closed with cancelled callers", func(broken bool) bool {
			srv := miniredis.RunT(t)
			return run(t, srv.Close, func() { _ = srv.Restart() }, newClient(t, srv.Addr()), broken)
		})
	})
	t.Run("redis-server-killed", func(t *testing.T) {
		requireReal(t)
		expectBroken(t, "breaker back to closed with cancelled callers", func(broken bool) bool {
			srv, err := startRedis(0)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { srv.stop() }()
			restart := func() {
				p, err := startRedisIn(srv.dir, srv.port)
				if err != nil {
					t.Fatal(err)
				}
				srv = p
			}
			return run(t, srv.kill, restart, newClient(t, srv.addr), broken)
		})
	})
	// Every backend, the Cluster included, with the outage injected in the
	// client (every command fails as with an unreachable server).
	forEachBackend(t, func(t *testing.T, b *backend) {
		expectBroken(t, "breaker back to closed with cancelled callers", func(broken bool) bool {
			rdb := b.client(t)
			down := new(atomic.Bool)
			addFault(rdb, down)
			return run(t, func() { down.Store(true) }, func() { down.Store(false) }, rdb, broken)
		})
	})
}

// TestT11L1GuardedByEveryTagOfItsEntry: an entry carries tags a and b; a
// cache with L1 reads it naming only a; InvalidateTags(b) returns: no L1
// returns the old value. And a background refresh started by an untagged
// read keeps the entry's tags. Broken variant: guarded by the call's tags.
func TestT11L1GuardedByEveryTagOfItsEntry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) {
			expectBroken(t, "L1 copy dropped by a tag its call did not name", func(broken bool) bool {
				prefix := uniquePrefix()
				sa, _ := b.newStore(t, aside.WithPrefix(prefix))
				sb, _ := b.newStore(t, aside.WithPrefix(prefix))
				ca := newCache[int](t, sa)
				cb := newCache[int](t, sb, aside.WithL1(100, time.Minute))
				aside.SetTestHooks(cb, &aside.TestHooks{CallTagsOnly: broken})
				eventually(t, "the subscription", func() bool { up, _, _ := aside.BusState(sb); return up })
				// L1 guards by hashed counters: a tag b that shared a's would
				// drop the broken variant's copy too (1 run in ~1000 did).
				other := "b"
				for i := 0; aside.TagSlot(sb, other) == aside.TagSlot(sb, "a"); i++ {
					other = "b" + strconv.Itoa(i)
				}
				var db atomic.Int64
				db.Store(1)
				load := func(context.Context) (int, error) { return int(db.Load()), nil }
				if _, err := p.get(bgCtx, ca, "k", load, aside.Tags("a", other)); err != nil {
					t.Fatal(err)
				}
				settled(t, sa)
				for range 2 {
					if v, err := p.get(bgCtx, cb, "k", load, aside.Tags("a")); err != nil || v != 1 {
						t.Fatalf("B = %d, %v", v, err)
					}
				}
				if cb.Stats().L1Hits == 0 {
					t.Fatal("the second read did not come from L1")
				}
				db.Store(2)
				if err := sb.InvalidateTags(bgCtx, other); err != nil {
					t.Fatal(err)
				}
				v, err := p.get(bgCtx, cb, "k", load, aside.Tags("a"))
				return err == nil && v == 2
			})
			expectBroken(t, "a refresh keeps the entry's tags", func(broken bool) bool {
				store, _ := b.newStore(t)
				c := newCache[int](t, store)
				aside.SetTestHooks(c, &aside.TestHooks{CallTagsOnly: broken})
				var db atomic.Int64
				db.Store(1)
				load := func(context.Context) (int, error) { return int(db.Load()), nil }
				if _, err := p.get(bgCtx, c, "k", load, aside.Tags("a", "b")); err != nil {
					t.Fatal(err)
				}
				settled(t, store)
				db.Store(2)
				if err := c.MarkStale(bgCtx, "k"); err != nil {
					t.Fatal(err)
				}
				refreshes := c.Stats().Refreshes
				_, _ = p.get(bgCtx, c, "k", load) // untagged: served stale, refreshed
				eventually(t, "the refresh", func() bool { return c.Stats().Refreshes > refreshes })
				db.Store(3)
				if err := store.InvalidateTags(bgCtx, "b"); err != nil {
					t.Fatal(err)
				}
				v, err := p.get(bgCtx, c, "k", load)
				return err == nil && v == 3
			})
		})
	})
}

// TestT12NoStaleNotFoundAfterTagInvalidation: a holder's loader reads
// "absent" and is still running; the row is created and InvalidateTags
// returns; a later read in the same process does not get the holder's
// not-found — with negative caching on and off. Broken variant: a joiner
// takes the flight's not-found unchecked (v1).
func TestT12NoStaleNotFoundAfterTagInvalidation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) {
			for _, negTTL := range []time.Duration{0, time.Minute} {
				t.Run("NegativeTTL="+negTTL.String(), func(t *testing.T) {
					expectBroken(t, "later read gets the created row", func(broken bool) bool {
						return runT12(t, b, p, negTTL, broken)
					})
				})
			}
		})
	})
}

func runT12(t *testing.T, b *backend, p readPath, negTTL time.Duration, broken bool) bool {
	prof := aside.Profile{Name: "neg", TTL: time.Minute, LoadTimeout: 5 * time.Second, NegativeTTL: negTTL}
	store, _ := b.newStore(t, aside.WithProfiles(prof))
	c := newCache[int](t, store, aside.WithProfile("neg"))
	loaded, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	aside.SetTestHooks(c, &aside.TestHooks{JoinAnyResult: broken, AfterLoad: func(string) {
		first := false
		once.Do(func() { first = true })
		if first {
			close(loaded)
			<-proceed
		}
	}})
	var exists atomic.Bool
	load := func(context.Context) (int, error) {
		if !exists.Load() {
			return 0, aside.ErrNotFound
		}
		return 7, nil
	}
	a := make(chan error, 1)
	go func() { _, err := p.get(bgCtx, c, "k", load, aside.Tags("row")); a <- err }()
	recv(t, loaded, "the holder's load")
	exists.Store(true)
	if err := store.InvalidateTags(bgCtx, "row"); err != nil {
		t.Fatal(err)
	}
	type res struct {
		v   int
		err error
	}
	later := make(chan res, 1)
	go func() { v, err := p.get(bgCtx, c, "k", load, aside.Tags("row")); later <- res{v, err} }()
	time.Sleep(50 * time.Millisecond) // the later read finds the holder's lease and joins it
	close(proceed)
	if err := recv(t, a, "the holder"); !errors.Is(err, aside.ErrNotFound) {
		t.Fatalf("holder = %v, want its own not-found", err)
	}
	r := recv(t, later, "the later read")
	return r.err == nil && r.v == 7
}

// TestWaitBudgetBoundsWaitersInTheHoldersProcess: WaitBudget 100 ms, the
// holder's load takes 1 s; a waiter in the holder's own Store gives up
// after its budget and loads by itself. Broken variant: the budget only
// bounds waits on other processes (v1).
func TestWaitBudgetBoundsWaitersInTheHoldersProcess(t *testing.T) {
	requireLong(t)
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel() // servers of their own; the cells wait on timers, not the CPU
		forEachPath(t, func(t *testing.T, p readPath) {
			expectBroken(t, "waiter back within its budget", func(broken bool) bool {
				prof := aside.Profile{Name: "budget", TTL: time.Minute, LoadTimeout: 5 * time.Second, WaitBudget: 100 * time.Millisecond}
				store, _ := b.newStore(t, aside.WithProfiles(prof))
				c := newCache[int](t, store, aside.WithProfile("budget"))
				aside.SetTestHooks(c, &aside.TestHooks{BudgetOnlyAcross: broken})
				inLoad, release := make(chan struct{}), make(chan struct{})
				var calls atomic.Int32
				load := func(context.Context) (int, error) {
					if calls.Add(1) == 1 {
						close(inLoad)
						<-release
					}
					return 1, nil
				}
				timer := time.AfterFunc(time.Second, func() { close(release) })
				defer timer.Stop()
				holder := make(chan error, 1)
				go func() { _, err := p.get(bgCtx, c, "k", load); holder <- err }()
				recv(t, inLoad, "the holder's load")
				start := time.Now()
				v, err := p.get(bgCtx, c, "k", load)
				waited := time.Since(start)
				recv(t, holder, "the holder")
				if err != nil || v != 1 {
					t.Fatalf("waiter = %d, %v", v, err)
				}
				return waited < 600*time.Millisecond && c.Stats().WaitTimeouts > 0
			})
		})
	})
}

// TestNoOrphanLeaseWhenTheCallerGivesUp: the caller's ctx ends while its
// lease script is in flight (a client hook cancels it just as the reply
// comes back). The lease taken in Redis is handed to the detached load, so
// a reader in another Store gets the value in about one load time instead
// of waiting out its budget. Broken variant: the lease script runs on the
// caller's ctx, and the lease is orphaned (v1).
func TestNoOrphanLeaseWhenTheCallerGivesUp(t *testing.T) {
	requireLong(t)
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) {
			expectBroken(t, "no waiter sits out its budget", func(broken bool) bool {
				prof := aside.Profile{Name: "orphan", TTL: time.Minute, LoadTimeout: 5 * time.Second, WaitBudget: time.Second}
				prefix := uniquePrefix()
				sa, rdbA := b.newStore(t, aside.WithPrefix(prefix), aside.WithProfiles(prof))
				sb, _ := b.newStore(t, aside.WithPrefix(prefix), aside.WithProfiles(prof))
				ca := newCache[int](t, sa, aside.WithProfile("orphan"))
				cb := newCache[int](t, sb, aside.WithProfile("orphan"))
				aside.SetTestHooks(ca, &aside.TestHooks{AcquireOnCaller: broken})
				ctx, cancel := context.WithCancel(bgCtx)
				defer cancel()
				rdbA.AddHook(cancelAfterLease{cancel})
				load := func(context.Context) (int, error) { time.Sleep(50 * time.Millisecond); return 1, nil }
				if _, err := p.get(ctx, ca, "k", load); !errors.Is(err, context.Canceled) {
					t.Fatalf("A = %v, want context.Canceled", err)
				}
				start := time.Now()
				v, err := p.get(bgCtx, cb, "k", load)
				waited := time.Since(start)
				if err != nil || v != 1 {
					t.Fatalf("B = %d, %v", v, err)
				}
				return waited < 600*time.Millisecond && cb.Stats().WaitTimeouts == 0
			})
		})
	})
}

// cancelAfterLease is a go-redis hook that cancels the caller's context as
// soon as a lease script has run, and reports the cancellation as the
// command's error when the command ran on that context: the caller's
// deadline passing while the script was in flight.
type cancelAfterLease struct{ cancel context.CancelFunc }

func isLeaseScript(cmd redis.Cmder) bool {
	return (cmd.Name() == "evalsha" || cmd.Name() == "eval") && len(cmd.Args()) == 9 // 2 keys (entry, lease), 4 arguments
}

func (cancelAfterLease) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h cancelAfterLease) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if isLeaseScript(cmd) {
			h.cancel()
			if ctx.Err() != nil {
				cmd.SetErr(ctx.Err())
				return ctx.Err()
			}
		}
		return err
	}
}

func (h cancelAfterLease) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if isLeaseScript(cmd) {
				h.cancel()
				if ctx.Err() != nil {
					for _, c := range cmds {
						c.SetErr(ctx.Err())
					}
					return ctx.Err()
				}
			}
		}
		return err
	}
}

// TestT15DegradedLoadsCoalesceForward: Store A cannot reach Redis and runs
// a degraded load of k that read v1; Store B invalidates k (the row is v2
// now); a Get on A that starts afterwards gets v2, not the load that began
// before. Broken variant: degraded reads join the load already running.
func TestT15DegradedLoadsCoalesceForward(t *testing.T) {
	expectBroken(t, "a degraded read does not join an older load", func(broken bool) bool {
		port, err := freePort() // nothing listens there: A's Redis is unreachable
		if err != nil {
			t.Fatal(err)
		}
		sa, err := aside.NewStore(newClient(t, "127.0.0.1:"+strconv.Itoa(port)), aside.WithOpTimeout(50*time.Millisecond), aside.WithBreaker(1, time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		defer sa.Close()
		aside.SetStoreHooks(sa, &aside.TestHooks{DegradedBackward: broken})
		ca := newCache[int](t, sa)
		sb, _ := (&backend{addr: miniredis.RunT(t).Addr()}).newStore(t)
		cb := newCache[int](t, sb)
		var db atomic.Int64
		db.Store(1)
		inLoad, release := make(chan struct{}), make(chan struct{})
		var calls atomic.Int32
		load := func(context.Context) (int, error) {
			v := int(db.Load()) // reads the row, then is slow
			if calls.Add(1) == 1 {
				close(inLoad)
				<-release
			}
			return v, nil
		}
		first := make(chan int, 1)
		go func() { v, _ := ca.Get(bgCtx, "k", load); first <- v }()
		recv(t, inLoad, "A's degraded load")
		// A's call timed out (go-redis dials until the call's deadline);
		// the check of that timeout, unanswered, opens the breaker.
		eventually(t, "A's breaker to open", func() bool { return sa.BreakerState() == aside.BreakerOpen })
		db.Store(2)
		if err := cb.Invalidate(bgCtx, "k"); err != nil {
			t.Fatal(err)
		}
		later := make(chan int, 1)
		go func() { v, _ := ca.Get(bgCtx, "k", load); later <- v }()
		time.Sleep(50 * time.Millisecond)
		close(release)
		if v := recv(t, first, "A's first Get"); v != 1 {
			t.Fatalf("first = %d, want the 1 it read", v)
		}
		return recv(t, later, "A's later Get") == 2
	})
}

// TestClientSideCacheRefused: a go-redis client that answers reads from its
// own cache could serve an entry older than an invalidation that returned.
func TestClientSideCacheRefused(t *testing.T) {
	srv := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), Protocol: 3, ContextTimeoutEnabled: true,
		ClientSideCacheConfig: &redis.ClientSideCacheConfig{}})
	defer rdb.Close()
	_, err := aside.NewStore(rdb)
	if err == nil || !strings.Contains(err.Error(), "client-side caching") {
		t.Fatalf("NewStore with a client-side cache = %v, want a clear error", err)
	}
}

// TestBatchErrorZeroValue: a BatchError built by hand never panics.
func TestBatchErrorZeroValue(t *testing.T) {
	var nilErr *aside.BatchError
	for _, e := range []*aside.BatchError{{}, nilErr} {
		if msg := e.Error(); msg == "" {
			t.Error("empty message")
		}
		_ = e.Unwrap()
	}
}

// TestSetAppliesJitter: entries written together by Set do not expire
// together, as entries filled by a load do not.
func TestSetAppliesJitter(t *testing.T) {
	b := &backend{addr: miniredis.RunT(t).Addr()}
	prof := aside.Profile{Name: "jittered", TTL: time.Hour, Jitter: 10 * time.Minute, LoadTimeout: time.Second}
	store, rdb := b.newStore(t, aside.WithProfiles(prof), aside.WithPrefix("jit"))
	c := newCache[int](t, store, aside.WithProfile("jittered"))
	ttls := map[time.Duration]bool{}
	for i := range 20 {
		k := strconv.Itoa(i)
		if err := c.Set(bgCtx, k, i); err != nil {
			t.Fatal(err)
		}
		ttl, err := rdb.PTTL(bgCtx, "jit:items:v1:{"+k+"}").Result()
		if err != nil || ttl < time.Hour || ttl > time.Hour+10*time.Minute {
			t.Fatalf("TTL of a Set entry = %v, %v; want in [1h, 1h10m]", ttl, err)
		}
		ttls[ttl.Truncate(time.Second)] = true
	}
	if len(ttls) < 10 {
		t.Errorf("20 Sets gave %d distinct TTLs: no jitter", len(ttls))
	}
}
