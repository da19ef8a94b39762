package aside

import (
	"errors"
	"fmt"
	"testing"
)

// TestOneAsidePrefix: an operation's error reads with one "aside:" prefix
// however many of aside's errors it wraps, and still matches them all.
func TestOneAsidePrefix(t *testing.T) {
	nested := fmt.Errorf("%w: %w", ErrUnavailable, errReplaying)
	for _, tc := range []struct {
		err  error
		want string
	}{
		{opErr("invalidate", nested), "aside: invalidate: redis unavailable: failed invalidations are being replayed"},
		{&queuedError{what: "invalidate_tags", cause: opErr("purge", nested)},
			"aside: invalidate_tags: redis unavailable, queued for replay: purge: redis unavailable: failed invalidations are being replayed"},
		{opErr("set", errors.New("READONLY You can't write against a read only replica.")),
			"aside: set: READONLY You can't write against a read only replica."},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("got  %q\nwant %q", got, tc.want)
		}
		if !errors.Is(tc.err, ErrUnavailable) && tc.want[7:10] != "set" {
			t.Errorf("%v does not match ErrUnavailable", tc.err)
		}
	}
	if opErr("set", nil) != nil {
		t.Error("opErr of nil is not nil")
	}
}
