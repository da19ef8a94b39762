package aside

import (
	"golang.org/x/sync/singleflight"
)

// Test-only access to unexported knobs, for the behaviour tests in package
// aside_test. Compiled only into this package's tests.

// TestHooks is testHooks, exported to the tests.
type TestHooks = testHooks

// SetTestHooks installs hooks on c; call it before c is used.
func SetTestHooks[T any](c *Cache[T], h *TestHooks) {
	h.flights = new(singleflight.Group)
	c.hooks = h
}

// UseCounterTokens switches s to the broken variant of tag tokens:
// counters, which a tag key's eviction can make valid again.
func UseCounterTokens(s *Store) { s.counterTokens = true }

// SetL1Hooks installs L1 test hooks on c: beforeFill runs between the Redis
// read and the L1 fill; unchecked fills without the generation check.
func SetL1Hooks[T any](c *Cache[T], beforeFill func(key string), unchecked bool) {
	c.l1.beforeFill, c.l1.unchecked = beforeFill, unchecked
}

// BusState reports whether s's subscription is up, its epoch, and how many
// foreign messages it has applied.
func BusState(s *Store) (up bool, epoch, received uint64) {
	return s.bus.up.Load(), s.bus.epoch.Load(), s.bus.received.Load()
}

// DropPending is the broken variant of the replay queue: it forgets the
// invalidations that failed.
func DropPending(s *Store) {
	s.pending.mu.Lock()
	s.pending.ops = nil
	s.pending.n.Store(0)
	s.pending.mu.Unlock()
}
