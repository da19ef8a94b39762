package health

import (
	"testing"
	"time"
)

func TestBreakerTransitions(t *testing.T) {
	now := time.Unix(0, 0)
	var changes []State
	b := NewBreaker(Config{Threshold: 3, Cooldown: time.Second, OnChange: func(s State) { changes = append(changes, s) }})
	b.now = func() time.Time { return now }
	allow := func() (bool, bool) { return b.Allow() }

	for range 2 {
		b.Failure(false)
	}
	b.Success() // a success resets the count
	for range 2 {
		b.Failure(false)
	}
	if b.State() != Closed {
		t.Fatalf("state after 2 consecutive failures = %v, want closed", b.State())
	}
	b.Failure(false)
	if use, probe := allow(); b.State() != Open || use || probe {
		t.Fatalf("after 3 failures: state %v, use %v, probe %v; want open, false, false", b.State(), use, probe)
	}
	now = now.Add(time.Second)
	if use, probe := allow(); use || !probe {
		t.Fatalf("after the cooldown: use %v, probe %v; want the caller to start the probe and not use Redis", use, probe)
	}
	if use, probe := allow(); use || probe {
		t.Fatal("a second probe while the first is in flight")
	}
	b.ProbeAbandoned() // the probe was cut short: due again at once
	if _, probe := allow(); !probe {
		t.Fatal("an abandoned probe must give its slot back at once")
	}
	b.Probed(false) // the probe fails: open again for a full cooldown
	if _, probe := allow(); b.State() != Open || probe {
		t.Fatalf("after a failed probe: %v", b.State())
	}
	now = now.Add(time.Second)
	if _, probe := allow(); !probe {
		t.Fatal("no second probe")
	}
	b.Probed(true)
	if use, _ := allow(); b.State() != Closed || !use {
		t.Fatalf("after a good probe: %v", b.State())
	}
	want := []State{Open, HalfOpen, Open, HalfOpen, Open, HalfOpen, Closed}
	if len(changes) != len(want) {
		t.Fatalf("transitions = %v, want %v", changes, want)
	}
	for i := range want {
		if changes[i] != want[i] {
			t.Fatalf("transitions = %v, want %v", changes, want)
		}
	}
}

// TestBreakerSlowIsNotDead: timeouts start one check at a time and never
// open the breaker by themselves; an answered check starts the count again,
// an unanswered one counts as its op timeouts and opens it. Errors that say
// the server is gone count one by one; with no stall tolerance, timeouts do
// too.
func TestBreakerSlowIsNotDead(t *testing.T) {
	b := NewBreaker(Config{Threshold: 5, Cooldown: time.Second, CheckWeight: 4})
	c := b.Failure(true)
	if c == nil {
		t.Fatal("a timeout started no check")
	}
	for range 10 {
		if b.Failure(true) != nil {
			t.Fatal("a second check while one is in flight")
		}
	}
	if b.State() != Closed {
		t.Fatalf("timeouts alone opened the breaker: %v", b.State())
	}
	b.Checked(c, true)
	if b.failures.Load() != 0 || b.State() != Closed {
		t.Fatalf("after an answered check: %d failures, %v", b.failures.Load(), b.State())
	}
	select {
	case <-c.done:
	default:
		t.Fatal("the check's waiters were not released")
	}
	c = b.Failure(true)
	b.Checked(c, false) // 1 + 4 failures: the threshold
	if b.State() != Open {
		t.Fatalf("after an unanswered check: %v, want open", b.State())
	}

	dead := NewBreaker(Config{Threshold: 3, Cooldown: time.Second, CheckWeight: 4})
	for range 2 {
		if dead.Failure(false) != nil {
			t.Fatal("a refused connection started a check")
		}
	}
	if dead.Failure(false); dead.State() != Open {
		t.Fatalf("3 refused connections: %v, want open", dead.State())
	}

	strict := NewBreaker(Config{Threshold: 2, Cooldown: time.Second}) // no stall tolerance
	if strict.Failure(true) != nil || strict.State() != Closed {
		t.Fatal("no tolerance: a timeout started a check, or opened at once")
	}
	if strict.Failure(true); strict.State() != Open {
		t.Fatalf("no tolerance, 2 timeouts: %v, want open", strict.State())
	}
}
