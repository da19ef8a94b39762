package aside

import (
	"context"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Slow is not dead (see [breaker]): the check of a timeout.

// checkSlow sends check c in the background: a PING that may take the op
// timeout. Redis that answers it is slow, not dead, and the breaker stays
// closed.
func (s *Store) checkSlow(c *slowCheck) {
	check := func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.opTimeout)
		defer cancel()
		s.breaker.checked(c, s.answers(ctx))
	}
	if !s.goTracked(check) {
		s.breaker.checked(c, false) // closed Store: nothing may outlive it; open as before
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
		if s.hooks.oneBatch() {
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
