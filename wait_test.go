package aside_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asidecache/aside"
)

// TestReadAfterMissJoinsTheEndedAttempt: a caller that missed k gets its
// value before k's fill is sent, so its next read of k (or another
// caller's) can find the lease of that fill, and look the attempt up only
// after the fill's reply has ended it. The attempt is this process's: the
// read takes its value, without a poll of Redis and without the bus the
// poller starts. Here the read's script is answered WAIT before the fill
// goes; the attempt ends before the read looks for it. Broken variant: an
// ended attempt is forgotten at once, and the read polls.
func TestReadAfterMissJoinsTheEndedAttempt(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) {
			expectBroken(t, "the read takes the ended attempt's value without polling", func(broken bool) bool {
				return runJoinEnded(t, b, p, broken)
			})
		})
	})
}

func runJoinEnded(t *testing.T, b *backend, p readPath, broken bool) bool {
	store, _ := b.newStore(t)
	c := newCache[int](t, store)
	filling, fill := make(chan struct{}), make(chan struct{})
	var fillOnce, joinOnce sync.Once
	var polls, loads atomic.Int32
	aside.SetTestHooks(c, &aside.TestHooks{
		ForgetEnded: broken,
		BeforeFill: func(string) {
			fillOnce.Do(func() { close(filling); recv(t, fill, "the go-ahead to fill") })
		},
		BeforeJoin: func(string) {
			joinOnce.Do(func() {
				close(fill)
				settled(t, store) // the first caller's attempt has filled and ended
			})
		},
		BeforePoll: func(string) { polls.Add(1) },
	})
	load := func(context.Context) (int, error) { loads.Add(1); return 1, nil }
	if v := getOK(t, c, "k", load); v != 1 { // returns before its fill, held by BeforeFill
		t.Fatalf("first Get = %d, want 1", v)
	}
	recv(t, filling, "the first fill")
	v, err := p.get(bgCtx, c, "k", load)
	if err != nil || v != 1 {
		t.Fatalf("read after the miss = %d, %v; want 1", v, err)
	}
	settled(t, store)
	if want := int32(p.keys); loads.Load() != want { // GetMany's second key is a miss of its own
		t.Errorf("%d loads, want %d", loads.Load(), want)
	}
	if s := c.Stats(); s.LeaseWaits == 0 {
		t.Fatalf("stats %+v: the read did not wait on the lease (the test missed its interleaving)", s)
	}
	return polls.Load() == 0
}

// TestT19WaitersWokenByTheFill: a caller on Store A loads a cold key while a
// caller on Store B waits for A's lease; the pollers are slowed to one read
// every 1.5 s. B has the value within 0.7 s of the fill (a few ms in
// practice) only because the fill announces itself to the Stores whose callers wait. Broken variant:
// no announcement (B learns of the fill at its next poll).
func TestT19WaitersWokenByTheFill(t *testing.T) {
	requireLong(t)
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel() // servers of their own; the cells wait on timers, not the CPU
		forEachPath(t, func(t *testing.T, p readPath) {
			expectBroken(t, "a waiter in another Store is woken by the fill", func(broken bool) bool {
				prefix := uniquePrefix()
				var caches []*aside.Cache[int]
				var stores []*aside.Store
				for range 2 {
					store, _ := b.newStore(t, aside.WithPrefix(prefix))
					aside.SetStoreHooks(store, &aside.TestHooks{NoFillWake: broken, PollEvery: 1500 * time.Millisecond})
					caches, stores = append(caches, newCache[int](t, store)), append(stores, store)
				}
				started, release := make(chan struct{}), make(chan struct{})
				slow := func(context.Context) (int, error) { close(started); <-release; return 7, nil }
				done := make(chan error, 2)
				go func() { _, err := p.get(bgCtx, caches[0], "k", slow); done <- err }()
				<-started
				waited := make(chan time.Time, 1)
				go func() {
					v, err := p.get(bgCtx, caches[1], "k", func(context.Context) (int, error) { return 0, errors.New("B loaded") })
					waited <- time.Now()
					if err == nil && v != 7 {
						err = fmt.Errorf("B read %d, want 7", v)
					}
					done <- err
				}()
				eventually(t, "B waiting on A's lease", func() bool { return caches[1].Stats().LeaseWaits > 0 })
				eventually(t, "B's Store listening", func() bool { return aside.BusListening(stores[1]) })
				time.Sleep(20 * time.Millisecond) // B's poller registered: it went on from LeaseWaits at once
				t0 := time.Now()
				close(release)
				for range 2 {
					select {
					case err := <-done:
						if err != nil {
							t.Fatal(err)
						}
					case <-time.After(10 * time.Second):
						t.Fatal("a caller never returned")
					}
				}
				d := (<-waited).Sub(t0)
				t.Logf("broken=%v: B had the value %v after the load ended", broken, d)
				return d < 700*time.Millisecond
			})
		})
	})
}
