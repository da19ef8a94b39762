// Package aside is a cache-aside library for Go services over Redis.
//
// A [Store] wraps one go-redis client (single node, Sentinel, Ring or
// Cluster); [New] derives a typed [Cache] for one namespace, schema version
// and value type. [Cache.Get] returns the cached value, or calls the loader
// (the slow repository call) on a miss, stores its result and returns it.
//
// Keys are self-describing and versioned: "prefix:name:vN:{key}". The user
// key is escaped so that it can neither collide with another key, nor change
// the Redis Cluster slot, nor act as a SCAN pattern; build multi-part keys
// with [Key]. Bumping the version ([WithVersion]) makes every old entry
// unreachable at once.
//
// A hit costs one round trip (HGET) and a decode — or nothing with the
// local tier ([WithL1]). A miss takes a lease in the entry's own Redis key:
// across every process one caller loads while the others wait for its
// value, and the value is written with a compare-and-set on the lease, so a
// load that read a row before an invalidation can never write it back.
// Entries refresh early (XFetch), may be served stale while one caller
// reloads them ([Profile].StaleWindow), and a loader's [ErrNotFound] is
// cached for a while.
//
// Invalidation is by key ([Cache.Invalidate]), by tag ([Tags],
// [Store.InvalidateTags]: one command whatever the number of tagged
// entries), by namespace (version, [Cache.Purge]), hard or soft
// ([Cache.MarkStale]); [Store.Write] runs it after the write it follows.
// Once an invalidation has returned, no Get that starts afterwards returns
// the old value from Redis; local tiers of other processes follow within a
// pub/sub delivery.
//
// Redis is an optimisation, never a dependency: every Redis call has its own
// timeout ([WithOpTimeout]); a failed read is counted and served by the
// loader; after repeated failures a circuit breaker stops calling Redis until
// a probe succeeds; an invalidation that could not reach Redis is returned
// as an error and replayed before Redis is read again.
//
// All methods are safe for concurrent use.
package aside

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrNotFound is what a [Loader] returns (wrapped or not) when the source
	// has no such row. With a profile's NegativeTTL it is cached: later Gets
	// return ErrNotFound without calling the loader.
	ErrNotFound = errors.New("aside: not found")
	// ErrLoaderPanic is returned, wrapped with the panic value and stack, to
	// every caller sharing a load whose loader panicked.
	ErrLoaderPanic = errors.New("aside: loader panic")
	// ErrUnavailable is returned by writes ([Cache.Set], [Cache.Invalidate])
	// while the circuit breaker keeps the Store away from Redis.
	ErrUnavailable = errors.New("aside: redis unavailable")
)

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
	codec   Codec
	typeID  uint32
	stats   counters
	hooks   *testHooks // nil outside tests
	l1      *local[T]  // nil unless WithL1

	mu         sync.Mutex                 // protects leases, polls, degraded and the pollers' rounds
	leases     map[string]*flight[T]      // fill attempts of this process, by lease token
	polls      map[string]*poller         // shared pollers of keys leased elsewhere, by entry key
	degraded   map[string]*degradedKey[T] // loads while Redis cannot be used, by entry key
	refreshing sync.Map                   // entry keys with a background refresh running here
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
	c := &Cache[T]{
		store:    store,
		name:     name,
		profile:  p,
		keys:     newKeyspace(store.prefix, name, o.version),
		codec:    o.codec,
		typeID:   typeFingerprint[T](),
		hooks:    store.hooks,
		leases:   map[string]*flight[T]{},
		polls:    map[string]*poller{},
		degraded: map[string]*degradedKey[T]{},
	}
	if o.l1Entries > 0 {
		c.l1 = newLocal[T](o.l1Entries, o.l1TTL, store)
		store.bus.register(store, name, c.l1)
	}
	return c, nil
}

// Name returns the cache's namespace.
func (c *Cache[T]) Name() string { return c.name }

