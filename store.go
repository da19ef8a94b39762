package aside

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/asidecache/aside/internal/bus"
	"github.com/asidecache/aside/internal/health"
	"github.com/redis/go-redis/v9"
)

// Store owns what every cache of one Redis deployment shares: the client,
// the key prefix, the TTL profiles and the circuit breaker. Create one per
// deployment with [NewStore] and derive typed caches from it with [New].
type Store struct {
	rdb       redis.UniversalClient
	prefix    string
	opTimeout time.Duration
	// stallTolerance: how much longer than the op timeout a call waits for
	// a late answer (deadline.go); 0: none, and no checks of timeouts.
	stallTolerance time.Duration
	deadlines      deadlines // the op contexts' Done channels
	reads          coalescer // concurrent hits' shared round trips
	profiles       map[string]Profile
	breaker        *health.Breaker
	nodes          *health.Nodes // a Cluster's masters', a Ring's shards'; nil for one Redis
	observer       Observer
	logger         *slog.Logger     // nil: no logging
	bus            *bus.Bus         // carries invalidations to every Store's L1
	pending        replayQueue      // invalidations that failed, replayed before Redis is read again
	versions       versionBook      // the versions in use of each cache (versions.go)
	versionRefresh time.Duration    // how often they are recorded again: versionRefresh; tests shorten it
	now            func() time.Time // the clock of freshness decisions; tests replace it
	realClock      bool             // now is time.Now: an L1 hit reads the clock once for freshness and lease
	multiKey       bool             // one server holds every key: entries of a batch are read with one MGET
	types          sync.Map         // cache name → its value type: one name, one type
	checks         sync.Map         // cache name → its consistency checker (check.go), for the invalidations applied here
	tracer         Tracer           // nil: no spans
	replicas       int              // WithReplicaWait's; 0: invalidations do not wait for replicas
	replicaTimeout time.Duration
	hooks          seams // nil outside tests

	// Background work (refreshes, lease pollers, loads, the probe, the bus)
	// is tracked so that Close can wait for it. What runs for a caller after
	// Close (a load, a loader that ignores its ctx) is bounded by the
	// profile's LoadTimeout instead; the tests check with goleak that
	// nothing is left.
	mu      sync.Mutex // protects closed, and orders running.Add before running.Wait
	closed  bool
	running sync.WaitGroup
	writes  backlog // the background writes among them, for Wait
	// stopping is closed when Close begins: background loops that would
	// otherwise wait on Redis (owed leases) stop.
	stopping chan struct{}
	owed     owedLeases // leases to give back once Redis answers (owed.go)
}

