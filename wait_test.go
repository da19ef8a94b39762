package aside_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

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
