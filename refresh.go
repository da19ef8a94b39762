package aside

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"slices"

	"github.com/redis/go-redis/v9"
)

// Early refresh and stale-while-revalidate: a reader of a stale or
// soon-expiring entry reloads it in the background under a refresh lease,
// through the same load-and-fill step as a miss (fill.go).

// refreshScript takes a refresh lease on an existing entry without touching
// its value or TTL: readers keep the current value meanwhile. ARGV[3] is the
// SHA-1 of the bytes the reader saw: an entry that another refresh has
// already replaced is not refreshed again.
var refreshScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v or redis.sha1hex(v) ~= ARGV[3] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 't', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1`)

// refreshInBackground reloads an entry that is stale or due for early
// refresh, under a refresh lease so that one refresher runs cluster-wide,
// while every reader keeps getting the current value. The new entry carries
// every tag of the old one as well as those of the call.
func (c *Cache[T]) refreshInBackground(ctx context.Context, cl *call[T], seen []byte, entryTags []tagToken, src source[T]) {
	if src.one == nil && src.many == nil {
		return // a Peek: nothing to reload with
	}
	rk, key := cl.rk, cl.key
	if _, busy := c.refreshing.LoadOrStore(rk, struct{}{}); busy {
		return
	}
	tags := cl.tags
	if variantOn(c.hooks, vCallTagsOnly) { // the broken variant: the entry's other tags are lost
		entryTags = nil
	}
	for _, t := range entryTags {
		if !slices.Contains(tags, t.Name) {
			tags = append(tags[:len(tags):len(tags)], t.Name)
		}
	}
	sum := sha1.Sum(seen)
	seenSum := hex.EncodeToString(sum[:])
	started := c.store.goWrite(func() {
		defer c.refreshing.Delete(rk)
		ctx := context.WithoutCancel(ctx)
		token := newToken()
		octx, cancel := c.store.opContext(ctx)
		n, err := refreshScript.Run(octx, c.store.rdb, []string{rk, leaseKey(rk)}, token, c.leaseTTL().Milliseconds(), seenSum).Int()
		c.store.record(octx, err, &c.stats, c.name)
		if isTimeout(err) && !cutShort(octx, err) { // the script may have run: give back what it took
			c.releaseLater([]string{rk}, []string{token})
		}
		cancel()
		if err != nil || n != 1 {
			return // another process refreshes, or Redis is unwell
		}
		f := &flight[T]{}
		c.loadAndFill(ctx, []leaseTask[T]{{key: key, rk: rk, token: token, tags: tags, f: f}}, src)
		if f.err == nil && f.valid {
			c.stats.refreshes.Add(1)
		}
	})
	if !started {
		c.refreshing.Delete(rk)
	}
}
