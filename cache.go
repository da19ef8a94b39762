package aside

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/asidecache/aside/internal/l1"
)

// notFound gives a loader's not-found error the cache's one identity: with
// [WithNotFound], a loader may return either ErrNotFound or the cache's own
// error, and every not-found answer — the loader's, a shared one, a cached
// one — matches both.
func (c *Cache[T]) notFound(err error) error {
	if err == nil || c.ownNotFound == nil {
		return err
	}
	own, aside := errors.Is(err, c.ownNotFound), errors.Is(err, ErrNotFound)
	switch {
	case own && !aside:
		return &notFoundError{err: err, also: ErrNotFound}
	case aside && !own:
		return &notFoundError{err: err, also: c.ownNotFound}
	}
	return err
}

// Loader fetches a value from the source of truth after a miss. It runs on a
// context detached from the caller's cancellation and bounded by the
// profile's LoadTimeout. Concurrent callers of one key share one load, so a
// loader must return the same value whichever caller triggered it.
type Loader[T any] func(ctx context.Context) (T, error)

// Cache is a typed view of one namespace: values of type T under
// "prefix:name:vN:". Create it with [New].
type Cache[T any] struct {
	store   *Store
	name    string
	profile Profile
	keys    keyspace
	version int // WithVersion's
	codec   Codec
	// codecCopies: the codec keeps nothing of the bytes it decodes (the
	// built-in msgpack reads them through a reader), so a reply's bytes
	// need no copy of their own (see replyBytes).
	codecCopies bool
	typeID      uint32
	stats       counters
	trend       missTrend // whether reads lately missed: then they start with the lease script
	hooks       seams     // nil outside tests
	// naiveGet, nil outside tests, replaces the protocol with plain
	// cache-aside: the broken variant the stale-set race is measured on.
	naiveGet func(ctx context.Context, cl *call[T], src source[T])
	// ownNotFound is the error of WithNotFound (nil without), and
	// notFoundAnswer what a not-found that no loader returned just now (a
	// negative entry, a key a batch loader left out) answers.
	ownNotFound, notFoundAnswer error
	l1                          *l1.Tier[T] // nil unless WithL1
	check                       *checker[T] // nil unless WithCheck

	mu         sync.Mutex                 // protects leases, retired, polls, scripts, degraded and the pollers' rounds
	leases     map[string]*flight[T]      // fill attempts of this process, by lease token
	retired    retiredFlights[T]          // the last attempts that ended, still findable by token
	polls      map[string]*poller         // shared pollers of keys leased elsewhere, by entry key
	scripts    map[string]*leaseScript    // lone calls' lease scripts on the wire, by entry key
	degraded   map[string]*degradedKey[T] // loads while Redis cannot be used, by entry key
	refreshing sync.Map                   // entry keys with a background refresh running here
	spare      sync.Pool                  // *call[T] of answered Gets (recycle)
}

