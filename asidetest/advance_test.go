package asidetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/asidecache/aside"
)

// TestAdvanceAfterAMiss: the test a user writes first — Get, Advance less
// than the entry's life, Get — loads once, for a value and for a cached
// not-found alike. Redis answers 20 ms late, so that the fill of the first
// Get's value is still on its way when Advance is called. Broken variant:
// Advance moves the clocks without waiting for it: Redis' clock passes the
// lease before the fill lands, the fill is refused, the second Get loads
// again.
func TestAdvanceAfterAMiss(t *testing.T) {
	for _, tc := range []struct {
		name    string
		advance time.Duration
		result  error
	}{
		{"value", 30 * time.Second, nil},
		{"not found", 5 * time.Second, aside.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loads := func(broken bool) int {
				advanceWithoutSettling = broken
				defer func() { advanceWithoutSettling = false }()
				prof := aside.Profile{Name: "orders", TTL: time.Minute, NegativeTTL: 10 * time.Second, LoadTimeout: time.Second}
				store, fake := New(t, aside.WithProfiles(prof))
				c, err := aside.New[string](store, "order", aside.WithProfile("orders"))
				if err != nil {
					t.Fatal(err)
				}
				var calls Counter
				load := Counting(&calls, func(context.Context) (string, error) { return "o1", tc.result })
				fake.SetLatency(20 * time.Millisecond)
				for i := range 2 {
					if _, err := c.Get(context.Background(), "o1", load); !errors.Is(err, tc.result) {
						t.Fatalf("Get = %v, want %v", err, tc.result)
					}
					if i == 0 {
						fake.Advance(tc.advance)
					}
				}
				return calls.Calls()
			}
			if n := loads(false); n != 1 {
				t.Errorf("Get, Advance(%v), Get loaded %d times, want 1", tc.advance, n)
			}
			if n := loads(true); n == 1 {
				t.Errorf("broken variant (Advance without waiting for the fill) loaded once: the test cannot fail")
			}
		})
	}
}
