package aside

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/asidecache/aside/internal/envelope"
)

// Option configures a [Cache].
type Option func(*cacheOptions)

type cacheOptions struct {
	notFound  error
	version   int
	profile   string
	codec     Codec
	l1Entries int
	l1TTL     time.Duration
	check     any // WithCheck's Check[T]
}

// WithVersion sets the schema version embedded in every key. Bump it when T
// changes shape: old entries become unreachable at once and expire.
// Default: 1.
func WithVersion(v int) Option { return func(o *cacheOptions) { o.version = v } }

// WithProfile selects the TTL profile by name: a built-in ([Default],
// [Transactional], [Analytical], [Master]) or one registered with
// [WithProfiles]. Default: [Default].
func WithProfile(name string) Option { return func(o *cacheOptions) { o.profile = name } }

// WithNotFound names the cache's own not-found error — the one its callers
// already test for, such as a repository's ErrNoSuchProduct. A loader may
// then return it (wrapped or not) instead of [ErrNotFound], and is cached
// negatively alike; and every not-found answer of the cache, whether the
// loader's own, shared with another caller, or read from a negative entry
// later, matches both err and ErrNotFound with errors.Is. Without it a
// cached not-found is ErrNotFound alone. A nil err changes nothing.
func WithNotFound(err error) Option { return func(o *cacheOptions) { o.notFound = err } }

// WithCodec replaces the msgpack payload codec. Default: msgpack.
func WithCodec(c Codec) Option { return func(o *cacheOptions) { o.codec = c } }

// WithL1 enables the local tier for this cache: at most maxEntries decoded
// values, each kept at most ttl (and never past its Redis freshness). ttl
// must not exceed the profile's TTL. Values handed out from L1 are shared
// between callers: treat them as read-only. Default: off.
func WithL1(maxEntries int, ttl time.Duration) Option {
	return func(o *cacheOptions) { o.l1Entries, o.l1TTL = maxEntries, ttl }
}

// StoreOption configures a [Store].
type StoreOption func(*storeOptions)

type storeOptions struct {
	prefix           string
	opTimeout        time.Duration
	profiles         []Profile
	breakerThreshold int
	breakerCooldown  time.Duration
	stallTolerance   *time.Duration // nil: the default, 4 op timeouts
	observer         Observer
	logger           *slog.Logger
	clock            func() time.Time
	relaxedL1        bool
	l1Lease          time.Duration
	tracer           Tracer
	replicas         int           // WithReplicaWait
	replicaTimeout   time.Duration // WithReplicaWait
}

// WithPrefix sets the first segment of every Redis key, so several
// applications can share one Redis. Default: "aside".
func WithPrefix(p string) StoreOption { return func(o *storeOptions) { o.prefix = p } }

// WithOpTimeout sets how long Redis normally takes, at most, to answer one
// call. A call waits this long and the stall tolerance
// ([WithStallTolerance]) for its answer, independently of the caller's
// context, before its request is served by the loader; the breaker's probe
// and the check of a timeout wait this long only. Default: 100 ms.
//
// go-redis applies a context deadline to socket reads only when the client
// has ContextTimeoutEnabled; [NewStore] therefore rejects a client whose read
// or write timeout exceeds d unless ContextTimeoutEnabled is set.
func WithOpTimeout(d time.Duration) StoreOption {
	return func(o *storeOptions) { o.opTimeout = d }
}

// WithProfiles registers TTL profiles by name, adding to or replacing the
// built-ins ([Default], [Transactional], [Analytical], [Master]).
func WithProfiles(ps ...Profile) StoreOption {
	return func(o *storeOptions) { o.profiles = append(o.profiles, ps...) }
}

// WithBreaker sets how many consecutive failed Redis calls open the circuit
// breaker, and how long it stays open before a probe. Slow is not dead:
// timeouts count only once Redis has also left a check unanswered (see
// [WithStallTolerance]); refused or broken connections count one by one.
// On a Cluster (a Ring) each master (shard) also has a breaker of its own
// with these settings, which takes only its own keys off Redis, and the
// Store's counts an outage only once no node answers its check.
// Default: 5 and 250 ms.
func WithBreaker(failures int, cooldown time.Duration) StoreOption {
	return func(o *storeOptions) { o.breakerThreshold, o.breakerCooldown = failures, cooldown }
}

// WithStallTolerance sets how long a Redis call waits, beyond the op
// timeout, for an answer that is late: every call (a read, a lease, a
// fill, an invalidation) waits for the op timeout and d on the connection
// it was sent on. So a stall shorter than d (a busy server, a failover, a
// fork for a snapshot, a loaded machine) costs latency — each call's
// answer comes when Redis resumes, in its turn — and sends no burst of
// loads to the database, fails no invalidation and closes no connection.
// A call that times out even so starts a check: one PING allowed the op
// timeout; left unanswered, it counts as d's worth of op timeouts towards
// the breaker's threshold ([WithBreaker]), which opens it: a hung Redis is
// cut off within two op timeouts and d, after which a call costs
// microseconds. 0: every call ends at the op timeout, and timeouts count
// towards the threshold one by one. Must be >= 0. Default: 4 op timeouts
// (400 ms).
func WithStallTolerance(d time.Duration) StoreOption {
	return func(o *storeOptions) { o.stallTolerance = &d }
}

// WithObserver receives every [Event] of the Store and its caches.
// Default: none.
func WithObserver(fn Observer) StoreOption { return func(o *storeOptions) { o.observer = fn } }

