// Package l1 is the local tier: decoded values in process memory, so that
// a hit costs neither a round trip nor a decode, kept coherent through the
// bus (internal/bus).
package l1

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asidecache/aside/internal/bus"
	"github.com/asidecache/aside/internal/envelope"
)

// The L1 tier keeps decoded values in process memory, so a hit costs
// neither a round trip nor a decode. It is a small structure of our own
// (sharded maps, sampled CLOCK eviction) rather than a dependency: the core
// module stays on its four dependencies, and what L1 needs beyond a bounded
// map — generations checked on every hit, an epoch for whole-tier clears —
// would wrap any library anyway.
//
// Coherence: every invalidation is published on the Store's channel; each
// Store drops what it hears and ignores its own messages, and answers from
// L1 only under its lease (see the bus package). Rather than
// deleting eagerly, invalidations bump generations — per key (hashed),
// per tag (hashed), per cache and per subscription epoch — and a hit is
// valid only while the generations it recorded before its Redis read are
// unchanged. So a fill that raced an invalidation (T8) is never served, and
// clearing the whole tier when the subscription drops is O(1).

const (
	genSlots    = 1024 // hashed generation counters per cache (keys) and per Store (tags)
	l1Sample    = 5    // entries looked at per eviction
	l1PerShard  = 32   // target entries per shard: what a fill copies
	l1MinShards = 16
	l1MaxShards = 4096
)

// Tier is one cache's L1.
type Tier[T any] struct {
	shards   []l1Shard[T] // a power of two
	perShard int
	ttl      time.Duration
	bus      *bus.Bus
	keyGens  [genSlots]atomic.Uint64
	epoch    atomic.Uint64    // bumped by Purge and messages that clear the cache
	seams    Seams            // nil outside tests
	now      func() time.Time // the Store's clock: an entry leaves L1 when its freshness ends, on that clock
	// realClock: now is time.Now, so entries expire on the lease's
	// monotonic clock and a hit reads one clock, once.
	realClock bool
}

// l1Shard is read without a lock: a hit loads the map pointer, and a fill
// copies the map (a few dozen entries) and swaps the pointer. Hits, the hot
// path, then write no shared memory, so they scale with cores; a fill
// already paid a Redis round trip.
type l1Shard[T any] struct {
	mu sync.Mutex // serializes fills and clears
	m  atomic.Pointer[map[uint64]*l1Entry[T]]
	_  [48]byte // a cache line of its own: no false sharing between shards
}

type l1Entry[T any] struct {
	key      string // the map is keyed by its hash: one hash per hit, not two
	v        T
	expires  int64 // on the clock of local.clock
	keyGen   uint64
	epoch    uint64
	busEpoch uint64
	tagSlots []uint16
	tagGens  []uint64
	used     atomic.Bool // CLOCK bit: set on hit, cleared by eviction sampling
}

// Note is what a read records before its Redis read: the generations its
// L1 fill must still find afterwards. The tags are not among them: they are
// the entry's, known only after the read; tagEpoch stands for all of them.
type Note struct {
	keyGen uint64
	epoch  uint64
	bus    bus.Note
}

func New[T any](cfg Config) *Tier[T] {
	n := l1MinShards
	for n < l1MaxShards && n*l1PerShard < cfg.Entries {
		n *= 2
	}
	l := &Tier[T]{shards: make([]l1Shard[T], n), perShard: max(1, (cfg.Entries+n-1)/n), ttl: cfg.TTL, bus: cfg.Bus,
		now: cfg.Now, realClock: cfg.RealClock}
	for i := range l.shards {
		l.shards[i].m.Store(&map[uint64]*l1Entry[T]{})
	}
	return l
}

// clock is the time entries expire by, in nanoseconds: the lease's
// monotonic clock (mono, already read) when the Store's clock is the real
// one, and the Store's clock otherwise (tests move it).
func (l *Tier[T]) clock(mono int64) int64 {
	if l.realClock {
		return mono
	}
	return l.now().UnixNano()
}

func (l *Tier[T]) slot(key string) uint64 { return maphash.String(l.bus.Seed(), key) }

// Get returns a valid, unexpired value while the Store holds its lease
// (see the bus package); it allocates nothing.
func (l *Tier[T]) Get(key string) (T, bool) {
	var zero T
	lease := l.bus.Lease() // first: a lease extended meanwhile is not needed, the older one is the stricter
	if lease == 0 {
		return zero, false
	}
	h := l.slot(key)
	e := (*l.shard(h).m.Load())[h]
	if e == nil || e.key != key || !l.valid(e, h) {
		return zero, false
	}
	mono := l.bus.Mono()
	if !l.bus.Holds(lease, mono) {
		return zero, false
	}
	if now := l.clock(mono); now >= e.expires {
		return zero, false
	}
	if !e.used.Load() {
		e.used.Store(true)
	}
	return e.v, true
}

