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
// A hit costs one round trip (GET) and a decode — or nothing with the
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
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
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

// notFoundError is a not-found answer of a cache with [WithNotFound]: it
// reads as the error it carries — the loader's, or the cache's own — and
// matches both ErrNotFound and the cache's own error with errors.Is.
type notFoundError struct {
	err, also error
}

func (e *notFoundError) Error() string   { return e.err.Error() }
func (e *notFoundError) Unwrap() []error { return []error{e.err, e.also} }

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
	codec   Codec
	typeID  uint32
	stats   counters
	hooks   *testHooks // nil outside tests
	// ownNotFound is the error of WithNotFound (nil without), and
	// notFoundAnswer what a not-found that no loader returned just now (a
	// negative entry, a key a batch loader left out) answers.
	ownNotFound, notFoundAnswer error
	l1                          *local[T] // nil unless WithL1

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
		codec:   o.codec,
		typeID:  typeFingerprint[T](),
		hooks:   store.hooks,

		ownNotFound:    o.notFound,
		notFoundAnswer: ErrNotFound,
		leases:         map[string]*flight[T]{},
		polls:          map[string]*poller{},
		degraded:       map[string]*degradedKey[T]{},
	}
	if o.notFound != nil {
		c.notFoundAnswer = &notFoundError{err: o.notFound, also: ErrNotFound}
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
	if c.l1 != nil && c.store.tracer == nil && len(opts) == 0 && key != "" && load != nil {
		// The L1 hit, the path that costs nanoseconds: nothing else first.
		// (An L1 miss looks once more below, on its way to Redis.)
		if v, ok := c.l1.get(key); ok {
			c.stats.l1Hits.Add(1)
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
	c.fillL1(cl)
	return cl.v, cl.outcome, cl.err
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
		if v, ok := c.l1.get(key); ok {
			c.stats.l1Hits.Add(1)
			return nil, v, nil
		}
	}
	tags, err := o.tagsFor(key)
	if err != nil {
		return nil, v, err
	}
	cl = &call[T]{key: key, rk: c.keys.entry(key), tags: tags}
	if c.l1 != nil {
		cl.note = c.l1.note(key)
	}
	return cl, v, nil
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
	return c.SetMany(ctx, map[string]T{key: v}, opts...)
}

// SetMany stores several values at once, as [Cache.Set] does one: in one
// round trip (per Cluster node), every entry replaced atomically with its
// lease revoked, one notice to the other Stores' L1. Tags apply to every
// value. It fails closed for the whole batch: on any error every key is
// invalidated, so that none of the values it meant to replace is served on.
func (c *Cache[T]) SetMany(ctx context.Context, values map[string]T, opts ...CallOption) error {
	if t := c.store.tracer; t != nil {
		ctx, span := t.Start(ctx, "set", c.name)
		err := c.setMany(ctx, values, opts)
		span.End(Outcomes{}, err)
		return err
	}
	return c.setMany(ctx, values, opts)
}

func (c *Cache[T]) setMany(ctx context.Context, values map[string]T, opts []CallOption) error {
	keys := make([]string, 0, len(values))
	for k := range values {
		if k == "" {
			return errEmptyKey
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys) // one order for the pipeline and the notice, whatever the map's
	o, err := collectCallOptions(opts)
	if err != nil {
		return err
	}
	if err := c.set(ctx, keys, values, o); err != nil {
		// The caller meant to replace the entries: the old values must not
		// outlive a failed replacement. Invalidate queues itself if Redis
		// is away.
		_ = c.Invalidate(ctx, keys...)
		return err
	}
	return nil
}

func (c *Cache[T]) set(ctx context.Context, keys []string, values map[string]T, o callOptions) error {
	keyTags := make([][]string, len(keys))
	all := o.tags
	for i, k := range keys {
		tags, err := o.tagsFor(k)
		if err != nil {
			return err
		}
		keyTags[i] = tags
		for _, t := range tags {
			if !slices.Contains(all, t) {
				all = append(slices.Clip(all), t)
			}
		}
	}
	tokens, err := c.store.ensureTokens(ctx, all)
	if err != nil {
		return err
	}
	encoded := make([][]byte, len(keys))
	ttls := make([]time.Duration, len(keys))
	for i, k := range keys {
		fresh := c.profile.freshFor() // jittered like a fill
		b, err := c.encode(values[k], c.store.now(), fresh, 0, tokensOf(tokens, keyTags[i], len(keyTags[i]) == len(all)))
		if err == nil {
			err = c.checkSize(b)
		}
		if errors.Is(err, errOversize) {
			c.stats.oversize.Add(1)
		}
		if err != nil {
			if len(keys) > 1 {
				return fmt.Errorf("%w (key %q)", err, k)
			}
			return err
		}
		encoded[i], ttls[i] = b, fresh+c.profile.StaleWindow
	}
	if !c.store.usable(ctx) {
		return ErrUnavailable
	}
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	acks, err := c.store.writeAndTell(octx, func(p redis.Pipeliner) {
		for i, k := range keys {
			rk := c.keys.entry(k)
			setScript.Eval(octx, p, []string{rk, leaseKey(rk)}, encoded[i], ttls[i].Milliseconds())
		}
	}, busMessage{Kind: busKeys, Cache: c.name, Names: keys})
	c.store.record(octx, err, &c.stats, c.name)
	if err != nil {
		return fmt.Errorf("aside: set: %w", err)
	}
	for _, b := range encoded {
		c.stats.bytesWritten.Add(uint64(len(b)))
	}
	if err := acks.wait(ctx); err != nil {
		return fmt.Errorf("aside: set: %w", err)
	}
	return nil
}

// setScript replaces the entry and its TTL atomically and revokes any
// lease, so that a load in flight cannot overwrite what Set wrote. SET
// also overwrites a key of another Redis type planted under our name.
var setScript = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1`)

// writeEntry stores encoded bytes unconditionally, revoking any lease. Only
// the broken variants of the tests write without a lease.
func (c *Cache[T]) writeEntry(ctx context.Context, rk string, b []byte, ttl time.Duration) error {
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	err := setScript.Run(octx, c.store.rdb, []string{rk, leaseKey(rk)}, b, ttl.Milliseconds()).Err()
	c.store.record(octx, err, &c.stats, c.name)
	return err
}

func (c *Cache[T]) encode(v T, created time.Time, fresh, loadTime time.Duration, tags []tagToken) ([]byte, error) {
	payload, err := c.codec.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("aside: encode: %w", err)
	}
	if len(payload) > maxDecodedBytes { // stored, it could never be read back
		return nil, fmt.Errorf("%w: a payload of %d bytes exceeds the %d MiB any entry may decode to", errOversize, len(payload), maxDecodedBytes>>20)
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
	if err == nil {
		err = c.checkSize(b)
	}
	switch {
	case errors.Is(err, errOversize):
		c.stats.oversize.Add(1)
		c.store.emit(Event{Kind: EventOversize, Cache: c.name, Err: err})
		return nil, false
	case err != nil:
		c.stats.encodeErrors.Add(1)
		c.store.emit(Event{Kind: EventEncodeError, Cache: c.name, Err: err})
		return nil, false
	}
	return b, true
}

// errOversize marks a value that is returned to its caller but not stored.
var errOversize = errors.New("aside: value too large to cache")

// checkSize refuses an entry over the profile's MaxEntryBytes.
func (c *Cache[T]) checkSize(b []byte) error {
	if max := c.profile.MaxEntryBytes; max > 0 && len(b) > max {
		return fmt.Errorf("%w: entry of %d bytes exceeds MaxEntryBytes %d", errOversize, len(b), max)
	}
	return nil
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
			if encodesItself(t) {
				return nil
			}
			encoded := 0
			for i := range t.NumField() {
				f := t.Field(i)
				if !f.IsExported() || f.Tag.Get("msgpack") == "-" {
					continue
				}
				encoded++
				if err := walk(f.Type, path+"."+f.Name); err != nil {
					return err
				}
			}
			if encoded == 0 && t.NumField() > 0 {
				// msgpack skips unexported fields: every value would be
				// cached as the zero value, and served as if it were data.
				return fmt.Errorf("aside: type %v cannot be cached: %s has no exported fields, so msgpack would store it empty (export a field, implement msgpack.CustomEncoder/CustomDecoder, or give the cache a Codec with WithCodec)", t, path)
			}
		}
		return nil
	}
	return walk(t, "value")
}

// encodesItself reports whether msgpack encodes values of t through a
// method of t's own rather than field by field.
func encodesItself(t reflect.Type) bool {
	for _, m := range []reflect.Type{
		reflect.TypeFor[msgpack.CustomEncoder](), reflect.TypeFor[msgpack.Marshaler](),
		reflect.TypeFor[encoding.BinaryMarshaler](), reflect.TypeFor[encoding.TextMarshaler](),
	} {
		if t.Implements(m) || reflect.PointerTo(t).Implements(m) {
			return true
		}
	}
	return false
}
