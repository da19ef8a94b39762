package aside

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Names of the built-in profiles. Their settings (derive your own with
// [BuiltinProfile]):
//
//	                 default   transactional  analytical  master
//	TTL              5 min     30 s           5 min       6 h
//	Jitter           30 s      5 s            1 min       30 min
//	StaleWindow      0         0              10 min      24 h
//	NegativeTTL      30 s      5 s            1 min       5 min
//	EarlyRefresh     1         1              1           1
//	LoadTimeout      5 s       2 s            30 s        10 s
//	WaitBudget       = LoadTimeout in every built-in
//	CompressAbove    1 KiB     1 KiB          1 KiB       512 B
//	MaxEntryBytes    1 MiB     256 KiB        4 MiB       4 MiB
//
// Negative caching is on in every built-in: after a loader returns
// [ErrNotFound] for a key, Gets of that key answer ErrNotFound for
// NegativeTTL without asking the source — so the code that creates a row
// must invalidate its key (as any write does), or the row stays "not
// found" that long. Set NegativeTTL to 0 to turn it off.
const (
	// Default is used by a cache without [WithProfile].
	Default = "default"
	// Transactional is for data that changes with business events and is
	// invalidated by them (carts, stock, orders): short TTL, short load
	// timeout, no stale window.
	Transactional = "transactional"
	// Analytical is for aggregates that may lag (dashboards, counters,
	// rankings): served stale for up to 10 min while one caller reloads.
	Analytical = "analytical"
	// Master is for reference data (catalogue, countries, settings): hours
	// fresh, a day's stale window, compression from 512 bytes.
	Master = "master"
)

// BuiltinProfile returns a copy of a built-in profile, to change the fields
// that differ and register under a new name (or the same one, to replace
// it) with [WithProfiles]:
//
//	catalog, err := aside.BuiltinProfile(aside.Master)
//	catalog.Name, catalog.TTL = "catalog", time.Hour
func BuiltinProfile(name string) (Profile, error) {
	p, ok := builtinProfiles()[name]
	if !ok {
		return Profile{}, fmt.Errorf("aside: no built-in profile %q (built-ins: %s, %s, %s, %s)", name, Default, Transactional, Analytical, Master)
	}
	return p, nil
}

// Profile is a caching policy named by business domain. Every field is
// validated by [NewStore]; none is silently replaced.
type Profile struct {
	// Name identifies the profile in [WithProfile]; letters, digits, '_',
	// '-', '.'.
	Name string
	// TTL is how long an entry stays fresh in Redis. Must be > 0.
	TTL time.Duration
	// Jitter adds a random [0, Jitter) to each entry's TTL, so that entries
	// written together do not expire together. Must be >= 0.
	Jitter time.Duration
	// LoadTimeout bounds one loader call; the load runs on a context that
	// ignores the caller's cancellation but not this deadline. Must be > 0.
	LoadTimeout time.Duration
	// CompressAbove s2-compresses payloads of at least this many bytes.
	// 0 disables compression; must be >= 0.
	CompressAbove int
	// MaxEntryBytes caps a stored entry. A larger value is returned to the
	// caller but not stored, and counted in [Stats].OversizeSkips. 0 means no
	// cap; must be >= 0.
	MaxEntryBytes int
	// StaleWindow keeps an entry in Redis this long after it stops being
	// fresh. Inside the window readers get the stale value at once while one
	// refresher (cluster-wide) reloads it in the background; if that load
	// fails the stale value goes on being served (stale-if-error). Both are
	// counted in [Stats].StaleServed. 0 disables; must be >= 0.
	StaleWindow time.Duration
	// NegativeTTL is how long a loader's [ErrNotFound] is remembered, so that
	// lookups of absent rows stop reaching the source. 0 disables negative
	// caching; must be >= 0.
	NegativeTTL time.Duration
	// EarlyRefresh is the β of probabilistic early expiration (XFetch): a hit
	// refreshes the entry in the background with a probability that rises as
	// expiry nears, scaled by how long the last load took. 1 is the
	// recommended value, 0 disables; must be in [0, 10].
	EarlyRefresh float64
	// WaitBudget bounds how long a miss waits for another caller's load of
	// the same key (in any process) before it loads by itself, without
	// writing. 0 means LoadTimeout; must be >= 0.
	WaitBudget time.Duration
}

func builtinProfiles() map[string]Profile {
	ps := []Profile{
		{Name: Default, TTL: 5 * time.Minute, Jitter: 30 * time.Second, LoadTimeout: 5 * time.Second,
			CompressAbove: 1024, MaxEntryBytes: 1 << 20, NegativeTTL: 30 * time.Second, EarlyRefresh: 1},
		{Name: Transactional, TTL: 30 * time.Second, Jitter: 5 * time.Second, LoadTimeout: 2 * time.Second,
			CompressAbove: 1024, MaxEntryBytes: 256 << 10, NegativeTTL: 5 * time.Second, EarlyRefresh: 1},
		{Name: Analytical, TTL: 5 * time.Minute, Jitter: time.Minute, LoadTimeout: 30 * time.Second,
			CompressAbove: 1024, MaxEntryBytes: 4 << 20, StaleWindow: 10 * time.Minute, NegativeTTL: time.Minute, EarlyRefresh: 1},
		{Name: Master, TTL: 6 * time.Hour, Jitter: 30 * time.Minute, LoadTimeout: 10 * time.Second,
			CompressAbove: 512, MaxEntryBytes: 4 << 20, StaleWindow: 24 * time.Hour, NegativeTTL: 5 * time.Minute, EarlyRefresh: 1},
	}
	m := make(map[string]Profile, len(ps))
	for _, p := range ps {
		m[p.Name] = p
	}
	return m
}

func (p Profile) validate() error {
	if err := validName("profile name", p.Name); err != nil {
		return err
	}
	switch {
	case p.TTL <= 0:
		return fmt.Errorf("aside: profile %q: TTL must be > 0, got %v", p.Name, p.TTL)
	case p.Jitter < 0:
		return fmt.Errorf("aside: profile %q: Jitter must be >= 0, got %v", p.Name, p.Jitter)
	case p.LoadTimeout <= 0:
		return fmt.Errorf("aside: profile %q: LoadTimeout must be > 0, got %v", p.Name, p.LoadTimeout)
	case p.CompressAbove < 0:
		return fmt.Errorf("aside: profile %q: CompressAbove must be >= 0, got %d", p.Name, p.CompressAbove)
	case p.MaxEntryBytes < 0:
		return fmt.Errorf("aside: profile %q: MaxEntryBytes must be >= 0, got %d", p.Name, p.MaxEntryBytes)
	case p.StaleWindow < 0:
		return fmt.Errorf("aside: profile %q: StaleWindow must be >= 0, got %v", p.Name, p.StaleWindow)
	case p.NegativeTTL < 0:
		return fmt.Errorf("aside: profile %q: NegativeTTL must be >= 0, got %v", p.Name, p.NegativeTTL)
	case !(p.EarlyRefresh >= 0 && p.EarlyRefresh <= 10): // also rejects NaN
		return fmt.Errorf("aside: profile %q: EarlyRefresh must be in [0, 10], got %v", p.Name, p.EarlyRefresh)
	case p.WaitBudget < 0:
		return fmt.Errorf("aside: profile %q: WaitBudget must be >= 0, got %v", p.Name, p.WaitBudget)
	}
	return nil
}

// freshFor returns how long one new entry stays fresh: TTL plus a random
// jitter, so that entries written together neither expire nor refresh
// together. Its Redis TTL adds the stale window.
func (p Profile) freshFor() time.Duration {
	if p.Jitter <= 0 {
		return p.TTL
	}
	return p.TTL + rand.N(p.Jitter)
}

func (p Profile) waitBudget() time.Duration {
	if p.WaitBudget > 0 {
		return p.WaitBudget
	}
	return p.LoadTimeout
}

// maxXFetchDraw bounds −ln(U) for U = 1 − rand.Float64(): U ≥ 2⁻⁵³.
const maxXFetchDraw = 37

// shouldRefreshEarly is XFetch (Vattani et al., VLDB 2015): refresh when
// now − δ·β·ln(U) ≥ expiry, with δ the duration of the last load and U
// uniform in (0, 1]. The probability is tiny far from expiry and reaches 1
// at it, so one reader refreshes slightly early instead of all readers
// missing at once.
//
// −ln(U) is at most 53·ln 2 < 37 (U ≥ 2⁻⁵³), so an entry fresh for longer
// than 37·δ·β cannot be refreshed early: answered without the random draw
// and the logarithm, which every hit paid (2 % of a GetMany of 100 hits).
func (p Profile) shouldRefreshEarly(now, freshUntil time.Time, lastLoad time.Duration) bool {
	if p.EarlyRefresh <= 0 || lastLoad <= 0 {
		return false
	}
	if float64(freshUntil.Sub(now)) > maxXFetchDraw*float64(lastLoad)*p.EarlyRefresh {
		return false
	}
	u := 1 - rand.Float64() // (0, 1]
	gap := time.Duration(-float64(lastLoad) * p.EarlyRefresh * math.Log(u))
	return !now.Add(gap).Before(freshUntil)
}

// lifetime is how long a value loaded at start stays fresh, and how long
// Redis keeps it: the profile's TTL with jitter, plus its stale window —
// both cut at until when the loader set one with ExpireAt. keep is false
// when until has passed already.
func (c *Cache[T]) lifetime(start, until time.Time) (fresh, ttl time.Duration, keep bool) {
	fresh = c.profile.freshFor()
	ttl = fresh + c.profile.StaleWindow
	if until.IsZero() {
		return fresh, ttl, true
	}
	left := until.Sub(c.store.now())
	if left < time.Millisecond {
		return 0, 0, false
	}
	return min(fresh, until.Sub(start)), min(ttl, left), true
}
