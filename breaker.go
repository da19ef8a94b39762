package aside

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// BreakerState is the state of a Store's circuit breaker.
type BreakerState int32

// The breaker's states. While Open, reads go straight to the loader and
// nothing is written; after the cooldown one probe runs (HalfOpen) and its
// outcome closes or reopens the breaker.
const (
	BreakerClosed BreakerState = iota
	BreakerOpen
	BreakerHalfOpen
)

// String returns closed, open or half-open.
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return "unknown"
}

// breaker counts consecutive Redis failures. It is lock-free: allow is on
// every request's path.
type breaker struct {
	threshold int32
	cooldown  time.Duration
	now       func() time.Time
	onChange  func(BreakerState)

	state    atomic.Int32
	failures atomic.Int32
	openedAt atomic.Int64 // UnixNano
	probing  atomic.Bool
}

func newBreaker(threshold int, cooldown time.Duration, onChange func(BreakerState)) *breaker {
	return &breaker{threshold: int32(threshold), cooldown: cooldown, now: time.Now, onChange: onChange}
}

func (b *breaker) State() BreakerState { return BreakerState(b.state.Load()) }

// allow reports whether a Redis call may be made now. When the cooldown of
// an open breaker has passed, exactly one caller is let through as a probe.
func (b *breaker) allow() bool {
	switch BreakerState(b.state.Load()) {
	case BreakerClosed:
		return true
	case BreakerOpen:
		if b.now().UnixNano()-b.openedAt.Load() < int64(b.cooldown) {
			return false
		}
		if !b.probing.CompareAndSwap(false, true) {
			return false
		}
		b.transition(BreakerOpen, BreakerHalfOpen)
		return true
	}
	return false // half-open: a probe is in flight
}

// record reports the outcome of a call that allow let through.
func (b *breaker) record(err error) {
	if !isOutage(err) {
		b.failures.Store(0)
		if b.State() != BreakerClosed && b.transition(BreakerHalfOpen, BreakerClosed) {
			b.probing.Store(false)
		}
		return
	}
	if b.State() == BreakerHalfOpen {
		b.openedAt.Store(b.now().UnixNano())
		b.transition(BreakerHalfOpen, BreakerOpen)
		b.probing.Store(false)
		return
	}
	if b.failures.Add(1) >= b.threshold {
		b.openedAt.Store(b.now().UnixNano())
		if b.transition(BreakerClosed, BreakerOpen) {
			b.failures.Store(0)
		}
	}
}

func (b *breaker) transition(from, to BreakerState) bool {
	if !b.state.CompareAndSwap(int32(from), int32(to)) {
		return false
	}
	if b.onChange != nil {
		b.onChange(to)
	}
	return true
}

// isTimeout reports whether err is a deadline: the op timeout, or a socket
// timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// isOutage reports whether err means Redis could not serve the call, as
// opposed to a miss or an error reply about this one command (OOM, NOPERM,
// WRONGTYPE), which a working server sends and which must not open the
// breaker.
func isOutage(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return false
	}
	var reply redis.Error
	if errors.As(err, &reply) {
		msg := reply.Error()
		for _, p := range []string{"LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	return true
}
