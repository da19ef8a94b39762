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
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"
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

	mu         sync.Mutex
	leases     map[string]*flight[T] // fill attempts of this process, by lease token
	polls      map[string]*poller    // shared pollers of keys leased elsewhere, by entry key
	refreshing sync.Map              // entry keys with a background refresh running here
	keyFlights singleflight.Group    // degraded mode only: one load per key while Redis is away
}

// Option configures a [Cache].
type Option func(*cacheOptions)

type cacheOptions struct {
	version   int
	profile   string
	codec     Codec
	l1Entries int
	l1TTL     time.Duration
}

// WithVersion sets the schema version embedded in every key. Bump it when T
// changes shape: old entries become unreachable at once and expire.
// Default: 1.
func WithVersion(v int) Option { return func(o *cacheOptions) { o.version = v } }

// WithProfile selects the TTL profile by name: a built-in ([Default],
// [Transactional], [Analytical], [Master]) or one registered with
// [WithProfiles]. Default: [Default].
func WithProfile(name string) Option { return func(o *cacheOptions) { o.profile = name } }

// WithCodec replaces the msgpack payload codec. Default: msgpack.
func WithCodec(c Codec) Option { return func(o *cacheOptions) { o.codec = c } }

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
		store:   store,
		name:    name,
		profile: p,
		keys:    newKeyspace(store.prefix, name, o.version),
		codec:   o.codec,
		typeID:  typeFingerprint[T](),
		leases:  map[string]*flight[T]{},
		polls:   map[string]*poller{},
	}
	if o.l1Entries > 0 {
		c.l1 = newLocal[T](o.l1Entries, o.l1TTL, store.bus)
		store.bus.register(store, name, c.l1)
	}
	return c, nil
}

// Name returns the cache's namespace.
func (c *Cache[T]) Name() string { return c.name }

// Stats returns a snapshot of the cache's counters.
func (c *Cache[T]) Stats() Stats {
	s := c.stats.snapshot()
	s.Cache, s.Profile, s.Breaker = c.name, c.profile.Name, c.store.breaker.State()
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
	if c.l1 == nil {
		return c.get(ctx, &call[T]{rk: c.keys.entry(key), load: load, tags: o.tags})
	}
	if v, ok := c.l1.get(key); ok {
		c.stats.l1Hits.Add(1)
		return v, nil
	}
	note := c.l1.note(key, o.tags) // before the Redis read: the fill rule
	cl := &call[T]{rk: c.keys.entry(key), load: load, tags: o.tags}
	v, err := c.get(ctx, cl)
	if err == nil && cl.l1OK {
		c.l1.set(key, v, note, cl.freshUntil)
	}
	return v, err
}

// get is Get below the L1 tier.
func (c *Cache[T]) get(ctx context.Context, cl *call[T]) (T, error) {
	var zero T
	load := cl.load
	if c.hooks.naive() {
		return c.naiveGet(ctx, cl)
	}
	for {
		if !c.store.breaker.allow() || !c.store.drained(ctx) {
			c.stats.skipped.Add(1)
			return c.loadDegraded(ctx, cl.rk, load)
		}
		b, err := c.read(ctx, cl)
		switch {
		case err != nil && ctx.Err() != nil:
			return zero, ctx.Err()
		case err != nil:
			return c.loadDegraded(ctx, cl.rk, load)
		case b != nil:
			if v, err, ok := c.serve(ctx, cl, b); ok {
				return v, err
			}
		}
		if cl.deadline.IsZero() {
			cl.deadline = time.Now().Add(c.profile.waitBudget())
		}
		if v, err, done := c.miss(ctx, cl, b, b != nil); done {
			return v, err
		}
		if time.Now().After(cl.deadline) {
			c.stats.waitTimeouts.Add(1)
			return c.loadAlone(ctx, load)
		}
	}
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
	b, err := c.encode(v, c.store.now(), c.profile.TTL, 0, tokens)
	if err != nil {
		return err
	}
	if max := c.profile.MaxEntryBytes; max > 0 && len(b) > max {
		c.stats.oversize.Add(1)
		return fmt.Errorf("aside: entry of %d bytes exceeds MaxEntryBytes %d", len(b), max)
	}
	return c.write(ctx, c.keys.entry(key), b, c.profile.TTL+c.profile.StaleWindow, key)
}

// setScript replaces the entry and its TTL atomically and revokes any
// lease, so that a load in flight cannot overwrite what Set wrote. DEL
// first also overwrites a key of another Redis type planted under our name.
var setScript = redis.NewScript(`
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1`)

// read fetches the stored bytes of one entry: nil when absent. A key of
// another Redis type reads as absent (the miss path deletes it); err is set
// only when Redis failed. With tags, the tags' current tokens come in the
// same round trip (one pipeline) and are kept in cl.snap.
func (c *Cache[T]) read(ctx context.Context, cl *call[T]) ([]byte, error) {
	octx, cancel := c.store.opContext(ctx)
	var b []byte
	var err error
	if len(cl.tags) == 0 {
		b, err = c.store.rdb.HGet(octx, cl.rk, fieldValue).Bytes()
	} else {
		b, err = c.readTagged(octx, cl)
	}
	cancel()
	switch {
	case errors.Is(err, redis.Nil):
		c.store.breaker.record(nil)
		c.stats.misses.Add(1)
		return nil, nil
	case err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE"):
		c.store.breaker.record(nil)
		c.decodeFailed(fmt.Errorf("%w: key holds another Redis type", errCorrupt))
		return nil, nil
	case err != nil:
		c.record(ctx, err)
		return nil, err
	}
	c.store.breaker.record(nil)
	return b, nil
}