// New returns the cache for one namespace of store. name must be 1–64
// letters, digits, '_', '-' or '.'.
func New[T any](store *Store, name string, opts ...Option) (*Cache[T], error) {
	o := cacheOptions{version: 1, profile: Default}
	for _, opt := range opts {
		opt(&o)
	}
	if store == nil {
		return nil, errors.New("aside: nil store")
	}
	if err := validName("cache name", name); err != nil {
		return nil, err
	}
	if o.version < 1 {
		return nil, fmt.Errorf("aside: version must be >= 1, got %d", o.version)
	}
	p, ok := store.profiles[o.profile]
	if !ok {
		return nil, fmt.Errorf("aside: unknown profile %q", o.profile)
	}

	if o.codec == nil {
		if err := checkEncodable(reflect.TypeFor[T]()); err != nil {
			return nil, err
		}
		o.codec = msgpackCodec{}
	}
	if o.l1Entries != 0 || o.l1TTL != 0 {
		switch {
		case o.l1Entries < 1:
			return nil, fmt.Errorf("aside: L1 needs at least 1 entry, got %d", o.l1Entries)
		case o.l1TTL <= 0 || o.l1TTL > p.TTL:
			return nil, fmt.Errorf("aside: L1 TTL must be in (0, %v] (the profile's TTL), got %v", p.TTL, o.l1TTL)
		}
	}
	// One name, one type: the bus tells invalidations by cache name, and two
	// types under one name would only ever read each other's entries as
	// misses.
	t := reflect.TypeFor[T]()
	if prev, loaded := store.types.LoadOrStore(name, t); loaded && prev != t {
		return nil, fmt.Errorf("aside: cache %q already holds %v in this Store, not %v: give it another name", name, prev, t)
	}
	c := &Cache[T]{
		store:   store,
		name:    name,
		profile: p,
		keys:    newKeyspace(store.prefix, name, o.version),
		version: o.version,
		codec:   o.codec,
		typeID:  typeFingerprint[T](),
		hooks:   store.hooks,

		codecCopies:    o.codec == Codec(msgpackCodec{}),
		ownNotFound:    o.notFound,
		notFoundAnswer: ErrNotFound,
		leases:         map[string]*flight[T]{},
		polls:          map[string]*poller{},
		scripts:        map[string]*leaseScript{},
		degraded:       map[string]*degradedKey[T]{},
	}
	if o.notFound != nil {
		c.notFoundAnswer = &notFoundError{err: o.notFound, also: ErrNotFound}
	}
	if o.l1Entries > 0 {
		c.l1 = l1.New[T](l1.Config{Entries: o.l1Entries, TTL: o.l1TTL, Bus: store.bus, Now: store.now, RealClock: store.realClock})
		if h, ok := store.hooks.(interface{ L1Seams() l1.Seams }); ok { // a test's, set on the Store
			c.l1.SetSeams(h.L1Seams())
		}
		store.bus.Register(name, c.l1)
	}
	if o.check != nil {
		cfg, ok := o.check.(Check[T])
		if !ok {
			return nil, fmt.Errorf("aside: WithCheck for %T on a cache of %v: it needs a Check[%v]", o.check, t, t)
		}
		k, err := newChecker(c, cfg)
		if err != nil {
			return nil, err
		}
		c.check = k
		store.checks.Store(name, k)
	}
	// Recorded in Redis before the Store's next read (versions.go), so that
	// invalidations made elsewhere reach this version's entries.
	store.versions.use(name, o.version)
	return c, nil
}

// Name returns the cache's namespace.
func (c *Cache[T]) Name() string { return c.name }

// Stats returns a snapshot of the cache's counters.
func (c *Cache[T]) Stats() Stats {
	s := c.stats.snapshot()
	s.Cache, s.Profile, s.Breaker, s.Coherence = c.name, c.profile.Name, BreakerState(c.store.breaker.State()), c.store.Coherence()
	if c.check != nil {
		s.Check = c.check.stats()
	}
	return s
}

// Get returns the value cached under key or, on a miss, calls load, returns
// its result and stores it with the profile's TTL and jitter.
//
// A miss returns what its hits will: the value load returned as the codec
// decodes it from the entry stored — so a response never changes between
// the first read and the next. With the default codec (msgpack) that means
// times in [time.Local] (msgpack keeps the instant, not the location) and
// unexported fields left zero; nil and empty slices and maps, pointers,
// embedded structs and []byte come back as they were. A value that is not
// stored (over MaxEntryBytes, not encodable, Redis unreachable) is the
// loader's own.
//
// A miss takes a lease on the key in Redis: across every process, one caller
// loads while the others wait for its value (at most the profile's
// WaitBudget), and the value is written only if no invalidation came in
// between. Each caller waits on its own ctx; the load runs on a detached
// context bounded by the profile's LoadTimeout. The loading caller gets its
// value as soon as load returns; the write follows a round trip later, and
// reads meanwhile wait for it ([Store.Wait] waits for it too).
//
// A loader error is returned unchanged and not cached, except [ErrNotFound]
// under a profile with NegativeTTL. Get fails open: when Redis is slow, down,
// or holds an entry that does not decode, the value comes from the loader and
// the problem is counted in [Stats].
func (c *Cache[T]) Get(ctx context.Context, key string, load Loader[T], opts ...CallOption) (T, error) {
	if c.l1 != nil && c.store.tracer == nil && len(opts) == 0 && key != "" && load != nil {
		// The L1 hit, the path that costs nanoseconds: nothing else first.
		// (An L1 miss looks once more below, on its way to Redis.)
		if v, ok := c.l1.Get(key); ok {
			if n := c.stats.l1Hits.add(); c.check != nil && c.check.sampleL1Hit(n) {
				c.check.checkL1Hit(key, v)
			}
			return v, nil
		}
	}
	if c.store.tracer == nil {
		v, _, err := c.get(ctx, key, load, opts)
		return v, err
	}
	ctx, span := c.store.tracer.Start(ctx, "get", c.name)
	v, o, err := c.get(ctx, key, load, opts)
	span.End(one(o), err)
	return v, err
}

