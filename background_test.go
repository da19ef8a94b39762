package aside_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asidecache/aside"
)

// heldFill holds the first fill of a cache at its start until released:
// the window between a caller's return and its value reaching Redis.
type heldFill struct {
	filling, proceed chan struct{}
	rk               chan string
	once             sync.Once
}

func holdFirstFill(c *aside.Cache[int], broken aside.TestHooks) *heldFill {
	h := &heldFill{filling: make(chan struct{}), proceed: make(chan struct{}), rk: make(chan string, 1)}
	hooks := broken
	hooks.BeforeFill = func(rk string) {
		h.once.Do(func() {
			h.rk <- rk
			close(h.filling)
			<-h.proceed
		})
	}
	aside.SetTestHooks(c, &hooks)
	return h
}

// TestCallerReturnsBeforeItsFill: a caller that loaded gets its value while
// its fill has not reached Redis (a round trip saved on every miss), and
// an invalidation it makes right away is not undone by that fill: the fill
// is still a compare-and-set on the lease that the invalidation revoked.
// Broken variant: an unconditional fill writes the old value back.
func TestCallerReturnsBeforeItsFill(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) {
			expectBroken(t, "an invalidation after Get returned outlives its fill", func(broken bool) bool {
				store, _ := b.newStore(t)
				c := newCache[int](t, store)
				held := holdFirstFill(c, aside.TestHooks{UnconditionalFill: broken})
				var db atomic.Int32
				db.Store(1)
				load := func(context.Context) (int, error) { return int(db.Load()), nil }
				got := make(chan int, 1)
				go func() { v, _ := p.get(bgCtx, c, "k", load); got <- v }()
				recv(t, held.filling, "the fill")
				if v := recv(t, got, "the caller, with its fill held"); v != 1 {
					t.Fatalf("caller got %d, want 1", v)
				}
				db.Store(2)
				if err := c.Invalidate(bgCtx, "k"); err != nil {
					t.Fatal(err)
				}
				close(held.proceed)
				settled(t, store)
				return mustGetVia(t, p, c, "k", load) == 2
			})
		})
	})
}

// TestReadDuringAFillWaitsForIt: a read of another process between the
// holder's return and its fill finds the lease and takes the fill's value:
// one load in all (waitedRead, in stats_test.go, checks the value).
func TestReadDuringAFillWaitsForIt(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		if r := waitedRead(t, b, true, aside.TestHooks{}); r.loads != 1 {
			t.Errorf("the other process's read took the fill's value after %d loads, want 1", r.loads)
		}
	})
}

// TestWaitWaitsForFillsInFlight: Store.Wait returns once the fills of
// values already returned have landed, and honours its ctx meanwhile.
func TestWaitWaitsForFillsInFlight(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, rdb := b.newStore(t)
		c := newCache[int](t, store)
		if err := store.Wait(bgCtx); err != nil {
			t.Fatalf("Wait with nothing in flight = %v", err)
		}
		held := holdFirstFill(c, aside.TestHooks{})
		if _, err := c.Get(bgCtx, "k", func(context.Context) (int, error) { return 1, nil }); err != nil {
			t.Fatal(err) // returned with its fill held
		}
		rk := recv(t, held.rk, "the fill")
		ctx, cancel := context.WithTimeout(bgCtx, 50*time.Millisecond)
		defer cancel()
		if err := store.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Wait with a fill held = %v, want the ctx's deadline", err)
		}
		if n := rdb.Exists(bgCtx, rk).Val(); n != 0 {
			t.Fatal("the entry is in Redis before its fill")
		}
		close(held.proceed)
		settled(t, store)
		if n := rdb.Exists(bgCtx, rk).Val(); n != 1 {
			t.Error("the entry is not in Redis after Wait returned")
		}
	})
}
