package aside

import (
	"errors"
	"strings"

	"github.com/asidecache/aside/internal/envelope"
)

// Sentinel errors. Match them with errors.Is; their messages may change.
var (
	// ErrNotFound is what a [Loader] returns (wrapped or not) when the source
	// has no such row. With a profile's NegativeTTL it is cached: later Gets
	// return ErrNotFound without calling the loader.
	ErrNotFound = errors.New("aside: not found")
	// ErrLoaderPanic is returned, wrapped with the panic value and stack, to
	// every caller sharing a load whose loader panicked.
	ErrLoaderPanic = errors.New("aside: loader panic")
	// ErrUnavailable is returned by writes ([Cache.Set], [Cache.Invalidate])
	// while the circuit breaker keeps the Store away from Redis, and by
	// [Cache.Peek], which has no loader to fall back on.
	ErrUnavailable = errors.New("aside: redis unavailable")
	// ErrQueued is matched by the error of an invalidation ([Cache.Invalidate],
	// [Store.InvalidateTags], their soft forms) that could not reach Redis
	// within its call's deadline: it is queued, applied to this Store's own
	// L1 at once, and replayed before this Store reads Redis again
	// ([Store.Pending] counts it). Until the replay lands, other processes
	// may serve the old value. Such an error also matches ErrUnavailable.
	// From [Store.Write] it means that the write committed and only its
	// invalidations are queued.
	ErrQueued = errors.New("aside: invalidation queued for replay")
	// ErrMiss is returned by [Cache.Peek] when nothing usable is cached under
	// the key.
	ErrMiss = errors.New("aside: not cached")
)

// Errors of bad input and of the library's own states, matched inside the
// package only.
var (
	errEmptyKey   = errors.New("aside: empty key")
	errNilLoader  = errors.New("aside: nil loader")
	errCorrupt    = envelope.ErrCorrupt
	errOversize   = errors.New("aside: value too large to cache") // returned to its caller, not stored
	errReplaying  = errors.New("aside: failed invalidations are being replayed")
	errOverflowed = errors.New("aside: the replay queue overflowed: failed invalidations were dropped")
)

// opError is the error of one operation (invalidate, purge, set, …): it
// wraps its cause for errors.Is and errors.As, and reads with one "aside:"
// prefix however many of aside's errors its cause wraps.
type opError struct {
	op    string
	cause error
}

func (e *opError) Error() string { return "aside: " + e.op + ": " + unprefixed(e.cause) }
func (e *opError) Unwrap() error { return e.cause }

// opErr returns cause as the error of op (nil stays nil).
func opErr(op string, cause error) error {
	if cause == nil {
		return nil
	}
	return &opError{op: op, cause: cause}
}

// unprefixed is err's message without the "aside: " prefixes its parts
// carry, which a wrapper adds once.
func unprefixed(err error) string {
	msg := strings.TrimPrefix(err.Error(), "aside: ")
	return strings.ReplaceAll(msg, ": aside: ", ": ")
}

// queuedError is an invalidation that could not reach Redis: it matches
// [ErrQueued] and [ErrUnavailable], and its cause.
type queuedError struct {
	what  string
	cause error
}

func (e *queuedError) Error() string {
	return "aside: " + e.what + ": redis unavailable, queued for replay: " + unprefixed(e.cause)
}

func (e *queuedError) Unwrap() []error { return []error{ErrQueued, ErrUnavailable, e.cause} }

// notFoundError is a not-found answer of a cache with [WithNotFound]: it
// reads as the error it carries — the loader's, or the cache's own — and
// matches both ErrNotFound and the cache's own error with errors.Is.
type notFoundError struct {
	err, also error
}

func (e *notFoundError) Error() string   { return e.err.Error() }
func (e *notFoundError) Unwrap() []error { return []error{e.err, e.also} }
