package aside

import (
	"sync/atomic"
	"time"
	"unsafe"
)

// Stats is a snapshot of one cache's counters since it was created. Taking
// it reads atomics only: it never blocks the requests it counts. Each read
// counts one outcome: L1Hits, Hits, StaleServed, NegativeHits, Waited,
// Misses and TagMisses add up to the reads that reached L1 or Redis (a
// read that skipped Redis counts in Degraded, one whose Redis call failed
// in RedisErrors). A read counts by what its first read found, except that
// one answered by another caller's load, which it waited for, counts in
// Waited, not in Misses or TagMisses: during a stampede a hit ratio
// (Hits / (Hits + Misses)) and Loads then tell the truth — one load, one
// miss, the rest waited.
type Stats struct {
	Cache   string       // the cache's name
	Profile string       // its TTL profile
	Breaker BreakerState // the Store's circuit breaker, now
	// Coherence is the Store's L1 coherence, now: shared by its caches.
	Coherence CoherenceStats

	L1Hits        uint64        // reads answered by the local tier, without Redis
	Hits          uint64        // reads answered by a fresh Redis entry
	StaleServed   uint64        // reads answered by a stale entry while it was refreshed (stale-while-revalidate, stale-if-error, MarkStale)
	NegativeHits  uint64        // reads answered ErrNotFound by a negative entry
	Misses        uint64        // reads that found no usable entry (absent or undecodable)
	TagMisses     uint64        // reads that found an entry invalidated by one of its tags
	Waited        uint64        // reads that found no usable entry and were answered by another caller's load, in this process or another
	LeaseWaits    uint64        // misses that waited for another caller's load instead of loading
	SharedScripts uint64        // misses that waited on the lease of another call's lease script in this process, sending none of their own
	WaitTimeouts  uint64        // waits that ran out of WaitBudget; the caller loaded without writing
	FillsRefused  uint64        // loaded values not written because an invalidation revoked their lease
	Refreshes     uint64        // background refreshes (early or stale) that wrote a new value
	Loads         uint64        // loader calls that returned a value
	LoadErrors    uint64        // loader calls that failed, panicked or timed out
	LoadTime      time.Duration // total time spent in loader calls
	LoadLatency   time.Duration // recent mean duration of one load (exponentially weighted, α = 0.1)
	TimeSaved     time.Duration // estimate of loader time the cache saved: answered reads × LoadLatency
	RedisErrors   uint64        // Redis calls that failed (each was served by the loader)
	RedisTimeouts uint64        // of those, the calls cut by the op timeout
	DecodeErrors  uint64        // entries in Redis that did not decode; each counted as a miss and overwritten
	EncodeErrors  uint64        // loaded values the codec could not encode, returned but not stored
	OversizeSkips uint64        // values larger than the profile's MaxEntryBytes, returned but not stored
	Degraded      uint64        // reads that skipped Redis because the breaker was open
	BytesWritten  uint64        // envelope bytes written to Redis
	// Check is what the consistency checker found ([WithCheck]).
	Check CheckStats
}

// CoherenceStats reports how a Store keeps L1 tiers coherent: its own L1's
// lease, and what its invalidations waited for (see docs/design.md, "L1: strict
// coherence").
type CoherenceStats struct {
	Strict            bool          // leases on (the default), or off with WithRelaxedL1
	L1Serving         bool          // this Store's L1 may answer now: its stream is trusted and, if strict, its lease held
	StreamResets      uint64        // times the invalidation stream was doubted and L1 dropped
	Received          uint64        // invalidations from other Stores applied to this Store's L1
	InvalidationWaits uint64        // invalidations that waited for other Stores' L1 to acknowledge
	AcksAwaited       uint64        // acknowledgements those invalidations waited for
	SilentStores      uint64        // awaited Stores that did not acknowledge: the invalidation waited for their lease to end
	WaitTime          time.Duration // total time invalidations spent waiting for acknowledgements
	Heartbeats        uint64        // heartbeats this Store published (its share of the bus's traffic)
	AckMessages       uint64        // acknowledgement messages this Store published (several acknowledgements each under load)
}

// Coherence returns a snapshot of the Store's L1 coherence (atomic loads).
func (s *Store) Coherence() CoherenceStats {
	b := s.bus.Stats()
	return CoherenceStats{
		Strict:            b.Strict,
		L1Serving:         b.Serving,
		StreamResets:      b.Resets,
		Received:          b.Received,
		InvalidationWaits: b.Waits,
		AcksAwaited:       b.AcksAwaited,
		SilentStores:      b.Silent,
		WaitTime:          b.WaitTime,
		Heartbeats:        b.Beats,
		AckMessages:       b.AckMsgs,
	}
}

type counters struct {
	hits, staleServed, negativeHits, misses atomic.Uint64
	tagMisses, waited                       atomic.Uint64
	l1Hits                                  stripedCounter
	leaseWaits, waitTimeouts, fillsRefused  atomic.Uint64
	sharedScripts                           atomic.Uint64
	refreshes, loads, loadErrors, loadNanos atomic.Uint64
	redisErrors, decodeErrors, encodeErrors atomic.Uint64
	oversize, skipped                       atomic.Uint64
	bytesWritten, redisTimeouts             atomic.Uint64
	loadEWMA                                atomic.Int64 // nanoseconds
}

