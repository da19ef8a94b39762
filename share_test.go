package aside_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// Misses of one key in one process share the lease script on the wire
// (share.go): its lease, never its value.

// TestConcurrentMissesShareOneLeaseScript: 8 goroutines of one process miss
// one key together: one lease script goes out (per key of the read) and the
// others wait on its lease; one load answers them all. Broken variant:
// every miss sends its own script (8 per key).
func TestConcurrentMissesShareOneLeaseScript(t *testing.T) {
	const callers = 8
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) {
			for _, tagged := range []bool{false, true} {
				t.Run("tagged="+strconv.FormatBool(tagged), func(t *testing.T) { shareOneLeaseScript(t, b, p, callers, tagged) })
			}
		})
	})
}

// shareOneLeaseScript is TestConcurrentMissesShareOneLeaseScript on one
// backend, path and tagging. Tagged, the calls that start at the script
// and share another's read their tag tokens on their own.
func shareOneLeaseScript(t *testing.T, b *backend, p readPath, callers int, tagged bool) {
	expectBroken(t, "one lease script per key", func(broken bool) bool {
		store, rdb := b.newStore(t)
		var opts []aside.CallOption
		if tagged {
			if err := store.InvalidateTags(bgCtx, "t"); err != nil { // the tag's token exists: no load creates it
				t.Fatal(err)
			}
			opts = append(opts, aside.Tags("t"))
		}
		c := newCache[int](t, store)
		sent := &leaseScripts{}
		rdb.AddHook(sent)
		// A call that sends its own script for k waits until every
		// caller has come to the script: the sharing, if any, is
		// then complete. (A GetMany's second key never waits: its
		// call comes to it after its first.)
		var mu sync.Mutex
		arrived := 0
		all := make(chan struct{})
		aside.SetTestHooks(c, &aside.TestHooks{OwnLeaseScript: broken, LeaseScriptArrival: func(rk string, shared bool) {
			if strings.Contains(rk, "~pair") {
				return
			}
			mu.Lock()
			if arrived++; arrived == callers {
				close(all)
			}
			mu.Unlock()
			if !shared {
				select {
				case <-all:
				case <-time.After(waitFor):
				}
			}
		}})
		var loads atomic.Int32
		load := func(context.Context) (int, error) { loads.Add(1); return 1, nil }
		var wg sync.WaitGroup
		errs := make(chan error, callers)
		for range callers {
			wg.Go(func() {
				if v, err := p.get(bgCtx, c, "k", load, opts...); err != nil || v != 1 {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("a caller did not get 1: %v", err)
		}
		if !broken && loads.Load() != 1 { // (callers that each lease one of a GetMany's keys may load twice)
			t.Errorf("%d loads; want 1", loads.Load())
		}
		if n := c.Stats().SharedScripts; !broken && n < uint64(callers-1) {
			t.Errorf("Stats().SharedScripts = %d; want at least %d: every caller but the sender shared its script", n, callers-1)
		}
		return sent.n.Load() == int32(p.keys)
	})
}

// leaseScripts counts the lease scripts a client runs (a script's first
// run on a server, EVALSHA refused then EVAL, counts once). A caller that
// shares a lease may still poll for it — when the flight it joins has
// ended before it looked — so other scripts are not counted.
type leaseScripts struct{ n atomic.Int32 }

func (l *leaseScripts) DialHook(next redis.DialHook) redis.DialHook { return next }
func (l *leaseScripts) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if !noScript(err) && aside.IsLeaseScript(cmd) {
			l.n.Add(1)
		}
		return err
	}
}
func (l *leaseScripts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if !noScript(cmd.Err()) && aside.IsLeaseScript(cmd) {
				l.n.Add(1) // a NOSCRIPT did not run: its EVAL that follows is counted
			}
		}
		return err
	}
}

// holdScriptReply holds the reply of the next lease script run for an entry
// key ending in suffix, once armed, until release is closed.
type holdScriptReply struct {
	armed   atomic.Bool
	suffix  string
	held    chan struct{} // closed once the script has run and its reply is held
	release chan struct{}
}

func (h *holdScriptReply) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdScriptReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		args := cmd.Args()
		if name := cmd.Name(); err == nil && (name == "evalsha" || name == "eval") && len(args) > 3 {
			if k, _ := args[3].(string); strings.HasSuffix(k, h.suffix) && h.armed.CompareAndSwap(true, false) {
				close(h.held)
				select {
				case <-h.release:
				case <-time.After(waitFor):
				}
			}
		}
		return err
	}
}
func (h *holdScriptReply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestSharedLeaseScriptNeverServesItsRead: A's lease script reads k (1) and
// its reply is held; k is invalidated (the source now says 2); B then
// misses k and shares A's script. A may return 1 — it began before the
// invalidation — but B began after it returned: B must not take A's read,
// and reads again. Broken variant: B takes the hit A's script read.
func TestSharedLeaseScriptNeverServesItsRead(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) {
			expectBroken(t, "B gets the value loaded after the invalidation", func(broken bool) bool {
				h := newHeldScript(t, b)
				c, load := h.c, h.load
				aside.SetTestHooks(c, &aside.TestHooks{ShareScriptHit: broken, LeaseScriptArrival: h.arrival})
				mustGet(t, c, "k", load)
				settled(t, h.store)
				h.hold.armed.Store(true)
				aDone := make(chan error, 1)
				go func() {
					_, err := c.Get(bgCtx, "k", load, aside.LeaseFirstCall()) // a hit, read by the script
					aDone <- err
				}()
				recv(t, h.hold.held, "A's lease script")
				bDone := h.invalidateThenShare(t, p)
				if err := recv(t, aDone, "A"); err != nil {
					t.Fatal(err)
				}
				return recv(t, bDone, "B") == 2
			})
		})
	})
}

