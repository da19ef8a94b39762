package aside

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// The consistency checker: a sample of a cache's hits and of the key
// invalidations this process applies, checked against the source of truth
// off the request path, within a budget of loader calls (docs/design.md,
// "Knowing it in production"). A check never changes what is cached.

// Check configures the consistency checker of a cache of T: see [WithCheck].
type Check[T any] struct {
	// Load reads one key from the source of truth, as the cache's loaders
	// do; the checker calls it, never the caller's loader. Required. It may
	// return ErrNotFound (or the cache's own not-found error).
	Load func(ctx context.Context, key string) (T, error)
	// Hits is the fraction of hits (L1 and Redis, every read path) whose
	// value is reloaded and compared with what was served, in [0, 1].
	Hits float64
	// Invalidations is the fraction of this process's key invalidations
	// (Invalidate, MarkStale, Store.Write and Store.Apply — an outbox
	// relay's changes included) after which the entry is looked at, in
	// [0, 1].
	Invalidations float64
	// LoadsPerSecond caps the checker's loader calls (default 10). A sample
	// that would exceed it is dropped and counted in CheckStats.Skipped.
	LoadsPerSecond float64
	// Equal compares a served value with a reloaded one. Default: their
	// encodings (msgpack with map keys sorted, or the cache's codec) are
	// equal.
	Equal func(a, b T) bool
	// Windows are the delays after an invalidation at which its entry is
	// looked at. Default: 1 s, 10 s, 60 s.
	Windows [3]time.Duration
	// Recheck is how long a hit whose value differed from the source waits
	// before it is checked again — the source may have changed in between
	// and its invalidation be on its way. Default: 1 s.
	Recheck time.Duration
}

// WithCheck switches on the consistency checker for a cache of T (New
// refuses it for another type): a sample of hits is reloaded and compared
// with what was served, a difference counted only if the cache still
// serves it after Recheck and the source still differs; a sample of key
// invalidations is followed by a look at the entry after each window, an
// entry whose load began before the invalidation counted only if a reload
// differs from it. Results are in [Stats].Check and exported by the
// exporters; each confirmed inconsistency is also an [EventInconsistent]
// carrying its key. The sampled-out path costs a random number and
// allocates nothing.
func WithCheck[T any](check Check[T]) Option {
	return func(o *cacheOptions) { o.check = check }
}

// CheckStats is what the consistency checker found ([WithCheck]); all zero
// without it.
type CheckStats struct {
	Hits CheckWindow // sampled hits; Window is the recheck delay
	// Invalidations holds one window each: a check counts in every window
	// it reached.
	Invalidations [3]CheckWindow
	Loads         uint64 // loader calls the checker made
	Skipped       uint64 // samples dropped: over the budget, the queue full, or the source unreadable
}

// CheckWindow counts checks that looked at entries Window after their
// sample: Checked of them, Inconsistent confirmed.
type CheckWindow struct {
	Window       time.Duration
	Checked      uint64
	Inconsistent uint64
}

// Nines returns -log10 of the inconsistent fraction ("5 nines consistent
// within 1 s"): +Inf when none was inconsistent, 0 when none was checked.
func (w CheckWindow) Nines() float64 {
	if w.Checked == 0 {
		return 0
	}
	return -math.Log10(float64(w.Inconsistent) / float64(w.Checked))
}

// checkQueue bounds the samples waiting for the checker, and checkPending
// the checks waiting for their window.
const (
	checkQueue   = 256
	checkPending = 4096
)

type checkCounts struct{ checked, inconsistent atomic.Uint64 }

// checker is one cache's consistency checker. Samples reach its goroutine
// through a channel (never blocking the read that sampled them); the
// goroutine starts with the first sample and ends when the Store closes.
type checker[T any] struct {
	c                *Cache[T]
	cfg              Check[T]
	hitRate, invRate uint64 // sampling thresholds: rand.Uint64() < rate
	tasks            chan checkTask[T]
	start            sync.Once
	hits             checkCounts
	windows          [3]checkCounts
	loads, skipped   atomic.Uint64
	// Admission of hit samples (admit): the theoretical arrival time of
	// the next one, in nanoseconds since epoch — a token bucket in one
	// atomic, so that samples beyond the budget are dropped where they are
	// taken and the checker's goroutine sees no more than it may check.
	epoch           time.Time
	admitted        atomic.Int64
	interval, burst int64
	budget          float64   // loader calls available (a second's worth at most); the goroutine's only
	budgetAt        time.Time // when budget was last refilled
}

type checkTask[T any] struct {
	key string
	due time.Time
	// A hit: the payload served from Redis, or the value served from L1.
	hit     bool
	payload []byte
	value   T
	decoded bool // value holds the served value (an L1 hit's, or a payload decoded)
	again   bool // the recheck of a hit that differed
	// An invalidation: when it was applied (the Store's clock, as entries'
	// creation times are; and the real one, for the windows), and the
	// window to look in next.
	changedMs int64
	changedAt time.Time
	window    int
}

