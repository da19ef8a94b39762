package aside

import (
	"context"
	"errors"
	"net"
	"strconv"
	"time"

	"github.com/asidecache/aside/internal/health"
	"github.com/redis/go-redis/v9"
)

// The health of Redis as aside sees it: how each call's outcome feeds the
// breaker (record), what counts as an outage, and the check that tells a
// slow Redis from a dead one (slow is not dead: see [breaker]).

// checkSlow sends check c in the background: a PING that may take the op
// timeout. Redis that answers it is slow, not dead, and the breaker stays
// closed.
func (s *Store) checkSlow(c *health.Check) {
	check := func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.opTimeout)
		defer cancel()
		s.breaker.Checked(c, s.answers(ctx))
	}
	if !s.goTracked(check) {
		s.breaker.Checked(c, false) // closed Store: nothing may outlive it; open as before
	}
}

// answers reports whether Redis answers a PING before ctx ends. On a
// Cluster the masters (on a Ring the shards) are asked at once, and one
// answer is enough: the Store-wide breaker is for a Redis that is gone,
// and a stalled or lost master costs the reads of its own slots (until its
// own breaker opens: nodes.go), not every master's keys a trip to the
// loaders. The masters are found through the
// client's slot table (those of a sample of slots: ForEachMaster would
// first reload the table from a node, maybe the stalled one).
func (s *Store) answers(ctx context.Context) bool {
	masters := map[string]*redis.Client{}
	switch c := s.rdb.(type) {
	case *redis.ClusterClient:
		if variantOn(s.hooks, vOneBatch) {
			break
		}
		for i := range 64 {
			if m, err := c.MasterForKey(ctx, "{"+strconv.Itoa(i)+"}"); err == nil {
				masters[m.Options().Addr] = m
			}
		}
	case *redis.Ring:
		for _, m := range c.GetShardClients() {
			masters[m.Options().Addr] = m
		}
	}
	if len(masters) == 0 {
		return s.rdb.Ping(ctx).Err() == nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // the other masters' pings end with it (tracked: Close waits for them)
	answered := make(chan bool, len(masters))
	for _, m := range masters {
		if !s.goTracked(func() { answered <- m.Ping(ctx).Err() == nil }) {
			answered <- false
		}
	}
	for range masters {
		if <-answered {
			return true
		}
	}
	return false
}

// usable reports whether this call may use Redis: the breaker lets it, the
// versions of the Store's caches are recorded (versions.go), and no failed
// invalidation waits to be replayed (or this call did these). st and cache
// are the calling cache's, which counts a failure of the recording.
func (s *Store) usable(ctx context.Context, st *counters, cache string) bool {
	return s.redisUp(ctx) && s.versionsRecorded(ctx, st, cache) && (s.pending.n.Load() == 0 || s.replayPending(ctx))
}

// redisUp reports whether the breaker lets a call through now. The caller
// that finds a probe due sends it — on a context of the Store's, which its
// own cancellation cannot cut short — and uses Redis if it answered.
func (s *Store) redisUp(ctx context.Context) bool {
	use, probe := s.breaker.Allow()
	if probe {
		s.probe(ctx)
		use = s.breaker.State() == health.Closed
	}
	return use
}

// probe sends the breaker's PING and records its answer. ctx is not used
// for the call, only by the broken variant the tests switch on.
func (s *Store) probe(ctx context.Context) {
	pctx := context.Background()
	if variantOn(s.hooks, vCallerProbe) {
		pctx = ctx
	}
	octx, cancel := s.quickContext(pctx)
	defer cancel()
	err := s.rdb.Ping(octx).Err()
	switch {
	case cutShort(octx, err):
		if !variantOn(s.hooks, vCallerProbe) { // the broken variant keeps the slot: stuck half-open
			s.breaker.ProbeAbandoned()
		}
	case isOutage(err):
		s.breaker.Probed(false)
	default:
		s.breaker.Probed(true)
	}
}

// record is the one place where the outcome of a Redis call is recorded: in
// the breaker, and — for a failure — in st's counters when st is not nil,
// and as an event. The
// call's own result decides. A call that its caller cut short (octx ended
// for a cause other than the op timeout) says nothing about Redis and is not
// recorded.
func (s *Store) record(octx context.Context, err error, st *counters, cache string) {
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		s.breaker.Success()
		return
	case cutShort(octx, err):
		return
	case isOutage(err):
		if c := s.breaker.Failure(isTimeout(err) || s.nodes != nil); c != nil {
			s.checkSlow(c)
		}
	default: // an error reply about this command (OOM, NOPERM): the server answers
		s.breaker.Success()
	}
	if st != nil {
		st.redisErrors.Add(1)
		if isTimeout(err) {
			st.redisTimeouts.Add(1)
		}
	}
	s.emit(Event{Kind: EventRedisError, Cache: cache, Err: err})
}

// cutShort reports whether a failed call was ended by its caller's context
// rather than by Redis or the op timeout.
func cutShort(octx context.Context, err error) bool {
	if err == nil {
		return false
	}
	ctx := caller(octx)
	if ctx.Err() == nil && isTimeout(err) {
		// The socket deadline was the caller's: the socket can time out a
		// moment before the context's own timer marks it done.
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < 2*time.Millisecond {
			<-ctx.Done()
		}
	}
	return ctx.Err() != nil
}

// isTimeout reports whether err is a deadline: the op timeout, or a socket
// timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// isOutage reports whether err means Redis could not serve the call, as
// opposed to a miss or an error reply about this one command (OOM, NOPERM,
// WRONGTYPE), which a working server sends and which must not open the
// breaker.
func isOutage(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return false
	}
	var reply redis.Error
	if errors.As(err, &reply) {
		for _, p := range []string{"LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY"} {
			if redis.HasErrorPrefix(err, p) {
				return true
			}
		}
		return false
	}
	return true
}