// TestSharedLeaseScriptNeverJoinsALocalFlightItFound: H holds k's lease,
// loaded 1 and is about to fill; X's lease script finds H's lease (WAIT)
// and its reply is held; H fills; k is invalidated (the source says 2); B
// misses and shares X's script. X's answer names H's flight, which filled
// before the invalidation and is valid — but B arrived after it: B must not
// join it, and reads again. Broken variant: the WAIT on a local flight is
// shared, and B joins H's flight (1).
func TestSharedLeaseScriptNeverJoinsALocalFlightItFound(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) {
			expectBroken(t, "B gets the value loaded after the invalidation", func(broken bool) bool {
				return runJoinLocalFound(t, b, p, broken)
			})
		})
	})
}

func runJoinLocalFound(t *testing.T, b *backend, p readPath, broken bool) bool {
	h := newHeldScript(t, b)
	c, load := h.c, h.load
	filling, fill := make(chan struct{}), make(chan struct{})
	filled, end := make(chan struct{}), make(chan struct{})
	var fillOnce, endOnce sync.Once
	aside.SetTestHooks(c, &aside.TestHooks{
		ReadFirst:      true, // X reads, then sends its script: the one whose reply is held
		ShareLocalWait: broken,
		BeforeFill: func(string) {
			fillOnce.Do(func() { close(filling); recv(t, fill, "the go-ahead to fill") })
		},
		AfterFill: func(string) {
			endOnce.Do(func() { close(filled); recv(t, end, "the go-ahead to end the flight") })
		},
		LeaseScriptArrival: h.arrival,
	})
	hDone, xDone := make(chan error, 1), make(chan error, 1)
	go func() { _, err := c.Get(bgCtx, "k", load); hDone <- err }() // H: leases k, loads 1
	recv(t, filling, "H's fill")
	h.hold.armed.Store(true)
	go func() { _, err := c.Get(bgCtx, "k", load); xDone <- err }() // X: finds H's lease
	recv(t, h.hold.held, "X's lease script")
	close(fill)
	recv(t, filled, "H's fill, done")
	bDone := h.invalidateThenShare(t, p)
	// B now joins H's flight (broken) or reads again and loads 2; H's flight
	// ends once B has either joined (its wait counted) or answered.
	deadline := time.Now().Add(waitFor)
	var bv int
	answered := false
	for !answered && c.Stats().LeaseWaits < 2 && time.Now().Before(deadline) {
		select {
		case bv = <-bDone:
			answered = true
		case <-time.After(time.Millisecond):
		}
	}
	close(end)
	if !answered {
		bv = recv(t, bDone, "B")
	}
	for _, ch := range []chan error{hDone, xDone} {
		if err := recv(t, ch, "H and X"); err != nil {
			t.Fatal(err)
		}
	}
	return bv == 2
}

// heldScript is the set-up of the sharing's freshness tests: a cache whose
// client holds the reply of k's next lease script once hold is armed, a
// source at 1, and bShares, closed when a call first shares a script (set
// arrival as the cache's LeaseScriptArrival hook).
type heldScript struct {
	store   *aside.Store
	c       *aside.Cache[int]
	hold    *holdScriptReply
	db      atomic.Int64
	load    aside.Loader[int]
	bShares chan struct{}
	once    sync.Once
}

func newHeldScript(t *testing.T, b *backend) *heldScript {
	store, rdb := b.newStore(t)
	h := &heldScript{store: store, c: newCache[int](t, store), bShares: make(chan struct{}),
		hold: &holdScriptReply{suffix: ":{k}", held: make(chan struct{}), release: make(chan struct{})}}
	rdb.AddHook(h.hold)
	h.db.Store(1)
	h.load = func(context.Context) (int, error) { return int(h.db.Load()), nil }
	return h
}

func (h *heldScript) arrival(_ string, shared bool) {
	if shared {
		h.once.Do(func() { close(h.bShares) })
	}
}

// invalidateThenShare moves the source to 2 and invalidates k; then B reads
// k through p, and once B shares the held lease script, its reply goes. It
// returns B's answer to come.
func (h *heldScript) invalidateThenShare(t *testing.T, p readPath) chan int {
	t.Helper()
	h.db.Store(2)
	if err := h.c.Invalidate(bgCtx, "k"); err != nil {
		t.Fatal(err)
	}
	bDone := make(chan int, 1)
	go func() {
		v, err := p.get(bgCtx, h.c, "k", h.load)
		if err != nil {
			t.Error(err)
		}
		bDone <- v
	}()
	recv(t, h.bShares, "B sharing the held script")
	close(h.hold.release)
	return bDone
}
