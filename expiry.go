package aside

import (
	"context"
	"sync"
	"time"
)

// ExpireAt caps how long what a loader returns stays cached, when a
// [Loader] or [BatchLoader] calls it with the ctx it was given: fresh until
// the earlier of the profile's TTL (with jitter) and at, and kept in Redis
// no later than at — never served after it, not even in the stale window.
// It is for lifetimes known only once the value is loaded: a token that
// expires at a given time, an upstream's max-age. For a BatchLoader it
// applies to every value of the call; called several times, the earliest
// time wins; a time already past returns the value without caching it.
// On a ctx that did not come from aside it does nothing.
func ExpireAt(ctx context.Context, at time.Time) {
	if s, ok := ctx.Value(expiryKey{}).(*expirySlot); ok {
		s.mu.Lock()
		if s.at.IsZero() || at.Before(s.at) {
			s.at = at
		}
		s.mu.Unlock()
	}
}

type expiryKey struct{}

// expirySlot is where ExpireAt records, for the one loader call whose ctx
// carries it.
type expirySlot struct {
	mu sync.Mutex // protects at: a loader may call ExpireAt from goroutines of its own
	at time.Time
}

func (s *expirySlot) get() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.at
}
