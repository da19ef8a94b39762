package aside

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// The L1 tier keeps decoded values in process memory, so a hit costs
// neither a round trip nor a decode. It is a small structure of our own
// (sharded maps, sampled CLOCK eviction) rather than a dependency: the core
// module stays on its four dependencies, and what L1 needs beyond a bounded
// map — generations checked on every hit, an epoch for whole-tier clears —
// would wrap any library anyway.
//
// Coherence: every invalidation is published on the Store's channel; each
// Store drops what it hears and ignores its own messages. Rather than
// deleting eagerly, invalidations bump generations — per key (hashed),
// per tag (hashed), per cache and per subscription epoch — and a hit is
// valid only while the generations it recorded before its Redis read are
// unchanged. So a fill that raced an invalidation (T8) is never served, and
// clearing the whole tier when the subscription drops is O(1).

const (
	l1Shards = 16
	genSlots = 1024 // hashed generation counters per cache (keys) and per Store (tags)
	l1Sample = 5    // entries looked at per eviction
)

type local[T any] struct {
	shards   [l1Shards]l1Shard[T]
	perShard int
	ttl      time.Duration
	bus      *bus
	keyGens  [genSlots]atomic.Uint64
	epoch    atomic.Uint64 // bumped by Purge and messages that clear the cache
	hooks    *testHooks
	now      func() time.Time // the Store's clock: an entry leaves L1 when its freshness ends, on that clock
}

type l1Shard[T any] struct {
	mu sync.RWMutex
	m  map[string]*l1Entry[T]
}

type l1Entry[T any] struct {
	v        T
	expires  int64 // UnixNano
	keyGen   uint64
	epoch    uint64
	busEpoch uint64
	tagSlots []uint16
	tagGens  []uint64
	used     atomic.Bool // CLOCK bit: set on hit, cleared by eviction sampling
}

// l1Note is what a read records before its Redis read: the generations its
// L1 fill must still find afterwards. The tags are not among them: they are
// the entry's, known only after the read; tagEpoch stands for all of them.
type l1Note struct {
	ok       bool // the bus is up: filling is allowed
	keyGen   uint64
	epoch    uint64
	busEpoch uint64
	tagEpoch uint64
}

func newLocal[T any](entries int, ttl time.Duration, b *bus, h *testHooks, now func() time.Time) *local[T] {
	l := &local[T]{perShard: max(1, (entries+l1Shards-1)/l1Shards), ttl: ttl, bus: b, hooks: h, now: now}
	for i := range l.shards {
		l.shards[i].m = make(map[string]*l1Entry[T])
	}
	return l
}

func (l *local[T]) slot(key string) uint64 { return maphash.String(l.bus.seed, key) }

// get returns a valid, unexpired value; it allocates nothing.
func (l *local[T]) get(key string) (T, bool) {
	var zero T
	if !l.bus.up.Load() {
		return zero, false
	}
	h := l.slot(key)
	sh := &l.shards[h%l1Shards]
	sh.mu.RLock()
	e := sh.m[key]
	sh.mu.RUnlock()
	if e == nil || !l.valid(e, h) || l.now().UnixNano() >= e.expires {
		return zero, false
	}
	if !e.used.Load() {
		e.used.Store(true)
	}
	return e.v, true
}

func (l *local[T]) valid(e *l1Entry[T], h uint64) bool {
	if e.keyGen != l.keyGens[h%genSlots].Load() || e.epoch != l.epoch.Load() || e.busEpoch != l.bus.epoch.Load() {
		return false
	}
	for i, s := range e.tagSlots {
		if e.tagGens[i] != l.bus.tagGens[s].Load() {
			return false
		}
	}
	return true
}

func (l *local[T]) note(key string) l1Note {
	n := l1Note{
		ok:       l.bus.up.Load(),
		keyGen:   l.keyGens[l.slot(key)%genSlots].Load(),
		epoch:    l.epoch.Load(),
		busEpoch: l.bus.epoch.Load(),
		tagEpoch: l.bus.tagEpoch.Load(),
	}
	// Read after the counters: if the bus went down meanwhile, epoch moved.
	n.ok = n.ok && l.bus.up.Load()
	return n
}

// set stores v if nothing that could make it stale happened since n was
// taken: no invalidation of the key, of any tag the entry carries, of the
// cache, and no doubt about the bus. freshUntil caps the entry's life at its
// Redis freshness. tags are the entry's own, not only those the reading call
// named: an L1 copy is dropped by an invalidation of any of them.
func (l *local[T]) set(key string, v T, n l1Note, freshUntil time.Time, tags []tagToken) {
	l.hooks.beforeL1Fill(key)
	if l.hooks.uncheckedL1() {
		n = l.note(key)
	}
	if !n.ok {
		return
	}
	expires := l.now().Add(l.ttl).UnixNano()
	if fu := freshUntil.UnixNano(); fu < expires {
		expires = fu
	}
	e := &l1Entry[T]{v: v, expires: expires, keyGen: n.keyGen, epoch: n.epoch, busEpoch: n.busEpoch}
	if len(tags) > 0 {
		e.tagSlots = make([]uint16, len(tags))
		e.tagGens = make([]uint64, len(tags))
		for i, t := range tags {
			e.tagSlots[i] = l.bus.tagSlot(t.name)
			e.tagGens[i] = l.bus.tagGens[e.tagSlots[i]].Load()
		}
		// The generations were read after n and before this check: if no
		// tag invalidation began since n, they are those of before the read.
		if l.bus.tagEpoch.Load() != n.tagEpoch {
			return
		}
	}
	h := l.slot(key)
	if !l.valid(e, h) || !l.bus.up.Load() {
		return // an invalidation arrived during the read: do not keep its result
	}
	sh := &l.shards[h%l1Shards]
	sh.mu.Lock()
	if _, exists := sh.m[key]; !exists && len(sh.m) >= l.perShard {
		sh.evictOne()
	}
	sh.m[key] = e
	sh.mu.Unlock()
	// The generations may have moved while we inserted; valid() on every
	// hit catches that, so no lock is held across the check.
}

// evictOne removes one entry, sampled CLOCK: among a few entries (map
// iteration starts at a random bucket), the first not used since it was
// last sampled; failing that, the one expiring first.
func (sh *l1Shard[T]) evictOne() {
	var victim string
	var soonest int64
	n := 0
	for k, e := range sh.m {
		if !e.used.Load() {
			victim = k
			break
		}
		e.used.Store(false)
		if n == 0 || e.expires < soonest {
			victim, soonest = k, e.expires
		}
		if n++; n >= l1Sample {
			break
		}
	}
	delete(sh.m, victim)
}

// invalidate drops keys at once (read-your-writes for this Store) and bumps
// their generations, so that fills racing this call are refused.
func (l *local[T]) invalidate(keys []string) {
	for _, k := range keys {
		h := l.slot(k)
		l.keyGens[h%genSlots].Add(1)
		sh := &l.shards[h%l1Shards]
		sh.mu.Lock()
		delete(sh.m, k)
		sh.mu.Unlock()
	}
}

func (l *local[T]) clear() {
	l.epoch.Add(1)
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		clear(sh.m)
		sh.mu.Unlock()
	}
}

// localTier is what the bus needs of a cache's L1, whatever its T.
type localTier interface {
	invalidate(keys []string)
	clear()
}
