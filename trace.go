package aside

import "context"

// Tracer is the hook a tracing exporter implements (asideotel does, for
// OpenTelemetry): a span per Get, GetMany, Peek, Set and invalidation. The
// core imports no tracing library; without [WithTracer] the hook costs one
// nil comparison per call.
type Tracer interface {
	// Start begins the span of op ("get", "get_many", "peek", "set",
	// "invalidate", "invalidate_tags", "mark_stale") on cache (empty for the
	// Store's own operations). A loader's ctx derives from the ctx it
	// returns, so the loader's own spans — the database query — nest under
	// it as the cause of the miss.
	Start(ctx context.Context, op, cache string) (context.Context, Span)
}

// Span is one operation's span, ended once.
type Span interface {
	// End records how the operation's keys were answered (nothing for a
	// write) and its error, and ends the span.
	End(outcomes Outcomes, err error)
}

// Outcome is how one key of a read was answered.
type Outcome uint8

// The outcomes of a key, in the order a read tries them.
const (
	OutcomeNone     Outcome = iota // not answered: the call failed before
	OutcomeL1Hit                   // from the local tier
	OutcomeHit                     // from Redis, fresh
	OutcomeStale                   // from Redis, stale or soft-invalidated, while one refresher reloads
	OutcomeNegative                // a cached not-found
	OutcomeMiss                    // nothing usable cached (Peek only: a Get goes on to load or wait)
	OutcomeWaited                  // another caller's load, waited for
	OutcomeLoaded                  // this caller's load, through its lease
	OutcomeDegraded                // the loader's, with Redis unusable
	// OutcomeWaitTimeout: this caller's own load after its wait budget ran
	// out (the lease's holder had not filled the key): no lease, nothing
	// written — the one load beside a live lease that aside makes by design.
	OutcomeWaitTimeout
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"none", "l1_hit", "hit", "stale", "negative", "miss", "waited", "loaded", "degraded", "wait_timeout"}

// String returns the outcome's attribute value, e.g. "l1_hit".
func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return "unknown"
}

// Outcomes counts the keys of one operation by outcome.
type Outcomes [numOutcomes]int

// Only returns the one outcome of a single-key read, and whether there is
// exactly one.
func (os Outcomes) Only() (Outcome, bool) {
	found, n := OutcomeNone, 0
	for o, c := range os {
		n += c
		if c > 0 {
			found = Outcome(o)
		}
	}
	return found, n == 1
}

func one(o Outcome) (os Outcomes) {
	os[o] = 1
	return os
}
