package aside

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Names of the built-in profiles. Register a [Profile] with the same name
// through [WithProfiles] to change one.
const (
	// Default is used by a cache without [WithProfile]: 5 min fresh, 30 s
	// jitter.
	Default = "default"
	// Transactional is for data that changes with business events and is
	// invalidated by them (carts, stock, orders): 30 s fresh, 5 s jitter,
	// short load timeout.
	Transactional = "transactional"
	// Analytical is for aggregates that may lag (dashboards, counters,
	// rankings): 5 min fresh, 1 min jitter, a generous load timeout.
	Analytical = "analytical"
	// Master is for reference data (catalogue, countries, settings): 6 h
	// fresh, 30 min jitter, compression from 512 bytes.
	Master = "master"
)

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
}

func builtinProfiles() map[string]Profile {
	ps := []Profile{
		{Name: Default, TTL: 5 * time.Minute, Jitter: 30 * time.Second, LoadTimeout: 5 * time.Second, CompressAbove: 1024, MaxEntryBytes: 1 << 20},
		{Name: Transactional, TTL: 30 * time.Second, Jitter: 5 * time.Second, LoadTimeout: 2 * time.Second, CompressAbove: 1024, MaxEntryBytes: 256 << 10},
		{Name: Analytical, TTL: 5 * time.Minute, Jitter: time.Minute, LoadTimeout: 30 * time.Second, CompressAbove: 1024, MaxEntryBytes: 4 << 20},
		{Name: Master, TTL: 6 * time.Hour, Jitter: 30 * time.Minute, LoadTimeout: 10 * time.Second, CompressAbove: 512, MaxEntryBytes: 4 << 20},
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
	}
	return nil
}

// ttl returns the Redis TTL for one new entry: TTL plus a random jitter.
func (p Profile) ttl() time.Duration {
	if p.Jitter <= 0 {
		return p.TTL
	}
	return p.TTL + rand.N(p.Jitter)
}