// NewStore wraps a go-redis client (a *redis.Client, *redis.ClusterClient,
// *redis.Ring or a Sentinel failover client). The Store does not own the
// client: close it yourself after the last use of the Store.
func NewStore(rdb redis.UniversalClient, opts ...StoreOption) (*Store, error) {
	o := storeOptions{prefix: "aside", opTimeout: 100 * time.Millisecond, breakerThreshold: 5, breakerCooldown: 250 * time.Millisecond,
		l1Lease: bus.DefaultLease}
	for _, opt := range opts {
		opt(&o)
	}
	if rdb == nil {
		return nil, errors.New("aside: nil redis client")
	}
	if err := validName("prefix", o.prefix); err != nil {
		return nil, err
	}
	if o.opTimeout <= 0 {
		return nil, fmt.Errorf("aside: op timeout must be > 0, got %v", o.opTimeout)
	}
	tolerance := defaultStallTolerance * o.opTimeout
	if o.stallTolerance != nil {
		tolerance = *o.stallTolerance
	}
	if tolerance < 0 {
		return nil, fmt.Errorf("aside: stall tolerance must be >= 0, got %v", tolerance)
	}
	if o.breakerThreshold < 1 || o.breakerCooldown <= 0 {
		return nil, fmt.Errorf("aside: breaker needs failures >= 1 and cooldown > 0, got %d and %v", o.breakerThreshold, o.breakerCooldown)
	}
	if o.l1Lease < bus.MinLease || o.l1Lease > bus.MaxLease {
		return nil, fmt.Errorf("aside: L1 lease must be in [%v, %v], got %v", bus.MinLease, bus.MaxLease, o.l1Lease)
	}
	if o.replicas != 0 || o.replicaTimeout != 0 {
		_, one := rdb.(*redis.Client)
		switch {
		case o.replicas < 1 || o.replicaTimeout <= 0 || o.replicaTimeout > o.opTimeout:
			return nil, fmt.Errorf("aside: replica wait needs replicas >= 1 and a timeout in (0, %v] (the op timeout), got %d and %v",
				o.opTimeout, o.replicas, o.replicaTimeout)
		case !one:
			return nil, errors.New("aside: replica wait needs one master (a *redis.Client, directly or through Sentinel): WAIT cannot follow a Cluster's or a Ring's pipelines")
		}
	}
	if err := checkClientTimeouts(rdb, o.opTimeout); err != nil {
		return nil, err
	}
	if err := checkNoClientSideCache(rdb); err != nil {
		return nil, err
	}
	profiles := builtinProfiles()
	seen := map[string]bool{}
	for _, p := range o.profiles {
		if err := p.validate(); err != nil {
			return nil, err
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("aside: profile %q registered twice", p.Name)
		}
		seen[p.Name] = true
		profiles[p.Name] = p
	}
	realClock := o.clock == nil
	if realClock {
		o.clock = time.Now
	}
	s := &Store{rdb: rdb, prefix: o.prefix, opTimeout: o.opTimeout, stallTolerance: tolerance, profiles: profiles, observer: o.observer, logger: o.logger, tracer: o.tracer,
		now: o.clock, realClock: realClock, stopping: make(chan struct{}), replicas: o.replicas, replicaTimeout: o.replicaTimeout,
		versionRefresh: versionRefresh}
	_, s.multiKey = rdb.(*redis.Client) // a single node or a Sentinel-managed master; not a Ring or a Cluster
	s.bus = bus.New(bus.Config{Client: rdb, Prefix: o.prefix, OpTimeout: o.opTimeout, Relaxed: o.relaxedL1, Lease: o.l1Lease,
		Go: s.goTracked, OpContext: s.opContext, Detached: s.detachedOpContext, Log: s.log})
	var checkWeight int32 // what an unanswered check of a timeout counts as: the op timeouts it waited
	if tolerance > 0 {
		checkWeight = int32(min((tolerance+o.opTimeout-1)/o.opTimeout, math.MaxInt32))
	}
	cfg := health.Config{Threshold: o.breakerThreshold, Cooldown: o.breakerCooldown, CheckWeight: checkWeight,
		Now:      o.clock, // a test clock moves the cooldown too
		OnChange: func(st health.State) { s.breakerChanged("", st) }}
	if s.nodes = health.NewNodes(rdb, cfg, s.breakerChanged); s.nodes != nil {
		// On a Cluster or a Ring every outage is checked against every node:
		// one node's trouble is its own breaker's (nodes.go).
		cfg.CheckWeight = max(cfg.CheckWeight, 1)
	}
	s.breaker = health.NewBreaker(cfg)
	return s, nil
}

// Close stops background refreshes from starting and waits for the running
// ones, and for loads still in flight, to end (each is bounded by its
// profile's LoadTimeout). It then replays, once, the failed invalidations
// still queued ([Store.Pending]), so that a process shutting down does not
// take them with it; ErrUnavailable says some could not be replayed. Gets
// after Close still work but refresh nothing in the background. Close does
// not close the Redis client.
func (s *Store) Close() error {
	s.mu.Lock()
	if !s.closed {
		close(s.stopping)
	}
	s.closed = true
	s.mu.Unlock()
	// Before the bus stops: the replay tells the other Stores' L1 and waits for them.
	err := s.replayFirst(context.Background())
	s.bus.Stop()
	s.running.Wait()
	if err != nil {
		n, overflowed := s.Pending()
		return opErr("close", fmt.Errorf("%w: %d failed invalidations could not be replayed (overflowed: %v): %w", ErrUnavailable, n, overflowed, err))
	}
	return nil
}

