// Package aside is a cache-aside library for Go services over Redis.
//
// A [Store] wraps one go-redis client (single node, Sentinel, Ring or
// Cluster); [New] derives a typed [Cache] for one namespace, schema version
// and value type. [Cache.Get] returns the cached value, or calls the loader
// (the slow repository call) on a miss, stores its result and returns it.
//
// A hit costs one Redis round trip (HGET) and a decode. A miss costs one
// loader call per key per process — concurrent callers share it — plus one
// write, made with a script so that it is atomic with the entry's TTL.
//
// Keys are self-describing and versioned: "prefix:name:vN:{key}". The user
// key is escaped so that it can neither collide with another key, nor change
// the Redis Cluster slot, nor act as a SCAN pattern; build multi-part keys
// with [Key]. Bumping the version ([WithVersion]) makes every old entry
// unreachable at once.
//
// Redis is an optimisation, never a dependency: every Redis call has its own
// timeout ([WithOpTimeout]); a failed call is counted and the request is
// served by the loader; after repeated failures a circuit breaker stops
// calling Redis until a probe succeeds.
//
// All methods are safe for concurrent use.
package aside

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"
)

// Sentinel errors. Match them with errors.Is.
var (
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
	flights singleflight.Group
	stats   counters
}

// Option configures a [Cache].
type Option func(*cacheOptions)

type cacheOptions struct {
	version int
	profile string
	codec   Codec
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
	return &Cache[T]{
		store:   store,
		name:    name,
		profile: p,
		keys:    newKeyspace(store.prefix, name, o.version),
		codec:   o.codec,
		typeID:  typeFingerprint[T](),
	}, nil
}

// Name returns the cache's namespace.
func (c *Cache[T]) Name() string { return c.name }

// Stats returns a snapshot of the cache's counters.
func (c *Cache[T]) Stats() Stats { return c.stats.snapshot() }

var (
	errEmptyKey  = errors.New("aside: empty key")
	errNilLoader = errors.New("aside: nil loader")
)

// Get returns the value cached under key or, on a miss, calls load, stores
// its result with the profile's TTL and jitter, and returns it. Concurrent
// misses of one key in this process share one load; each caller still waits
// on its own ctx.
//
// A loader error is returned unchanged and not cached. Get fails open: when
// Redis is slow, down, or holds an entry that does not decode, the value
// comes from the loader and the problem is counted in [Stats].
func (c *Cache[T]) Get(ctx context.Context, key string, load Loader[T]) (T, error) {
	var zero T
	if key == "" {
		return zero, errEmptyKey
	}
	if load == nil {
		return zero, errNilLoader
	}
	rk := c.keys.entry(key)
	useRedis := c.store.breaker.allow()
	if useRedis {
		v, hit, err := c.read(ctx, rk)
		switch {
		case hit:
			return v, nil
		case err != nil && ctx.Err() != nil:
			return zero, ctx.Err()
		case err != nil:
			useRedis = false // serve from the loader; writing would fail too
		}
	} else {
		c.stats.skipped.Add(1)
	}
	return c.loadShared(ctx, rk, load, useRedis)
}

// Set stores v under key now (write-through, for values just written to the
// source). It fails closed: a Redis error, an encoding error or a value over
// MaxEntryBytes is returned.
func (c *Cache[T]) Set(ctx context.Context, key string, v T) error {
	if key == "" {
		return errEmptyKey
	}
	b, err := c.encode(v, time.Now(), 0)
	if err != nil {
		return err
	}
	if max := c.profile.MaxEntryBytes; max > 0 && len(b) > max {
		c.stats.oversize.Add(1)
		return fmt.Errorf("aside: entry of %d bytes exceeds MaxEntryBytes %d", len(b), max)
	}
	return c.write(ctx, c.keys.entry(key), b)
}