// stripedCounter counts L1 hits in stripes, each on a cache line of its
// own. An L1 hit reads shared memory only, except its count: with one
// counter, every core's hits wrote one cache line, and on 2 cores an L1
// hit measured 57–61 ns against 45–50 without counting (BenchmarkL1). A
// stripe is picked by the address of the caller's stack, which differs
// between goroutines — and so between the cores running them — and costs
// nothing to read; a goroutine whose stack moved just counts elsewhere.
type stripedCounter struct {
	stripes [16]struct {
		n atomic.Uint64
		_ [56]byte
	}
}

// add counts one and returns the stripe's new count: a sequence of its own,
// which the consistency checker samples hits by.
func (s *stripedCounter) add() uint64 {
	var here byte
	stack := uint64(uintptr(unsafe.Pointer(&here))) >> 13 // goroutine stacks are 8 KiB apart at least
	return s.stripes[(stack*0x9E3779B97F4A7C15)>>60].n.Add(1)
}

func (s *stripedCounter) load() (n uint64) {
	for i := range s.stripes {
		n += s.stripes[i].n.Load()
	}
	return n
}

// observeLoad folds one load's duration into the counters and the recent
// mean, lock-free.
func (c *counters) observeLoad(d time.Duration) {
	c.loadNanos.Add(uint64(d))
	for {
		old := c.loadEWMA.Load()
		next := int64(d)
		if old != 0 {
			next = old + (int64(d)-old)/10
		}
		if c.loadEWMA.CompareAndSwap(old, next) {
			return
		}
	}
}

func (c *counters) snapshot() Stats {
	answered := c.l1Hits.load() + c.hits.Load() + c.staleServed.Load() + c.negativeHits.Load()
	ewma := time.Duration(c.loadEWMA.Load())
	return Stats{
		LoadLatency:   ewma,
		TimeSaved:     time.Duration(answered) * ewma,
		RedisTimeouts: c.redisTimeouts.Load(),
		L1Hits:        c.l1Hits.load(),
		Hits:          c.hits.Load(),
		StaleServed:   c.staleServed.Load(),
		NegativeHits:  c.negativeHits.Load(),
		Misses:        c.misses.Load(),
		TagMisses:     c.tagMisses.Load(),
		Waited:        c.waited.Load(),
		LeaseWaits:    c.leaseWaits.Load(),
		SharedScripts: c.sharedScripts.Load(),
		WaitTimeouts:  c.waitTimeouts.Load(),
		FillsRefused:  c.fillsRefused.Load(),
		Refreshes:     c.refreshes.Load(),
		Loads:         c.loads.Load(),
		LoadErrors:    c.loadErrors.Load(),
		LoadTime:      time.Duration(c.loadNanos.Load()),
		RedisErrors:   c.redisErrors.Load(),
		DecodeErrors:  c.decodeErrors.Load(),
		EncodeErrors:  c.encodeErrors.Load(),
		OversizeSkips: c.oversize.Load(),
		Degraded:      c.skipped.Load(),
		BytesWritten:  c.bytesWritten.Load(),
	}
}

// EventKind says what an [Event] reports.
type EventKind int

// Kinds of [Event].
const (
	EventBreakerOpen   EventKind = iota + 1 // Redis is considered down; reads go to the loader
	EventBreakerClosed                      // a probe succeeded; Redis is used again
	EventRedisError                         // one Redis call failed; Err holds why
	EventDecodeError                        // an entry did not decode; Err holds why
	EventEncodeError                        // a loaded value did not encode; Err holds why
	EventLoadError                          // a loader failed or panicked; Err holds why
	EventOversize                           // a value was not stored: larger than MaxEntryBytes
	EventInconsistent                       // the consistency checker confirmed an inconsistency; Key names the key ([WithCheck])
)

// String returns the kind's name, as used in logs and metric labels.
func (k EventKind) String() string {
	switch k {
	case EventBreakerOpen:
		return "breaker-open"
	case EventBreakerClosed:
		return "breaker-closed"
	case EventRedisError:
		return "redis-error"
	case EventDecodeError:
		return "decode-error"
	case EventEncodeError:
		return "encode-error"
	case EventLoadError:
		return "load-error"
	case EventOversize:
		return "oversize"
	case EventInconsistent:
		return "inconsistent"
	}
	return "unknown"
}

// Event reports something a dashboard or log should know about. Cache is
// empty for Store-wide events (the breaker).
type Event struct {
	Kind  EventKind
	Cache string
	Err   error
	// Node is the address of the Cluster master or Ring shard whose own
	// breaker opened or closed (nodes.go); empty for the Store's breaker
	// and for every other event.
	Node string
	// Key is the key of an EventInconsistent, for a log: never a metric
	// label (keys are unbounded). Empty for every other event.
	Key string
}

// Observer receives events synchronously, on the goroutine that caused them;
// it must be fast and must not block. Set it with [WithObserver].
type Observer func(Event)