// WithLogger logs what an operator should know — the breaker opening and
// closing, the L1 subscription dropping and recovering, undecodable
// entries — never keys, which may hold user data. Default: no logging.
func WithLogger(l *slog.Logger) StoreOption { return func(o *storeOptions) { o.logger = l } }

// WithTracer has every Get, GetMany, Peek, Set and invalidation of the
// Store's caches start a span through t, with the cache's name and how each
// key was answered; the loader's spans nest under it. asideotel provides
// one for OpenTelemetry. Default: none.
func WithTracer(t Tracer) StoreOption { return func(o *storeOptions) { o.tracer = t } }

// WithClock replaces the clock that decides freshness (fresh-until, early
// refresh, stale windows, L1 expiry) and the circuit breaker's cooldown, so
// that tests can move time; Redis TTLs and lease deadlines keep the
// server's clock. Default: time.Now.
func WithClock(now func() time.Time) StoreOption { return func(o *storeOptions) { o.clock = now } }

// WithRelaxedL1 makes this Store's L1 tiers coherent within a pub/sub
// delivery instead of strictly: they serve without a lease, and other
// Stores' invalidations do not wait for them. An invalidation that has
// returned may then be followed, for a delivery's time (until a reset when
// the subscription breaks), by reads of the old value from this Store's L1. Choose it for
// data where that is acceptable and invalidations must stay as cheap as a
// PUBLISH. Default: strict (see docs/design.md, "L1: strict coherence").
func WithRelaxedL1() StoreOption { return func(o *storeOptions) { o.relaxedL1 = true } }

// WithL1Lease sets how long this Store's L1 may answer after it last heard
// its own heartbeat (sent every d/4): the longest an invalidation elsewhere
// waits for this Store when it stops answering (a paused process, a
// black-holed connection), plus 50 ms. Shorter makes such waits shorter and
// costs more heartbeats; longer tolerates longer pauses without dropping
// L1. Between 100 ms and 1 min. Default: 1 s.
func WithL1Lease(d time.Duration) StoreOption { return func(o *storeOptions) { o.l1Lease = d } }

// WithReplicaWait makes every invalidation wait, on the connection that
// sent it, until at least replicas replicas of the master hold it (Redis
// WAIT, for at most timeout, which must not exceed the op timeout). When
// fewer do, the invalidation fails as if Redis could not be reached —
// queued and replayed, or for [Store.ApplyRecorded] left in its record —
// though the master applied it: a failover to a replica that missed it
// would otherwise lose an invalidation that returned. It narrows that
// window, not closes it (replication stays asynchronous), and costs a
// replica's round trip per invalidation. It needs one master: a
// *redis.Client, directly or through Sentinel (WAIT cannot follow a
// Cluster's or a Ring's per-node pipelines); its ACL needs +wait.
func WithReplicaWait(replicas int, timeout time.Duration) StoreOption {
	return func(o *storeOptions) { o.replicas, o.replicaTimeout = replicas, timeout }
}

// CallOption configures one call of [Cache.Get], [Cache.GetMany] or
// [Cache.Set].
type CallOption func(*callOptions)

type callOptions struct {
	tags       []string
	keyTags    func(key string) []string
	leaseFirst bool // tests: the read starts with the lease script whatever the trend (read.go)
}

// Tags attaches tags to the entry, so that [Store.InvalidateTags] of any of
// them invalidates it, whatever its key and cache. Pass the same tags at
// every call site of a key: an entry read without one of its tags costs an
// extra round trip, and a read with a tag the entry lacks is a miss. At most
// 64 tags, each 1–512 bytes; duplicates are ignored.
//
// Tags must be known before the load: an entry records its tags' tokens as
// they were before its load began, which is what makes an invalidation
// during the load visible. That is why tags are not computed from the value.
func Tags(tags ...string) CallOption {
	return func(o *callOptions) { o.tags = append(o.tags, tags...) }
}

// KeyTags gives each entry of a call its own tags, from its key — the tags
// that differ per entry, such as "product:<id>" in a GetMany — beside those
// [Tags] gives every entry. The same rules apply as for Tags.
func KeyTags(tags func(key string) []string) CallOption {
	return func(o *callOptions) { o.keyTags = tags }
}

func collectCallOptions(opts []CallOption) (callOptions, error) {
	if len(opts) == 0 {
		return callOptions{}, nil // the common case costs no allocation
	}
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	if len(o.tags) == 0 {
		return o, nil
	}
	// o.tags is this call's own slice (Tags appends to it): duplicates are
	// dropped in place.
	var err error
	o.tags, err = dedupeTags(o.tags[:0], o.tags)
	return o, err
}

// tagsFor returns the tags of the entry under key: Tags', and KeyTags'.
func (o callOptions) tagsFor(key string) ([]string, error) {
	if o.keyTags == nil {
		return o.tags, nil
	}
	tags, err := dedupeTags(slices.Clip(o.tags), o.keyTags(key))
	if err != nil {
		return nil, fmt.Errorf("%w, in the tags KeyTags gave a key", err) // the key itself is the user's data: never in an error
	}
	return tags, nil
}

// dedupeTags appends to tags those of more it lacks, checking each.
func dedupeTags(tags, more []string) ([]string, error) {
	for _, t := range more {
		switch {
		case t == "":
			return nil, errors.New("aside: empty tag")
		case len(t) > envelope.MaxTagLen:
			return nil, fmt.Errorf("aside: tag longer than %d bytes", envelope.MaxTagLen)
		case slices.Contains(tags, t):
			continue
		}
		if tags = append(tags, t); len(tags) > envelope.MaxTags { // also bounds the search above
			return nil, fmt.Errorf("aside: more than %d tags", envelope.MaxTags)
		}
	}
	return tags, nil
}