func (c *Cache[T]) get(ctx context.Context, key string, load Loader[T], opts []CallOption) (T, Outcome, error) {
	var zero T
	if key == "" {
		return zero, OutcomeNone, errEmptyKey
	}
	if load == nil {
		return zero, OutcomeNone, errNilLoader
	}
	cl, v, err := c.start(key, opts)
	if cl == nil {
		if err != nil {
			return v, OutcomeNone, err
		}
		return v, OutcomeL1Hit, nil
	}
	c.resolve(ctx, cl.alone(), source[T]{one: load})
	c.recountWaited(cl)
	c.fillL1(cl)
	v, o, err := cl.v, cl.outcome, cl.err
	c.recycle(cl)
	return v, o, err
}

// recycle keeps cl for a later call when nothing but its Get can hold it:
// it was answered by its first read, from Redis (a hit, a stale or a
// negative entry), and never missed (no deadline: no lease, wait, flight or
// shared script has seen it; a degraded load answers OutcomeDegraded). A
// call is most of what a hit allocates beyond the floor's GET and decode,
// and a process whose heap churns pays for every byte in GC assists. Any
// other call is left to the GC.
func (c *Cache[T]) recycle(cl *call[T]) {
	if !cl.deadline.IsZero() || c.naiveGet != nil {
		return
	}
	switch cl.outcome {
	case OutcomeHit, OutcomeStale, OutcomeNegative:
		*cl = call[T]{} // drops the value, which the caller has a copy of
		c.spare.Put(cl)
	}
}

// start checks a one-key read and answers it from L1 when it can (cl is
// nil then); otherwise it returns the call to resolve, with its L1
// generations noted before any Redis read (the fill rule).
func (c *Cache[T]) start(key string, opts []CallOption) (cl *call[T], v T, err error) {
	if key == "" {
		return nil, v, errEmptyKey
	}
	o, err := collectCallOptions(opts)
	if err != nil {
		return nil, v, err
	}
	if c.l1 != nil {
		if v, ok := c.l1.Get(key); ok {
			if n := c.stats.l1Hits.add(); c.check != nil && c.check.sampleL1Hit(n) {
				c.check.checkL1Hit(key, v)
			}
			return nil, v, nil
		}
	}
	tags, err := o.tagsFor(key)
	if err != nil {
		return nil, v, err
	}
	cl, _ = c.spare.Get().(*call[T]) // zeroed by recycle
	if cl == nil {
		cl = new(call[T])
	}
	cl.key, cl.rk, cl.tags, cl.leaseFirst = key, c.keys.entry(key), tags, o.leaseFirst
	if c.l1 != nil {
		cl.note = c.l1.Note(key)
	}
	return cl, v, nil
}

// fillL1 keeps a call's answer in L1 when it may: see [call].
func (c *Cache[T]) fillL1(cl *call[T]) {
	if c.l1 == nil || cl.err != nil || !cl.l1OK {
		return
	}
	c.keepInL1(cl.key, cl.v, cl.note, cl.freshUntil, cl.entryTags, cl.tags)
}

// keepInL1 keeps v in L1, guarded by the tags of its entry (or, in the
// broken variant, only by the tags the call named), unless an invalidation
// arrived since n was noted.
func (c *Cache[T]) keepInL1(key string, v T, n l1.Note, freshUntil time.Time, entryTags []tagToken, callTags []string) {
	if c.l1 == nil {
		return
	}
	if variantOn(c.hooks, vCallTagsOnly) {
		entryTags = nil
		for _, t := range callTags {
			entryTags = append(entryTags, tagToken{Name: t})
		}
	}
	c.l1.Set(key, v, n, freshUntil, entryTags)
}
