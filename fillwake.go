package aside

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// announceFills tells the waiters of rks, in every Store, that the lease
// they wait on has ended (filled or released): their pollers read at once
// instead of at their next interval. It travels on a goroutine of its own,
// so that the holder's caller does not wait for it; a lost announcement
// costs the waiters one poll interval.
func (b *bus) announceFills(s *Store, rks []string) {
	if len(rks) == 0 || variantOn(b.hooks, vNoFillWake) {
		return
	}
	s.goTracked(func() {
		octx, cancel := s.detachedOpContext(context.Background())
		defer cancel()
		_, _ = s.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
			b.publish(octx, p, b.channel, busMessage{Kind: busFill, Names: rks})
			return nil
		})
	})
}

// waker returns the channel that wakes the poller of rk, and starts
// listening to the bus if this Store did not yet.
func (b *bus) waker(s *Store, rk string) chan struct{} {
	b.start(s)
	ch := make(chan struct{}, 1)
	b.wakers.Store(rk, ch)
	return ch
}

// wake wakes the pollers of rks, if this Store has any.
func (b *bus) wake(rks []string) {
	for _, rk := range rks {
		if ch, ok := b.wakers.Load(rk); ok {
			select {
			case ch.(chan struct{}) <- struct{}{}:
			default:
			}
		}
	}
}
