package main

// The subjects measured side by side: the floor, aside, and its peers, each
// with a client of its own.

import (
	"context"
	"strings"
	"time"

	rcache "github.com/go-redis/cache/v9"
	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
	"github.com/viccon/sturdyc"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/asidecache/aside"
)

// user encodes to about 1 KB of msgpack.
type user struct {
	ID        int64
	Name      string
	Email     string
	Bio       string
	Interests []string
	Score     float64
	Created   time.Time
}

var sample = user{
	ID: 123456, Name: "Ada Lovelace", Email: "ada@example.com",
	Bio:       strings.Repeat("Analyst, metaphysician, founder of scientific computing. ", 14),
	Interests: []string{"mathematics", "poetry", "engines", "music", "horses"},
	Score:     98.6, Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
}

// newClient gives every subject the same client: bounded timeouts, as aside
// requires and as any production client should have.
func newClient(a string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: a, DisableIdentity: true, ContextTimeoutEnabled: true,
		MaxRetries: -1, DialTimeout: 100 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second})
}

// subject is one library's read path: get returns the value of key, loading
// it with load on a miss.
type subject struct {
	name  string
	get   func(ctx context.Context, key string, load func() (user, error)) (user, error)
	close func()
}

func floor(rdb redis.UniversalClient) subject {
	return cacheAside("floor (GET/SET + msgpack)", rdb, prefix+":floor:")
}

// cacheAside is hand-written cache-aside over rdb: GET, else load and SET.
// Over a plain client it is the floor; over a client with go-redis's
// client-side cache it is that cache's peer row.
func cacheAside(name string, rdb redis.UniversalClient, space string) subject {
	return subject{name: name, get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
		var u user
		b, err := rdb.Get(ctx, space+key).Bytes()
		if err == nil {
			err = msgpack.Unmarshal(b, &u)
			return u, err
		}
		if u, err = load(); err != nil {
			return u, err
		}
		if raw, err := msgpack.Marshal(u); err == nil {
			rdb.Set(ctx, space+key, raw, time.Minute)
		}
		return u, nil
	}, close: func() { _ = rdb.Close() }}
}

// newCSCClient is a client with go-redis's own client-side cache: RESP3,
// server-assisted invalidation (tracking).
func newCSCClient(a string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: a, Protocol: 3, DisableIdentity: true, ContextTimeoutEnabled: true,
		MaxRetries: -1, DialTimeout: 100 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second,
		ClientSideCacheConfig: &redis.ClientSideCacheConfig{MaxEntries: 10_000}})
}

const floorAgain = "floor again (a second client: the noise)"

const cscName = "go-redis client-side cache (GET/SET, RESP3)"

func asideSubject(name string, rdb redis.UniversalClient, tagged bool, opts ...aside.Option) subject {
	store, err := aside.NewStore(rdb, aside.WithPrefix(prefix+strings.NewReplacer(" ", "", "+", "", ",", "").Replace(name)))
	must(err)
	c, err := aside.New[user](store, "user", opts...)
	must(err)
	var call []aside.CallOption
	if tagged {
		call = append(call, aside.Tags("team:7", "region:eu"))
	}
	return subject{name: name, close: func() { _ = store.Close() }, get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
		return c.Get(ctx, key, func(context.Context) (user, error) { return load() }, call...)
	}}
}

func goRedisCache(name string, rdb redis.UniversalClient, local bool) subject {
	o := &rcache.Options{Redis: rdb}
	if local {
		o.LocalCache = rcache.NewTinyLFU(10_000, time.Minute)
	}
	c := rcache.New(o)
	return subject{name: name, get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
		var u user
		err := c.Once(&rcache.Item{Ctx: ctx, Key: prefix + ":grc:" + name + ":" + key, Value: &u, TTL: time.Minute,
			Do: func(*rcache.Item) (any, error) { return load() }})
		return u, err
	}}
}

func sturdy() subject {
	c := sturdyc.New[user](10_000, 16, time.Minute, 10)
	return subject{name: "sturdyc (memory only)", get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
		return c.GetOrFetch(ctx, key, func(context.Context) (user, error) { return load() })
	}}
}

// otterSubject is otter v2 (W-TinyLFU, in memory only): an in-process
// cache's lookup, the limit an L1 hit is measured against.
func otterSubject() subject {
	c := otter.Must(&otter.Options[string, user]{MaximumSize: 10_000, ExpiryCalculator: otter.ExpiryWriting[string, user](time.Minute)})
	return subject{name: "otter v2 (memory only)", get: func(ctx context.Context, key string, load func() (user, error)) (user, error) {
		if v, ok := c.GetIfPresent(key); ok {
			return v, nil
		}
		v, err := load()
		if err == nil {
			c.Set(key, v)
		}
		return v, err
	}}
}

// newClusterClient is newClient for a Redis Cluster.
func newClusterClient(addrs []string) *redis.ClusterClient {
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, DisableIdentity: true, ContextTimeoutEnabled: true,
		MaxRetries: -1, DialTimeout: 100 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second})
}

// shardedSubjects are the Redis subjects on a Cluster or a Ring, each with
// a client of its own made by newClient (go-redis' client-side cache is for
// one node only).
func shardedSubjects(newClient func() redis.UniversalClient) []subject {
	return []subject{
		floor(newClient()),
		cacheAside(floorAgain, newClient(), prefix+":floor2:"),
		asideSubject("aside", newClient(), false),
		asideSubject("aside + 2 tags", newClient(), true),
		goRedisCache("go-redis/cache", newClient(), false),
	}
}

// newRing is a Ring over shards (by name), with the clients' settings.
func newRing(shards map[string]string) *redis.Ring {
	return redis.NewRing(&redis.RingOptions{Addrs: shards, DisableIdentity: true, ContextTimeoutEnabled: true,
		MaxRetries: -1, DialTimeout: 100 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second})
}

// subjects returns every subject, each with a client of its own, so that
// one's connection pool (or its failures) never affects another.
func subjects(a string) []subject {
	return []subject{
		floor(newClient(a)),
		// The same code again, on a client of its own: how far apart two
		// identical subjects measure here, the noise under every ratio.
		cacheAside(floorAgain, newClient(a), prefix+":floor2:"),
		asideSubject("aside", newClient(a), false),
		asideSubject("aside + 2 tags", newClient(a), true),
		asideSubject("aside + L1", newClient(a), false, aside.WithL1(10_000, time.Minute)),
		goRedisCache("go-redis/cache", newClient(a), false),
		goRedisCache("go-redis/cache + local", newClient(a), true),
		cacheAside(cscName, newCSCClient(a), prefix+":csc:"),
		sturdy(),
		otterSubject(),
	}
}