// Stats returns a snapshot of the cache's counters.
func (c *Cache[T]) Stats() Stats {
	s := c.stats.snapshot()
	s.Cache, s.Profile, s.Breaker, s.Coherence = c.name, c.profile.Name, c.store.breaker.State(), c.store.Coherence()
	return s
}

var (
	errEmptyKey  = errors.New("aside: empty key")
	errNilLoader = errors.New("aside: nil loader")
)

// Get returns the value cached under key or, on a miss, calls load, stores
// its result with the profile's TTL and jitter, and returns it.
//
// A miss takes a lease on the key in Redis: across every process, one caller
// loads while the others wait for its value (at most the profile's
// WaitBudget), and the value is written only if no invalidation came in
// between. Each caller waits on its own ctx; the load runs on a detached
// context bounded by the profile's LoadTimeout.
//
// A loader error is returned unchanged and not cached, except [ErrNotFound]
// under a profile with NegativeTTL. Get fails open: when Redis is slow, down,
// or holds an entry that does not decode, the value comes from the loader and
// the problem is counted in [Stats].
func (c *Cache[T]) Get(ctx context.Context, key string, load Loader[T], opts ...CallOption) (T, error) {
	var zero T
	if key == "" {
		return zero, errEmptyKey
	}
	if load == nil {
		return zero, errNilLoader
	}
	o, err := collectCallOptions(opts)
	if err != nil {
		return zero, err
	}
	if c.l1 != nil {
		if v, ok := c.l1.get(key); ok {
			c.stats.l1Hits.Add(1)
			return v, nil
		}
	}
	cl := &call[T]{key: key, rk: c.keys.entry(key), tags: o.tags}
	c.getOne(ctx, cl, load)
	return cl.v, cl.err
}

// getOne resolves one call below the L1 tier and fills L1 with its answer.
func (c *Cache[T]) getOne(ctx context.Context, cl *call[T], load Loader[T]) {
	if c.l1 != nil {
		cl.note = c.l1.note(cl.key) // before the Redis read: the fill rule
	}
	c.resolve(ctx, cl.alone(), source[T]{one: load})
	c.fillL1(cl)
}

// fillL1 keeps a call's answer in L1 when it may: see [call].
func (c *Cache[T]) fillL1(cl *call[T]) {
	if c.l1 == nil || cl.err != nil || !cl.l1OK {
		return
	}
	tags := cl.entryTags
	if c.hooks.callTagsOnly() { // the broken variant: guarded by the call's tags only
		tags = nil
		for _, t := range cl.tags {
			tags = append(tags, tagToken{name: t})
		}
	}
	c.l1.set(cl.key, cl.v, cl.note, cl.freshUntil, tags)
}

// Set stores v under key now (write-through, for values just written to the
// source). It fails closed: a Redis error, an encoding error or a value over
// MaxEntryBytes is returned — and the key is invalidated (or the
// invalidation queued), so that the value it was meant to replace is not
// served on.
func (c *Cache[T]) Set(ctx context.Context, key string, v T, opts ...CallOption) error {
	if key == "" {
		return errEmptyKey
	}
	o, err := collectCallOptions(opts)
	if err != nil {
		return err
	}
	if err := c.set(ctx, key, v, o); err != nil {
		// The caller meant to replace the entry: the old value must not
		// outlive a failed replacement. Invalidate queues itself if Redis
		// is away.
		_ = c.Invalidate(ctx, key)
		return err
	}
	return nil
}

