package bus

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// AnnounceFills tells the waiters of rks, in every Store, that the lease
// they wait on has ended (filled or released): their pollers read at once
// instead of at their next interval. It travels on a goroutine of its own,
// so that the holder's caller does not wait for it; a lost announcement
// costs the waiters one poll interval.
func (b *Bus) AnnounceFills(rks []string) {
	if len(rks) == 0 || b.variant(NoFillWake) {
		return
	}
	b.cfg.Go(func() {
		octx, cancel := b.cfg.Detached(context.Background())
		defer cancel()
		_, _ = b.cfg.Client.Pipelined(octx, func(p redis.Pipeliner) error {
			b.publish(octx, p, b.channel, Message{Kind: kindFill, Names: rks})
			return nil
		})
	})
}

// Waker returns the channel that wakes the poller of rk, and starts
// listening to the bus if this Store did not yet.
func (b *Bus) Waker(rk string) chan struct{} {
	b.start()
	ch := make(chan struct{}, 1)
	b.wakers.Store(rk, ch)
	return ch
}

// wake wakes the pollers of rks, if this Store has any.
func (b *Bus) wake(rks []string) {
	for _, rk := range rks {
		if ch, ok := b.wakers.Load(rk); ok {
			select {
			case ch.(chan struct{}) <- struct{}{}:
			default:
			}
		}
	}
}
