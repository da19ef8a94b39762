package aside

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
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

// WithL1 enables the local tier for this cache: at most maxEntries decoded
// values, each kept at most ttl (and never past its Redis freshness). ttl
// must not exceed the profile's TTL. Values handed out from L1 are shared
// between callers: treat them as read-only. Default: off.
func WithL1(maxEntries int, ttl time.Duration) Option {
	return func(o *cacheOptions) { o.l1Entries, o.l1TTL = maxEntries, ttl }
}

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

	// Test hooks: beforeFill runs between the Redis read and the L1 fill;
	// unchecked is the broken variant that fills without the fill rule.
	beforeFill func(key string)
	unchecked  bool
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

// l1Note is what a Get records before its Redis read: the generations its
// L1 fill must still find afterwards.
type l1Note struct {
	ok       bool // the bus is up: filling is allowed
	keyGen   uint64
	epoch    uint64
	busEpoch uint64
	tagSlots []uint16
	tagGens  []uint64
}

func newLocal[T any](entries int, ttl time.Duration, b *bus) *local[T] {
	l := &local[T]{perShard: max(1, (entries+l1Shards-1)/l1Shards), ttl: ttl, bus: b}
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
	if e == nil || !l.valid(e, h) || time.Now().UnixNano() >= e.expires {
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

func (l *local[T]) note(key string, tags []string) l1Note {
	n := l1Note{
		ok:       l.bus.up.Load(),
		keyGen:   l.keyGens[l.slot(key)%genSlots].Load(),
		epoch:    l.epoch.Load(),
		busEpoch: l.bus.epoch.Load(),
	}
	if len(tags) > 0 {
		n.tagSlots = make([]uint16, len(tags))
		n.tagGens = make([]uint64, len(tags))
		for i, t := range tags {
			s := uint16(maphash.String(l.bus.seed, t) % genSlots)
			n.tagSlots[i], n.tagGens[i] = s, l.bus.tagGens[s].Load()
		}
	}
	// Read after the counters: if the bus went down meanwhile, epoch moved.
	n.ok = n.ok && l.bus.up.Load()
	return n
}

// set stores v if nothing that could make it stale happened since n was
// taken: no invalidation of the key, of its tags, of the cache, and no
// subscription loss. freshUntil caps the entry's life at its Redis freshness.
func (l *local[T]) set(key string, v T, n l1Note, freshUntil time.Time) {
	if l.beforeFill != nil {
		l.beforeFill(key)
	}
	if l.unchecked {
		n = l.note(key, nil)
	}
	if !n.ok {
		return
	}
	expires := time.Now().Add(l.ttl).UnixNano()
	if fu := freshUntil.UnixNano(); fu < expires {
		expires = fu
	}
	h := l.slot(key)
	e := &l1Entry[T]{v: v, expires: expires, keyGen: n.keyGen, epoch: n.epoch, busEpoch: n.busEpoch, tagSlots: n.tagSlots, tagGens: n.tagGens}
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

// bus carries invalidations between Stores over Redis pub/sub. Every Store
// publishes; a Store subscribes once its first cache with L1 is created.
type bus struct {
	channel string
	origin  string // this Store's id: its own messages are ignored
	seed    maphash.Seed
	up      atomic.Bool   // subscribed and healthy: L1 may be used
	epoch   atomic.Uint64 // bumped on every subscription loss and recovery
	tagGens [genSlots]atomic.Uint64

	mu       sync.Mutex
	tiers    map[string][]localTier // by cache name
	started  bool
	cancel   context.CancelFunc
	ps       *redis.PubSub // closed by stop, to end a blocking read at once
	received atomic.Uint64
}

// busMessage is one published invalidation: keys of one cache, tags, or a
// whole cache (Names empty).
type busMessage struct {
	Origin string   `msgpack:"o"`
	Kind   byte     `msgpack:"k"`
	Cache  string   `msgpack:"c,omitempty"`
	Names  []string `msgpack:"n,omitempty"`
}

const (
	busKeys  = 'k'
	busTags  = 't'
	busCache = 'c'
	// busBatch bounds the names in one message, so that a mass invalidation
	// is a few messages rather than one huge one or a storm of small ones.
	busBatch = 512
	// busPing is how often a quiet subscription is checked; a stalled one is
	// detected within 3 of them.
	busPing = time.Second
)

func newBus(prefix string) *bus {
	return &bus{channel: prefix + ":#bus", origin: newToken()[:16], seed: maphash.MakeSeed(), tiers: map[string][]localTier{}}
}

// register adds a cache's L1 and starts the subscription on first use.
func (b *bus) register(s *Store, name string, t localTier) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tiers[name] = append(b.tiers[name], t)
	if b.started {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	if s.goTracked(func() { b.run(ctx, s) }) {
		b.started, b.cancel = true, cancel
	} else {
		cancel()
	}
}

func (b *bus) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cancel != nil {
		b.cancel()
	}
	if b.ps != nil {
		_ = b.ps.Close()
	}
}

func (b *bus) subscribe(ctx context.Context, s *Store) *redis.PubSub {
	ps := s.rdb.Subscribe(ctx, b.channel)
	b.mu.Lock()
	b.ps = ps
	b.mu.Unlock()
	return ps
}

// apply handles one invalidation: one heard on the channel, or one this
// Store made (before the call that made it returns: read-your-writes).
func (b *bus) apply(m busMessage) {
	if m.Kind == busTags {
		for _, t := range m.Names {
			b.tagGens[maphash.String(b.seed, t)%genSlots].Add(1)
		}
		return
	}
	b.mu.Lock()
	tiers := b.tiers[m.Cache]
	b.mu.Unlock()
	for _, t := range tiers {
		if m.Kind == busCache {
			t.clear()
		} else {
			t.invalidate(m.Names)
		}
	}
}

// publish adds the PUBLISH commands for m to a pipeline that also carries
// the invalidation itself: no extra round trip.
func (b *bus) publish(ctx context.Context, p redis.Pipeliner, m busMessage) {
	names := m.Names
	for {
		m.Names = names[:min(len(names), busBatch)]
		p.Publish(ctx, b.channel, b.encode(m))
		names = names[len(m.Names):]
		if len(names) == 0 {
			return
		}
	}
}

func (b *bus) encode(m busMessage) []byte {
	m.Origin = b.origin
	payload, _ := msgpack.Marshal(&m) // strings and bytes only: cannot fail
	return payload
}

// run keeps the subscription and applies what arrives. While it is down
// the L1 of every cache is unused (and logically cleared: the epoch moves
// on both the loss and the recovery, since messages may have been lost).
func (b *bus) run(ctx context.Context, s *Store) {
	ps := b.subscribe(ctx, s)
	defer func() { _ = ps.Close() }()
	down := func() {
		if b.up.Swap(false) {
			b.epoch.Add(1)
			s.log(slog.LevelWarn, "aside: invalidation subscription lost: L1 bypassed until it is back")
		}
	}
	defer down()
	backoff := 10 * time.Millisecond
	lastSeen := time.Now()
	for ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(ctx, busPing)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if time.Since(lastSeen) < 3*busPing {
					// A quiet channel: ask for a PONG, which proves the
					// connection alive when it arrives.
					pctx, cancel := context.WithTimeout(ctx, s.opTimeout)
					_ = ps.Ping(pctx)
					cancel()
					continue
				}
				// Nothing, not even a PONG: a stalled connection. Start over.
				_ = ps.Close()
				ps = b.subscribe(ctx, s)
				lastSeen = time.Now()
			}
			down()
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff, lastSeen = 10*time.Millisecond, time.Now()
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				b.epoch.Add(1) // anything cached before may have missed messages
				b.up.Store(true)
				s.log(slog.LevelInfo, "aside: invalidation subscription up: L1 in use")
			}
		case *redis.Message:
			var bm busMessage
			if msgpack.Unmarshal([]byte(m.Payload), &bm) != nil || bm.Origin == b.origin {
				continue
			}
			b.received.Add(1)
			b.apply(bm)
		}
	}
}
