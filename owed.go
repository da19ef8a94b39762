package aside

import (
	"context"
	"sync"
	"time"
)

// No lease outlives its load. A holder whose fill or release could not
// reach Redis — the breaker open, a timeout, a stall — still holds its
// lease there, and every caller that reads the key afterwards would wait on
// it until it expires (the profile's LoadTimeout and more: seconds) although
// nobody will ever fill it. Such leases are owed: this Store gives them back
// in the background as soon as Redis answers again, with the release
// script, which deletes a lease only while it still holds the owed token —
// so it can never take a lease from a later attempt, and it commutes with
// invalidations, fills and other releases. The released key's waiters, in
// every process, are woken (see [bus.announceFills]); the next reader
// leases and loads it.
//
// The owed fill's value is dropped, not written late: a release is safe in
// any order with the invalidations this Store may still have to replay, a
// late write would not be.

// owedLease is a lease to give back: its entry key, its token, and when it
// expires on its own at the latest (nothing is owed after that).
type owedLease struct {
	rk, token string
	until     time.Time
}

// owedLeases are the leases this Store owes Redis, and the one goroutine
// that gives them back.
type owedLeases struct {
	mu      sync.Mutex // protects list and running
	list    []owedLease
	running bool
}

// maxOwed bounds the leases owed at once; past it a lease is left to
// expire on its own (the cost of a longer outage, not of a stall).
const maxOwed = 10_000

// owe records leases to give back and starts their release.
func (s *Store) owe(rks, tokens []string, until time.Time) {
	if len(rks) == 0 {
		return
	}
	o := &s.owed
	o.mu.Lock()
	for i, rk := range rks {
		if len(o.list) < maxOwed {
			o.list = append(o.list, owedLease{rk: rk, token: tokens[i], until: until})
		}
	}
	start := !o.running && len(o.list) > 0
	o.running = o.running || start
	o.mu.Unlock()
	if start && !s.goTracked(s.payOwed) {
		o.mu.Lock()
		o.running = false // closed Store: the leases expire on their own
		o.list = nil
		o.mu.Unlock()
	}
}

// payOwed releases the owed leases until none is left: at once, then, while
// Redis does not answer, with a backoff of a few op timeouts at most. It
// stops when the Store closes, after one last try.
func (s *Store) payOwed() {
	delay := s.opTimeout / 4
	for {
		o := &s.owed
		o.mu.Lock()
		now := time.Now()
		live := o.list[:0]
		for _, l := range o.list {
			if now.Before(l.until) {
				live = append(live, l)
			}
		}
		o.list = live
		batch := append([]owedLease(nil), live...)
		if len(batch) == 0 {
			o.running = false
			o.mu.Unlock()
			return
		}
		o.mu.Unlock()
		if s.releaseOwed(batch) {
			o.mu.Lock()
			o.list = o.list[len(batch):] // those owed meanwhile stay
			o.mu.Unlock()
			delay = s.opTimeout / 4
			continue
		}
		select {
		case <-s.stopping:
			o.mu.Lock()
			o.list, o.running = nil, false
			o.mu.Unlock()
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 4*s.opTimeout)
	}
}

// releaseOwed sends the release script for each owed lease, in one round
// trip, and wakes the waiters of those released. It reports whether Redis
// answered.
func (s *Store) releaseOwed(batch []owedLease) bool {
	rks := make([]string, len(batch))
	for i, l := range batch {
		rks[i] = l.rk
	}
	octx, cancel := s.detachedOpContext(context.Background())
	defer cancel()
	cmds, err := s.evalEntries(octx, releaseScript, rks, func(i int) []any { return []any{batch[i].token} })
	s.record(octx, err, nil, "")
	if isOutage(err) {
		return false
	}
	var waited []string
	for i, cmd := range cmds {
		if n, err := cmd.Int(); err == nil && n == 2 {
			waited = append(waited, rks[i])
		}
	}
	s.bus.AnnounceFills(waited)
	return true
}
