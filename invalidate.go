package aside

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Invalidate deletes the entries of keys together with any lease on them:
// a load that started before cannot write its value afterwards, so once
// Invalidate has returned no Get that starts later returns the old value.
// Call it after the source of truth has committed the change. It fails
// closed: the error is returned when Redis cannot be reached.
func (c *Cache[T]) Invalidate(ctx context.Context, keys ...string) error {
	rks, err := c.entryKeys(keys)
	if err != nil {
		return err
	}
	for _, rk := range rks {
		c.keyFlights.Forget(rk) // degraded reads must not join a load that began before
	}
	if !c.store.breaker.allow() {
		return ErrUnavailable
	}
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	// One DEL per key: keys of one call may live in different Cluster slots.
	_, err = c.store.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
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

// markStaleScript soft-invalidates one entry: it sets the stale flag inside
// the stored envelope (byte 2, flagStale = 4) and revokes any lease, so that
// a load that began before cannot write its older value. A negative entry,
// or bytes that are not an envelope, are deleted instead.
var markStaleScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'v')
redis.call('HDEL', KEYS[1], 'l', 'le')
if not v then return 0 end
local f = string.byte(v, 2)
if string.byte(v, 1) ~= 161 or not f or math.floor(f / 2) % 2 == 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
if math.floor(f / 4) % 2 == 0 then
  redis.call('HSET', KEYS[1], 'v', string.sub(v, 1, 1) .. string.char(f + 4) .. string.sub(v, 3))
end
return 1`)

// MarkStale soft-invalidates keys: readers keep getting the current value,
// counted as stale, while one refresher reloads it in the background — for
// changes where a few seconds of the old value are acceptable and a miss
// storm is not. Unlike [Cache.Invalidate], a Get after MarkStale may return
// the old value until the refresh has written the new one. It fails closed.
func (c *Cache[T]) MarkStale(ctx context.Context, keys ...string) error {
	rks, err := c.entryKeys(keys)
	if err != nil {
		return err
	}
	if !c.store.breaker.allow() {
		return ErrUnavailable
	}
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	_, err = c.store.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		for _, rk := range rks {
			markStaleScript.Eval(octx, p, []string{rk}) // EVAL: a pipeline cannot fall back from EVALSHA
		}
		return nil
	})
	c.record(ctx, err)
	if err != nil {
		return fmt.Errorf("aside: mark stale: %w", err)
	}
	return nil
}

func (c *Cache[T]) entryKeys(keys []string) ([]string, error) {
	rks := make([]string, len(keys))
	for i, k := range keys {
		if k == "" {
			return nil, errEmptyKey
		}
		rks[i] = c.keys.entry(k)
	}
	return rks, nil
}