func (l *Tier[T]) valid(e *l1Entry[T], h uint64) bool {
	return e.keyGen == l.keyGens[h%genSlots].Load() && e.epoch == l.epoch.Load() && l.bus.Valid(e.busEpoch, e.tagSlots, e.tagGens)
}

func (l *Tier[T]) Note(key string) Note {
	return Note{
		keyGen: l.keyGens[l.slot(key)%genSlots].Load(),
		epoch:  l.epoch.Load(),
		bus:    l.bus.Note(),
	}
}

// Set stores v if nothing that could make it stale happened since n was
// taken: no invalidation of the key, of any tag the entry carries, of the
// cache, and no doubt about the bus. freshUntil caps the entry's life at its
// Redis freshness. tags are the entry's own, not only those the reading call
// named: an L1 copy is dropped by an invalidation of any of them.
func (l *Tier[T]) Set(key string, v T, n Note, freshUntil time.Time, tags []envelope.Tag) {
	l.beforeFill(key)
	if l.unchecked() {
		n = l.Note(key)
	}
	if !n.bus.Up {
		return
	}
	life := l.ttl
	if fresh := freshUntil.Sub(l.now()); fresh < life {
		life = fresh
	}
	expires := l.clock(l.bus.Mono()) + int64(life)
	e := &l1Entry[T]{key: key, v: v, expires: expires, keyGen: n.keyGen, epoch: n.epoch, busEpoch: n.bus.Epoch}
	if len(tags) > 0 {
		e.tagSlots, e.tagGens = make([]uint16, len(tags)), make([]uint64, len(tags))
		if !bus.TagGens(l.bus, n.bus, tags, tagName, e.tagSlots, e.tagGens) {
			return // a tag invalidation began since n: the generations may postdate the read
		}
	}
	h := l.slot(key)
	if !l.valid(e, h) || !l.bus.Up() {
		return // an invalidation arrived during the read: do not keep its result
	}
	sh := l.shard(h)
	sh.mu.Lock()
	old := *sh.m.Load()
	m := make(map[uint64]*l1Entry[T], len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	if _, exists := m[h]; !exists && len(m) >= l.perShard {
		evictOne(m)
	}
	m[h] = e // a key whose 64-bit hash another has takes its place: a miss for that one, never its value
	sh.m.Store(&m)
	sh.mu.Unlock()
	// The generations may have moved while we inserted; valid() on every
	// hit catches that, so no lock is held across the check.
}

// evictOne removes one entry, sampled CLOCK: among a few entries (map
// iteration starts at a random bucket), the first not used since it was
// last sampled; failing that, the one expiring first.
func evictOne[T any](m map[uint64]*l1Entry[T]) {
	var victim uint64
	var soonest int64
	n := 0
	for k, e := range m {
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
	delete(m, victim)
}

func (l *Tier[T]) shard(h uint64) *l1Shard[T] { return &l.shards[h&uint64(len(l.shards)-1)] }

// Invalidate bumps the keys' generations: their entries fail every later
// check at once (read-your-writes for this Store), and fills racing this
// call are refused. The entries stay until evicted — never hit again, they
// are the first the sampled CLOCK takes — so an invalidation copies nothing.
func (l *Tier[T]) Invalidate(keys []string) {
	for _, k := range keys {
		l.keyGens[l.slot(k)%genSlots].Add(1)
	}
}

// Clear drops every entry of the cache.
func (l *Tier[T]) Clear() {
	l.epoch.Add(1)
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		sh.m.Store(&map[uint64]*l1Entry[T]{})
		sh.mu.Unlock()
	}
}

func tagName(t envelope.Tag) string { return t.Name }

// Config is what a tier is built with.
type Config struct {
	Entries   int           // at most, about
	TTL       time.Duration // an entry's longest life in L1
	Bus       *bus.Bus      // the Store's: its lease, epochs and tag generations guard every hit
	Now       func() time.Time
	RealClock bool // Now is time.Now: entries expire on the bus's monotonic clock, read once per hit
}

// Seams let a test interleave with a fill, or take its check out; nil
// outside tests.
type Seams interface {
	BeforeFill(key string) // between the Redis read and the L1 fill
	Unchecked() bool       // T8's broken variant: fill without the generation check
}

// SetSeams installs a test's seams; call it before the tier is used.
func (l *Tier[T]) SetSeams(s Seams) { l.seams = s }

func (l *Tier[T]) beforeFill(key string) {
	if l.seams != nil {
		l.seams.BeforeFill(key)
	}
}

func (l *Tier[T]) unchecked() bool { return l.seams != nil && l.seams.Unchecked() }