// Invalidate deletes the entries of keys. Call it after the source of truth
// has committed the change. It fails closed: the error is returned when Redis
// cannot be reached.
func (c *Cache[T]) Invalidate(ctx context.Context, keys ...string) error {
	rks := make([]string, len(keys))
	for i, k := range keys {
		if k == "" {
			return errEmptyKey
		}
		rks[i] = c.keys.entry(k)
	}
	for _, rk := range rks {
		c.flights.Forget(rk) // later Gets must not join a load that began before
	}
	if !c.store.breaker.allow() {
		return ErrUnavailable
	}
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	// One DEL per key: keys of one call may live in different Cluster slots.
	_, err := c.store.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		for _, rk := range rks {
			p.Del(octx, rk)
		}
		return nil
	})
	c.record(ctx, err)
	if err != nil {
		return fmt.Errorf("aside: invalidate: %w", err)
	}
	return nil
}

// Redis layout: each entry is a hash holding the envelope in field "v", so
// that later fields (leases) live in the same key and slot.
const fieldValue = "v"

// fillScript replaces the entry and its TTL atomically. DEL first, so that a
// key of another Redis type planted under our name is overwritten rather
// than failing every write with WRONGTYPE.
var fillScript = redis.NewScript(`
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1`)

// read fetches and decodes one entry. An absent or undecodable entry is a
// miss (hit false, err nil); err is set only when Redis failed.
func (c *Cache[T]) read(ctx context.Context, rk string) (v T, hit bool, err error) {
	octx, cancel := c.store.opContext(ctx)
	b, err := c.store.rdb.HGet(octx, rk, fieldValue).Bytes()
	cancel()
	switch {
	case errors.Is(err, redis.Nil):
		c.store.breaker.record(nil)
		c.stats.misses.Add(1)
		return v, false, nil
	case err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE"):
		c.store.breaker.record(nil)
		c.decodeFailed(fmt.Errorf("%w: key holds another Redis type", errCorrupt))
		return v, false, nil
	case err != nil:
		c.record(ctx, err)
		return v, false, err
	}
	c.store.breaker.record(nil)
	if v, err = c.decode(b); err != nil {
		c.decodeFailed(err)
		return v, false, nil
	}
	c.stats.hits.Add(1)
	return v, true, nil
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
		c.store.emit(Event{Kind: EventRedisError, Cache: c.name, Err: err})
	}
}

// write stores encoded bytes with a fresh TTL.
func (c *Cache[T]) write(ctx context.Context, rk string, b []byte) error {
	if !c.store.breaker.allow() {
		return ErrUnavailable
	}
	octx, cancel := c.store.opContext(ctx)
	err := fillScript.Run(octx, c.store.rdb, []string{rk}, b, c.profile.ttl().Milliseconds()).Err()
	cancel()
	c.record(ctx, err)
	if err != nil {
		return fmt.Errorf("aside: write: %w", err)
	}
	c.stats.bytesWritten.Add(uint64(len(b)))
	return nil
}

func (c *Cache[T]) encode(v T, created time.Time, loadTime time.Duration) ([]byte, error) {
	payload, err := c.codec.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("aside: encode: %w", err)
	}
	return encodeEnvelope(envelope{
		typeID:     c.typeID,
		createdMs:  created.UnixMilli(),
		freshMs:    created.Add(c.profile.TTL).UnixMilli(),
		loadMicros: loadTime.Microseconds(),
		payload:    payload,
	}, c.profile.CompressAbove), nil
}

func (c *Cache[T]) decode(b []byte) (T, error) {
	var v T
	e, err := decodeEnvelope(b)
	if err != nil {
		return v, err
	}
	if e.typeID != c.typeID {
		return v, fmt.Errorf("%w: written for another type", errCorrupt)
	}
	if err := c.codec.Unmarshal(e.payload, &v); err != nil {
		var zero T
		return zero, fmt.Errorf("aside: decode: %w", err)
	}
	return v, nil
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
