package bus

import (
	"context"
	"log/slog"
	"math"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Store's L1 lease (strict mode): heartbeats that register it and come
// back through the ordered stream, the lease they grant on the Store's own
// monotonic clock, and leaving the registry when the stream is in doubt.

// beatScript records the Store's lease in the registry (strict mode) and
// publishes its heartbeat, atomically: a Store that hears the heartbeat is
// listed for every invalidation published after it. It returns how many
// subscribers the heartbeat reached.
var beatScript = redis.NewScript(`
if ARGV[4] ~= '0' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  redis.call('PEXPIRE', KEYS[1], 120000)
end
if ARGV[1] == '1' then return redis.call('SPUBLISH', ARGV[2], ARGV[3]) end
return redis.call('PUBLISH', ARGV[2], ARGV[3])`)

// member is this Store's name in the registry in its current incarnation:
// a reset starts a new one, so that what is said of the old one (it left)
// can never be taken for the new one.
func (b *Bus) member() string { return b.origin + "." + strconv.FormatUint(b.incarnation.Load(), 10) }

// leave takes this Store's current incarnation out of the registry and,
// with announce, tells the Stores waiting for it that it holds nothing
// they must wait for (it has dropped its L1): one pipeline, on the
// registry's node. Best effort: when it fails, their waits end with the
// lease. Only run's goroutine calls it, before any heartbeat of the next
// incarnation, so the next incarnation is never taken out or announced.
func (b *Bus) leave(announce bool) {
	octx, cancel := b.cfg.Detached(context.Background())
	defer cancel()
	member := b.member()
	_, _ = b.cfg.Client.Pipelined(octx, func(p redis.Pipeliner) error {
		p.ZRem(octx, b.registry, member)
		if announce {
			b.publish(octx, p, b.channel, Message{Kind: kindReset, Names: []string{member}})
		}
		return nil
	})
	b.incarnation.Add(1)
}

// beat publishes heartbeat seq the way invalidations travel, recording the
// lease it asks for; it returns how many subscribers heard it.
func (b *Bus) beat(seq uint64) (int64, error) {
	ctx, cancel := b.cfg.OpContext(context.Background())
	defer cancel()
	lease := int64(0)
	if b.strict {
		lease = b.leaseFor.Milliseconds()
	}
	payload := b.encode(Message{Kind: kindBeat, Seq: seq})[0]
	b.waitStats.beats.Add(1)
	return beatScript.Run(ctx, b.cfg.Client, []string{b.registry}, b.flag(b.sharded), b.own, payload, lease, b.member()).Int64()
}

// heard marks the stream trusted after a heartbeat sent at sent came back:
// every invalidation published before it was sent has been applied.
func (b *Bus) heard(sent time.Time) {
	if !b.up.Load() {
		b.epoch.Add(1) // entries filled while in doubt stay invalid
		b.up.Store(true)
		b.cfg.Log(slog.LevelInfo, "aside: invalidation stream up: L1 in use")
	}
	if !b.strict || b.variant(NoHeartbeat) { // the broken variant trusts the connection for good
		b.lease.Store(math.MaxInt64)
		return
	}
	if until := int64(sent.Sub(b.base) + b.leaseFor); until > b.lease.Load() {
		b.lease.Store(until) // only run's goroutine stores a lease
	}
}

// drop stops L1 at once: no lease, and every entry of an older epoch. It
// reports whether L1 was up.
func (b *Bus) drop() bool {
	b.lease.Store(0)
	if b.up.Swap(false) {
		b.epoch.Add(1)
		return true
	}
	return false
}