// readTagged reads the entry and the call's tag tokens in one pipeline.
func (c *Cache[T]) readTagged(ctx context.Context, cl *call[T]) ([]byte, error) {
	var entry *redis.StringCmd
	rk, tags := cl.rk, cl.tags // the closure must not capture cl: it would move every call to the heap
	gets := make([]*redis.StringCmd, len(tags))
	_, _ = c.store.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		entry = p.HGet(ctx, rk, fieldValue)
		for i, t := range tags {
			gets[i] = p.Get(ctx, tagKey(c.store.prefix, t))
		}
		return nil
	})
	cl.snap = tagSnap{names: cl.tags, tokens: make([]string, len(cl.tags))}
	for i, g := range gets {
		if err := g.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		cl.snap.tokens[i] = g.Val() // "" when the tag key is missing
	}
	return entry.Bytes()
}

// serve turns stored bytes into Get's answer. ok is false when they do not
// decode, or their tags were invalidated (counted; the miss path replaces
// them). A stale, soft-invalidated or soon-expiring entry is served as it is
// while a background refresh reloads it.
func (c *Cache[T]) serve(ctx context.Context, cl *call[T], b []byte) (v T, err error, ok bool) {
	e, err := decodeEnvelope(b)
	if err == nil && e.typeID != c.typeID {
		err = fmt.Errorf("%w: written for another type", errCorrupt)
	}
	if err != nil {
		c.decodeFailed(err)
		return v, nil, false
	}
	tags := c.checkTags(ctx, &e, cl.snap)
	if tags == tagsInvalid || tags == tagsSoftStale && e.negative() {
		c.stats.tagMisses.Add(1)
		return v, nil, false
	}
	if e.negative() {
		c.stats.negativeHits.Add(1)
		return v, ErrNotFound, true
	}
	if err := c.codec.Unmarshal(e.payload, &v); err != nil {
		var zero T
		c.decodeFailed(fmt.Errorf("aside: decode: %w", err))
		return zero, nil, false
	}
	now, freshUntil := c.store.now(), time.UnixMilli(e.freshMs)
	switch {
	case e.stale() || tags == tagsSoftStale || !now.Before(freshUntil):
		c.stats.staleServed.Add(1)
		c.refreshInBackground(ctx, cl, b)
	case c.profile.shouldRefreshEarly(now, freshUntil, time.Duration(e.loadMicros)*time.Microsecond):
		c.stats.hits.Add(1)
		c.refreshInBackground(ctx, cl, b)
	default:
		c.stats.hits.Add(1)
	}
	if !e.stale() && tags == tagsFresh && now.Before(freshUntil) {
		cl.l1OK, cl.freshUntil = true, freshUntil
	}
	return v, nil, true
}

func (c *Cache[T]) decodeFailed(err error) {
	c.stats.decodeErrors.Add(1)
	c.stats.misses.Add(1)
	c.store.emit(Event{Kind: EventDecodeError, Cache: c.name, Err: err})
}

// record feeds the breaker and the counters with the outcome of one Redis
// call. A call cut short by the caller's own cancellation says nothing about
// Redis and is not recorded.
func (c *Cache[T]) record(ctx context.Context, err error) {
	if err != nil && ctx.Err() != nil {
		return
	}
	c.store.breaker.record(err)
	if err != nil {
		c.stats.redisErrors.Add(1)
		if isTimeout(err) {
			c.stats.redisTimeouts.Add(1)
		}
		c.store.emit(Event{Kind: EventRedisError, Cache: c.name, Err: err})
	}
}

// write stores encoded bytes unconditionally, revoking any lease; with
// key set it also tells other Stores' L1 (Set), in the same round trip.
func (c *Cache[T]) write(ctx context.Context, rk string, b []byte, ttl time.Duration, key ...string) error {
	if !c.store.breaker.allow() || !c.store.drained(ctx) {
		return ErrUnavailable
	}
	octx, cancel := c.store.opContext(ctx)
	var err error
	if len(key) == 0 {
		err = setScript.Run(octx, c.store.rdb, []string{rk}, b, ttl.Milliseconds()).Err()
	} else {
		_, err = c.store.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
			setScript.Eval(octx, p, []string{rk}, b, ttl.Milliseconds())
			c.store.bus.publish(octx, p, busMessage{Kind: busKeys, Cache: c.name, Names: key})
			return nil
		})
		c.store.bus.apply(busMessage{Kind: busKeys, Cache: c.name, Names: key})
	}
	cancel()
	c.record(ctx, err)
	if err != nil {
		return fmt.Errorf("aside: write: %w", err)
	}
	c.stats.bytesWritten.Add(uint64(len(b)))
	return nil
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
