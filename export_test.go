package aside

import (
	"time"

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

// SetClock replaces the clock of freshness decisions; call it before use.
func SetClock(s *Store, now func() time.Time) { s.now = now }

// UseCounterTokens switches s to the broken variant of tag tokens:
// counters, which a tag key's eviction can make valid again.
func UseCounterTokens(s *Store) { s.counterTokens = true }