func newChecker[T any](c *Cache[T], cfg Check[T]) (*checker[T], error) {
	switch {
	case cfg.Load == nil:
		return nil, errors.New("aside: WithCheck needs Load, to reload what it checks")
	case !(cfg.Hits >= 0 && cfg.Hits <= 1) || !(cfg.Invalidations >= 0 && cfg.Invalidations <= 1):
		return nil, fmt.Errorf("aside: WithCheck: sampling rates must be in [0, 1], got Hits %v, Invalidations %v", cfg.Hits, cfg.Invalidations)
	case cfg.LoadsPerSecond < 0 || math.IsNaN(cfg.LoadsPerSecond) || cfg.Recheck < 0:
		return nil, fmt.Errorf("aside: WithCheck: LoadsPerSecond and Recheck must not be negative, got %v and %v", cfg.LoadsPerSecond, cfg.Recheck)
	}
	if cfg.LoadsPerSecond == 0 {
		cfg.LoadsPerSecond = 10
	}
	if cfg.Recheck == 0 {
		cfg.Recheck = time.Second
	}
	if cfg.Windows == [3]time.Duration{} {
		cfg.Windows = [3]time.Duration{time.Second, 10 * time.Second, time.Minute}
	}
	for i, w := range cfg.Windows {
		if w <= 0 || i > 0 && w <= cfg.Windows[i-1] {
			return nil, fmt.Errorf("aside: WithCheck: Windows must be positive and increasing, got %v", cfg.Windows)
		}
	}
	interval := int64(float64(time.Second) / cfg.LoadsPerSecond)
	return &checker[T]{c: c, cfg: cfg, hitRate: threshold(cfg.Hits), invRate: threshold(cfg.Invalidations),
		tasks: make(chan checkTask[T], checkQueue), budget: max(cfg.LoadsPerSecond, 1),
		epoch: time.Now(), interval: interval, burst: max(int64(time.Second)-interval, 0)}, nil
}

// threshold turns a rate into the bound a uniform uint64 is sampled under.
func threshold(rate float64) uint64 {
	if v := rate * (1 << 64); rate < 1 && v < 1<<64 { // a rate just under 1 can round up to 2⁶⁴
		return uint64(v)
	}
	return math.MaxUint64
}

func sampled(rate uint64) bool {
	return rate != 0 && (rate == math.MaxUint64 || rand.Uint64() < rate)
}

// sampleL1Hit and sampleRedisHit are called on every hit (sampleL1Hit
// reports whether to check it). An L1 hit costs
// tens of nanoseconds, and even a random number would add several: it is
// sampled by its count n, which the hit increments anyway, through a Weyl
// sequence (n·φ mod 1 is equidistributed and has no period, so hits that
// cycle over a few keys are sampled evenly across them). An L1 value is
// shared read-only, so it is kept as it is.
func (k *checker[T]) sampleL1Hit(n uint64) bool {
	return (n*weyl < k.hitRate || k.hitRate == math.MaxUint64) && k.admit()
}

// checkL1Hit queues the check of an L1 hit that sampleL1Hit sampled: apart
// so that a hit that is not sampled does not pass (copy) its value.
func (k *checker[T]) checkL1Hit(key string, v T) {
	k.enqueue(checkTask[T]{key: key, hit: true, value: v, decoded: true})
}

// weyl is 2⁶⁴/φ, odd: n·weyl mod 2⁶⁴ is n·φ mod 1 in fixed point.
const weyl = 0x9E3779B97F4A7C15

// sampleRedisHit samples by a random number (a Redis hit costs tens of
// microseconds) and copies the payload: the caller owns the value it
// returns, and may change it.
func (k *checker[T]) sampleRedisHit(key string, payload []byte) {
	if sampled(k.hitRate) && k.admit() {
		k.enqueue(checkTask[T]{key: key, hit: true, payload: bytes.Clone(payload)})
	}
}

// admit reports whether a hit sample is within the budget (a second's
// worth of LoadsPerSecond at once, then LoadsPerSecond a second); one that
// is not is counted as skipped. Hits can be sampled far faster than the
// checker loads: sent on, they would keep its goroutine — a core — busy
// dropping them.
func (k *checker[T]) admit() bool {
	now := int64(time.Since(k.epoch))
	for {
		prev := k.admitted.Load()
		next := max(prev, now)
		if next-now > k.burst {
			k.skipped.Add(1)
			return false
		}
		if k.admitted.CompareAndSwap(prev, next+k.interval) {
			return true
		}
	}
}

// sampleInvalidation follows a sample of keys invalidated at changedMs.
func (k *checker[T]) sampleInvalidation(keys []string, changedMs int64) {
	for _, key := range keys {
		if sampled(k.invRate) {
			now := time.Now()
			k.enqueue(checkTask[T]{key: key, changedMs: changedMs, changedAt: now, due: now.Add(k.cfg.Windows[0])})
		}
	}
}

func (k *checker[T]) enqueue(t checkTask[T]) {
	k.start.Do(func() { k.c.store.goTracked(k.run) })
	select {
	case k.tasks <- t:
	default:
		k.skipped.Add(1)
	}
}

func (k *checker[T]) stats() CheckStats {
	s := CheckStats{
		Hits:    CheckWindow{Window: k.cfg.Recheck, Checked: k.hits.checked.Load(), Inconsistent: k.hits.inconsistent.Load()},
		Loads:   k.loads.Load(),
		Skipped: k.skipped.Load(),
	}
	for i := range s.Invalidations {
		s.Invalidations[i] = CheckWindow{Window: k.cfg.Windows[i], Checked: k.windows[i].checked.Load(), Inconsistent: k.windows[i].inconsistent.Load()}
	}
	return s
}

// checkTarget is a checker as the Store sees it, by cache name: the
// invalidations it applies are sampled there.
type checkTarget interface {
	sampleInvalidation(keys []string, changedMs int64)
}

// sampleChanges hands the key changes just applied to the checkers of
// their caches.
func (s *Store) sampleChanges(changes []Change, changedMs int64) {
	for _, ch := range changes {
		if len(ch.Keys) == 0 {
			continue
		}
		if t, ok := s.checks.Load(ch.Cache); ok {
			t.(checkTarget).sampleInvalidation(ch.Keys, changedMs)
		}
	}
}