func (c *Cache[T]) set(ctx context.Context, key string, v T, o callOptions) error {
	tokens, err := c.store.ensureTokens(ctx, o.tags)
	if err != nil {
		return err
	}
	fresh := c.profile.freshFor() // jittered like a fill
	b, err := c.encode(v, c.store.now(), fresh, 0, tokens)
	if err != nil {
		return err
	}
	if max := c.profile.MaxEntryBytes; max > 0 && len(b) > max {
		c.stats.oversize.Add(1)
		return fmt.Errorf("aside: entry of %d bytes exceeds MaxEntryBytes %d", len(b), max)
	}
	if !c.store.usable(ctx) {
		return ErrUnavailable
	}
	rk := c.keys.entry(key)
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	acks, err := c.store.writeAndTell(octx, func(p redis.Pipeliner) {
		setScript.Eval(octx, p, []string{rk}, b, (fresh + c.profile.StaleWindow).Milliseconds())
	}, busMessage{Kind: busKeys, Cache: c.name, Names: []string{key}})
	c.store.record(octx, err, &c.stats, c.name)
	if err != nil {
		return fmt.Errorf("aside: set: %w", err)
	}
	c.stats.bytesWritten.Add(uint64(len(b)))
	if err := acks.wait(ctx); err != nil {
		return fmt.Errorf("aside: set: %w", err)
	}
	return nil
}

// setScript replaces the entry and its TTL atomically and revokes any
// lease, so that a load in flight cannot overwrite what Set wrote. DEL
// first also overwrites a key of another Redis type planted under our name.
var setScript = redis.NewScript(`
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1`)

// writeEntry stores encoded bytes unconditionally, revoking any lease. Only
// the broken variants of the tests write without a lease.
func (c *Cache[T]) writeEntry(ctx context.Context, rk string, b []byte, ttl time.Duration) error {
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	err := setScript.Run(octx, c.store.rdb, []string{rk}, b, ttl.Milliseconds()).Err()
	c.store.record(octx, err, &c.stats, c.name)
	return err
}

func (c *Cache[T]) encode(v T, created time.Time, fresh, loadTime time.Duration, tags []tagToken) ([]byte, error) {
	payload, err := c.codec.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("aside: encode: %w", err)
	}
	return encodeEnvelope(envelope{
		typeID:     c.typeID,
		createdMs:  created.UnixMilli(),
		freshMs:    created.Add(fresh).UnixMilli(),
		loadMicros: loadTime.Microseconds(),
		tags:       tags,
		payload:    payload,
	}, c.profile.CompressAbove), nil
}

// encodeForFill encodes a loaded value; a value that cannot be stored
// (encoding error, over MaxEntryBytes) is counted and reported, not returned:
// the caller has its value already.
func (c *Cache[T]) encodeForFill(v T, created time.Time, fresh, took time.Duration, tags []tagToken) ([]byte, bool) {
	b, err := c.encode(v, created, fresh, took, tags)
	if err != nil {
		c.stats.encodeErrors.Add(1)
		c.store.emit(Event{Kind: EventEncodeError, Cache: c.name, Err: err})
		return nil, false
	}
	if max := c.profile.MaxEntryBytes; max > 0 && len(b) > max {
		c.stats.oversize.Add(1)
		c.store.emit(Event{Kind: EventOversize, Cache: c.name, Err: fmt.Errorf("aside: entry of %d bytes exceeds MaxEntryBytes %d", len(b), max)})
		return nil, false
	}
	return b, true
}

// checkEncodable rejects, at construction, value types that msgpack cannot
// encode (functions, channels, unsafe pointers), so the mistake shows up in
// New rather than as an error on every miss.
func checkEncodable(t reflect.Type) error {
	seen := map[reflect.Type]bool{}
	var walk func(t reflect.Type, path string) error
	walk = func(t reflect.Type, path string) error {
		if seen[t] {
			return nil
		}
		seen[t] = true
		switch t.Kind() {
		case reflect.Func, reflect.Chan, reflect.UnsafePointer:
			return fmt.Errorf("aside: type %v cannot be encoded with msgpack: %s is a %v", t, path, t.Kind())
		case reflect.Pointer, reflect.Slice, reflect.Array:
			return walk(t.Elem(), path+"[]")
		case reflect.Map:
			if err := walk(t.Key(), path+" key"); err != nil {
				return err
			}
			return walk(t.Elem(), path+" value")
		case reflect.Struct:
			for i := range t.NumField() {
				f := t.Field(i)
				if !f.IsExported() || f.Tag.Get("msgpack") == "-" {
					continue
				}
				if err := walk(f.Type, path+"."+f.Name); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk(t, "value")
}
