package aside

import (
	"context"
	"errors"
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
	down := errors.New("dial tcp: connection refused")

	for range 2 {
		b.record(down)
	}
	b.record(nil) // a success resets the count
	for range 2 {
		b.record(down)
	}
	if b.State() != BreakerClosed {
		t.Fatalf("state after 2 consecutive failures = %v, want closed", b.State())
	}
	b.record(down)
	if b.State() != BreakerOpen || b.allow() {
		t.Fatalf("after 3 failures: state %v, allow %v; want open, false", b.State(), b.allow())
	}
	now = now.Add(time.Second)
	if !b.allow() || b.allow() {
		t.Fatal("after the cooldown exactly one probe must be allowed")
	}
	b.record(down) // the probe fails: open again for a full cooldown
	if b.State() != BreakerOpen || b.allow() {
		t.Fatalf("after a failed probe: %v", b.State())
	}
	now = now.Add(time.Second)
	if !b.allow() {
		t.Fatal("no second probe")
	}
	b.record(nil)
	if b.State() != BreakerClosed || !b.allow() {
		t.Fatalf("after a good probe: %v", b.State())
	}
	want := []BreakerState{BreakerOpen, BreakerHalfOpen, BreakerOpen, BreakerHalfOpen, BreakerClosed}
	if len(changes) != len(want) {
		t.Fatalf("transitions = %v, want %v", changes, want)
	}
	for i := range want {
		if changes[i] != want[i] {
			t.Fatalf("transitions = %v, want %v", changes, want)
		}
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
