package aside

import "github.com/asidecache/aside/internal/health"

// BreakerState is the state of a Store's circuit breaker (internal/health
// has the breaker itself).
type BreakerState int32

// The breaker's states. While Open, reads go straight to the loader and
// nothing is written; once the cooldown has passed the Store sends one probe
// of its own (HalfOpen), whose outcome closes or reopens the breaker.
const (
	BreakerClosed   = BreakerState(health.Closed)
	BreakerOpen     = BreakerState(health.Open)
	BreakerHalfOpen = BreakerState(health.HalfOpen)
)

// String returns closed, open or half-open.
func (s BreakerState) String() string { return health.State(s).String() }

// defaultStallTolerance is the stall tolerance in op timeouts: 400 ms with
// the default op timeout, longer than the stalls a busy Redis or a failover
// of a few hundred milliseconds cause.
const defaultStallTolerance = 4

// breakerChanged reports a transition of the Store's breaker (node "") or
// of a node's own, as an event.
func (s *Store) breakerChanged(node string, st health.State) {
	switch st {
	case health.Open:
		s.emit(Event{Kind: EventBreakerOpen, Node: node})
	case health.Closed:
		// Redis (or this node) may have restarted empty, the set of
		// versions in use with it: recorded again before the next read.
		s.versions.resend()
		s.emit(Event{Kind: EventBreakerClosed, Node: node})
	}
}
