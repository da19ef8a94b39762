package aside

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

type replyErr string

func (e replyErr) Error() string { return string(e) }
func (replyErr) RedisError()     {}

func TestBreakerTransitions(t *testing.T) {
	now := time.Unix(0, 0)
	var changes []BreakerState
	b := newBreaker(3, time.Second, func(s BreakerState) { changes = append(changes, s) })
	b.now = func() time.Time { return now }
	allow := func() (bool, bool) { return b.allow() }

	for range 2 {
		b.failure(false)
	}
	b.success() // a success resets the count
	for range 2 {
		b.failure(false)
	}
	if b.State() != BreakerClosed {
		t.Fatalf("state after 2 consecutive failures = %v, want closed", b.State())
	}
	b.failure(false)
	if use, probe := allow(); b.State() != BreakerOpen || use || probe {
		t.Fatalf("after 3 failures: state %v, use %v, probe %v; want open, false, false", b.State(), use, probe)
	}
	now = now.Add(time.Second)
	if use, probe := allow(); use || !probe {
		t.Fatalf("after the cooldown: use %v, probe %v; want the caller to start the probe and not use Redis", use, probe)
	}
	if use, probe := allow(); use || probe {
		t.Fatal("a second probe while the first is in flight")
	}
	b.probeAbandoned() // the probe was cut short: due again at once
	if _, probe := allow(); !probe {
		t.Fatal("an abandoned probe must give its slot back at once")
	}
	b.probed(false) // the probe fails: open again for a full cooldown
	if _, probe := allow(); b.State() != BreakerOpen || probe {
		t.Fatalf("after a failed probe: %v", b.State())
	}
	now = now.Add(time.Second)
	if _, probe := allow(); !probe {
		t.Fatal("no second probe")
	}
	b.probed(true)
	if use, _ := allow(); b.State() != BreakerClosed || !use {
		t.Fatalf("after a good probe: %v", b.State())
	}
	want := []BreakerState{BreakerOpen, BreakerHalfOpen, BreakerOpen, BreakerHalfOpen, BreakerOpen, BreakerHalfOpen, BreakerClosed}
	if len(changes) != len(want) {
		t.Fatalf("transitions = %v, want %v", changes, want)
	}
	for i := range want {
		if changes[i] != want[i] {
			t.Fatalf("transitions = %v, want %v", changes, want)
		}
	}
}

func TestCutShort(t *testing.T) {
	s := &Store{opTimeout: 50 * time.Millisecond}
	caller, cancel := context.WithCancel(context.Background())
	octx, ocancel := s.opContext(caller)
	defer ocancel()
	cancel()
	if !cutShort(octx, context.Canceled) {
		t.Error("a call whose caller cancelled is not cut short")
	}
	octx2, ocancel2 := s.opContext(context.Background())
	defer ocancel2()
	if dl, ok := octx2.Deadline(); !ok || time.Until(dl) > s.opTimeout {
		t.Fatalf("op context deadline = %v, %v; want within the op timeout", dl, ok)
	}
	if cutShort(octx2, os.ErrDeadlineExceeded) {
		t.Error("a call ended by the op timeout (a socket deadline) counts as cut short: an outage would never open the breaker")
	}
	soon, cancelSoon := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancelSoon()
	if octx, _ := s.opContext(soon); !cutShort(octx, os.ErrDeadlineExceeded) {
		t.Error("a socket timeout at the caller's own, earlier deadline does not count as cut short")
	}
	octx3, ocancel3 := s.opContext(context.Background())
	defer ocancel3()
	if cutShort(octx3, errors.New("connection refused")) || cutShort(octx3, nil) {
		t.Error("a failure of Redis itself counts as cut short")
	}
}

func TestIsOutage(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{redis.Nil, false},
		{context.Canceled, false},
		{context.DeadlineExceeded, true},
		{errors.New("i/o timeout"), true},
		{replyErr("OOM command not allowed when used memory > 'maxmemory'"), false},
		{replyErr("NOPERM this user has no permissions"), false},
		{replyErr("LOADING Redis is loading the dataset in memory"), true},
		{replyErr("CLUSTERDOWN The cluster is down"), true},
	}
	for _, tt := range tests {
		if got := isOutage(tt.err); got != tt.want {
			t.Errorf("isOutage(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestBreakerSlowIsNotDead: timeouts start one check at a time and never
// open the breaker by themselves; an answered check starts the count again,
// an unanswered one counts as its op timeouts and opens it. Errors that say
// the server is gone count one by one; with no stall tolerance, timeouts do
// too.
func TestBreakerSlowIsNotDead(t *testing.T) {
	b := newBreaker(5, time.Second, nil)
	b.checkWeight = 4
	c := b.failure(true)
	if c == nil {
		t.Fatal("a timeout started no check")
	}
	for range 10 {
		if b.failure(true) != nil {
			t.Fatal("a second check while one is in flight")
		}
	}
	if b.State() != BreakerClosed {
		t.Fatalf("timeouts alone opened the breaker: %v", b.State())
	}
	b.checked(c, true)
	if b.failures.Load() != 0 || b.State() != BreakerClosed {
		t.Fatalf("after an answered check: %d failures, %v", b.failures.Load(), b.State())
	}
	select {
	case <-c.done:
	default:
		t.Fatal("the check's waiters were not released")
	}
	c = b.failure(true)
	b.checked(c, false) // 1 + 4 failures: the threshold
	if b.State() != BreakerOpen {
		t.Fatalf("after an unanswered check: %v, want open", b.State())
	}

	dead := newBreaker(3, time.Second, nil)
	dead.checkWeight = 4
	for range 2 {
		if dead.failure(false) != nil {
			t.Fatal("a refused connection started a check")
		}
	}
	if dead.failure(false); dead.State() != BreakerOpen {
		t.Fatalf("3 refused connections: %v, want open", dead.State())
	}

	strict := newBreaker(2, time.Second, nil) // no stall tolerance
	if strict.failure(true) != nil || strict.State() != BreakerClosed {
		t.Fatal("no tolerance: a timeout started a check, or opened at once")
	}
	if strict.failure(true); strict.State() != BreakerOpen {
		t.Fatalf("no tolerance, 2 timeouts: %v, want open", strict.State())
	}
}