// goTracked runs fn on a goroutine that Close waits for. It reports false,
// running nothing, once the Store is closed.
func (s *Store) goTracked(fn func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.running.Add(1)
	go func() {
		defer s.running.Done()
		fn()
	}()
	return true
}

// BreakerState reports whether the Store currently uses Redis: the
// Store-wide breaker's state (a Cluster master's or a Ring shard's own
// breaker is reported through [Event.Node]).
func (s *Store) BreakerState() BreakerState { return BreakerState(s.breaker.State()) }

// Profile returns the registered profile with the given name.
func (s *Store) Profile(name string) (Profile, bool) {
	p, ok := s.profiles[name]
	return p, ok
}

func (s *Store) emit(e Event) {
	if s.observer != nil {
		s.observer(e)
	}
	if s.logger == nil {
		return
	}
	switch {
	case e.Node != "" && e.Kind == EventBreakerOpen:
		s.logger.Warn("aside: redis node unreachable, its breaker open: serving its keys from loaders", "prefix", s.prefix, "node", e.Node)
	case e.Node != "" && e.Kind == EventBreakerClosed:
		s.logger.Info("aside: redis node reachable again, its breaker closed", "prefix", s.prefix, "node", e.Node)
	case e.Kind == EventBreakerOpen:
		s.logger.Warn("aside: redis unreachable, circuit breaker open: serving from loaders", "prefix", s.prefix)
	case e.Kind == EventBreakerClosed:
		s.logger.Info("aside: redis reachable again, circuit breaker closed", "prefix", s.prefix)
	case e.Kind == EventDecodeError:
		s.logger.Warn("aside: undecodable entry treated as a miss", "cache", e.Cache, "err", e.Err)
	}
}

func (s *Store) log(level slog.Level, msg string, args ...any) {
	if s.logger != nil {
		s.logger.Log(context.Background(), level, msg, append([]any{"prefix", s.prefix}, args...)...)
	}
}

// checkClientTimeouts rejects a client whose socket timeouts would let one
// Redis call outlast the op timeout: go-redis ignores context deadlines on
// reads and writes unless ContextTimeoutEnabled is set, and its default read
// timeout is 3 s — a stalled Redis would then add seconds to every request.
func checkClientTimeouts(rdb redis.UniversalClient, op time.Duration) error {
	var ctxEnabled bool
	var read, write time.Duration
	switch c := rdb.(type) {
	case *redis.Client:
		o := c.Options()
		ctxEnabled, read, write = o.ContextTimeoutEnabled, o.ReadTimeout, o.WriteTimeout
	case *redis.ClusterClient:
		o := c.Options()
		ctxEnabled, read, write = o.ContextTimeoutEnabled, o.ReadTimeout, o.WriteTimeout
	case *redis.Ring:
		o := c.Options()
		ctxEnabled, read, write = o.ContextTimeoutEnabled, o.ReadTimeout, o.WriteTimeout
	default:
		return nil // unknown implementation: trust it
	}
	if ctxEnabled {
		return nil
	}
	// After construction go-redis holds 3 s for an unset timeout, and 0 or
	// -1 for none at all.
	if read <= 0 || read > op || write <= 0 || write > op {
		return fmt.Errorf("aside: redis client read/write timeouts (%v/%v) exceed the op timeout %v; set ContextTimeoutEnabled: true in the client options, or lower ReadTimeout and WriteTimeout", read, write, op)
	}
	return nil
}

// checkNoClientSideCache refuses a client that answers reads from its own
// cache (go-redis client-side caching, RESP3 tracking): such a cache is
// invalidated by push messages that arrive after the write that caused
// them, so a Get right after an Invalidate could read the old entry from it
// — the one thing aside promises never happens.
func checkNoClientSideCache(rdb redis.UniversalClient) error {
	c, ok := rdb.(*redis.Client)
	if !ok {
		return nil // Cluster, Ring and Sentinel clients have no client-side cache
	}
	if o := c.Options(); o.ClientSideCacheConfig != nil || o.ClientSideCache != nil {
		return errors.New("aside: the redis client has client-side caching on (ClientSideCacheConfig or ClientSideCache): its replies may be older than an invalidation that has returned; give aside a client without it")
	}
	return nil
}
