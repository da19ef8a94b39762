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
