package aside

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"runtime"
	"time"

	"github.com/asidecache/aside/internal/envelope"
	"github.com/asidecache/aside/internal/l1"
	"github.com/redis/go-redis/v9"
)

// Redis layout of one entry, in two keys of one hash tag (so one slot):
//
//	rk       the envelope: a plain string, so that a hit is one GET and a
//	         batch of hits one MGET; absent while the first load runs
//	rk + :l  the lease, a small hash that expires on its own (a dead
//	         holder's lease ends with it):
//	           t  the token: the right to write rk, held by one fill attempt
//	           w  set when a caller found the lease held and waits: the fill
//	              (or the release) of that lease then announces itself,
//	              waking the waiters
//
// Invalidate deletes both keys, which revokes entry and lease at once.
const leaseSlack = 500 * time.Millisecond // lease TTL beyond what a live holder needs: time for its fill to arrive

// Replies of acquireScript and peekScript.
const (
	replyFree  = 0 // no value, no live lease
	replyHit   = 1 // the value, as the second element
	replyWait  = 2 // another attempt holds the lease; its token is the second element
	replyLease = 3 // the caller now holds the lease
)

// acquireScript is the miss path's single round trip: the value if one has
// appeared, else the live lease's token, else a new lease for the caller.
// KEYS: entry, lease. ARGV: token, lease ms, "1" when ARGV[4] holds bytes
// the caller could not decode (they are dropped, and only if still there).
// A key of another Redis type under either name is deleted (pcall: the
// common path pays no TYPE call).
var acquireScript = redis.NewScript(`
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' and v.err then
  redis.call('DEL', KEYS[1])
  v = false
elseif ARGV[3] == '1' and v == ARGV[4] then
  redis.call('DEL', KEYS[1])
  v = false
end
if v then return {1, v} end
local l = redis.pcall('HGET', KEYS[2], 't')
if type(l) == 'table' and l.err then
  redis.call('DEL', KEYS[2])
  l = false
end
if l then
  redis.call('HSET', KEYS[2], 'w', '1')
  return {2, l}
end
redis.call('HSET', KEYS[2], 't', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {3}`)

// peekScript is what a waiter polls: the value, the live lease, or neither.
var peekScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
local l = redis.call('HGET', KEYS[2], 't')
if l then return {2, l} end
return {0}`)

// fillScript is the compare-and-set of a fill: the value is written only
// while the caller's lease is still there. An invalidation in between
// deleted the lease, so a load that read the old row can never write it back.
// It answers 0 (refused), 1 (written) or 2 (written, and callers wait).
var fillScript = redis.NewScript(`
local l = redis.call('HMGET', KEYS[2], 't', 'w')
if l[1] ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
if l[2] then return 2 end
return 1`)

// releaseScript gives a lease back after a failed load, so that waiters
// retry at once instead of waiting for the lease to expire. It answers 1
// when the lease was still held: no invalidation came in between (2: and
// callers wait), 0 otherwise.
var releaseScript = redis.NewScript(`
local l = redis.call('HMGET', KEYS[2], 't', 'w')
if l[1] == ARGV[1] then
  redis.call('DEL', KEYS[2])
  if l[2] then return 2 end
  return 1
end
return 0`)

// newToken returns a random 128-bit lease token. Every fill attempt gets its
// own: a token shared by two attempts would let one write what the other
// was refused.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}

// flight is one fill attempt of this process, found by its lease token.
// Its fields are written by the load's goroutine: v and err before loaded
// is closed, the others before done is closed; they are read only after.
type flight[T any] struct {
	loaded chan struct{} // closed when v and err are set: the holder returns, the fill goes on
	done   chan struct{} // closed when the fill is done: valid, tags and freshUntil are set
	v      T
	err    error
	// valid: the result was confirmed under the lease — its compare-and-set
	// fill succeeded, or, for a not-found that was not stored, the lease was
	// still held when it came back. Only then may a caller that joined
	// share a value or a not-found.
	valid      bool
	tags       []tagToken // the tag tokens read before the load
	freshUntil time.Time
	handed     bool // loaded is closed; only the flight's goroutine uses it
}

// hand gives the holder its result (once), and reports whether it did so
// now.
func (f *flight[T]) hand() bool {
	if f.loaded == nil || f.handed {
		return false
	}
	f.handed = true
	close(f.loaded)
	return true
}

// leaseTask is what a load needs of one leased key; it shares nothing with
// the calls waiting for it, whose state their own goroutines own.
type leaseTask[T any] struct {
	key, rk, token string
	tags           []string // the entry's tags, whose tokens are recorded before the load
	snap           tagSnap  // their tokens as the holder's read saw them, before it took the lease
	note           l1.Note  // the holder's L1 generations before its first read
	f              *flight[T]
}

// startFlight loads and fills the keys held calls have leased, on a
// goroutine of its own, so that no caller's cancellation stops the load
// that others wait for. One loader call serves them all.
func (c *Cache[T]) startFlight(ctx context.Context, held []*call[T], src source[T]) {
	tasks := make([]leaseTask[T], len(held))
	for i, cl := range held {
		tasks[i] = leaseTask[T]{key: cl.key, rk: cl.rk, token: cl.token, tags: cl.tags, snap: cl.snap, note: cl.note, f: cl.f}
	}
	run := func() {
		c.loadAndFill(context.WithoutCancel(ctx), tasks, src)
		c.retire(tasks)
		for _, t := range tasks {
			close(t.f.done)
		}
	}
	if !c.store.goWrite(run) {
		go run() // the Store is closed: the callers still get their values
	}
}

// loadAndFill reads the tags' tokens, calls the source once for every
// task's key, and writes each result with a compare-and-set on its lease.
// A failed load releases its lease at once; ErrNotFound is stored as a
// negative entry when the profile says so. Without tokens (Redis failed)
// nothing is written.
func (c *Cache[T]) loadAndFill(ctx context.Context, tasks []leaseTask[T], src source[T]) {
	tags := tasks[0].tags // a lone task, the common case, copies nothing
	for _, t := range tasks[1:] {
		tags = mergeTags(tags, t.tags)
	}
	var recorded []tagToken
	var tokErr error
	ensured := false // the tag keys were given a whole life just now: no fill extends them
	if !variantOn(c.hooks, vTokensAfterLoad) {
		recorded, ensured, tokErr = c.tokensBeforeLoad(ctx, tasks, tags) // before the load: that is the point
	}
	keys := make([]string, len(tasks))
	for i, t := range tasks {
		keys[i] = t.key
	}
	start := c.store.now()
	stopRenewing := c.renewLeases(tasks)
	outs := c.loadFrom(ctx, src, keys)
	stopRenewing()
	took := c.store.now().Sub(start)
	for _, t := range tasks {
		reach(c.hooks, pAfterLoad, t.rk)
	}
	if variantOn(c.hooks, vTokensAfterLoad) {
		recorded, tokErr = c.store.ensureTokens(ctx, tags, c.tagLife())
		ensured = true
	}
	var fills []fillCmd
	var releases []int
	for i, t := range tasks {
		o, f := outs[i], t.f
		f.v, f.err, f.tags = o.v, o.err, tokensOf(recorded, t.tags, len(t.tags) == len(tags))
		switch {
		case errors.Is(o.err, ErrNotFound) && c.profile.NegativeTTL > 0 && tokErr == nil:
			fills = append(fills, fillCmd{i, c.negativeEntry(start, f.tags), c.profile.NegativeTTL})
		case o.err != nil || tokErr != nil:
			releases = append(releases, i)
		default:
			fresh, ttl, keep := c.lifetime(start, o.until)
			if !keep {
				releases = append(releases, i)
				continue
			}
			b, served, ok := c.encodeForFill(o.v, start, fresh, took, f.tags)
			if !ok {
				releases = append(releases, i)
				continue
			}
			f.v = served
			f.freshUntil = start.Add(fresh)
			fills = append(fills, fillCmd{i, b, ttl})
		}
	}
	// A holder whose value is to be stored returns now; one whose lease is
	// given back instead (a failure, an unstored not-found) returns after
	// that, so that its next call never joins the attempt it saw end.
	woke := false
	for _, fc := range fills {
		woke = tasks[fc.task].f.hand() || woke
	}
	if woke {
		// Let the callers just woken run first. A caller made runnable here
		// would otherwise wait on this goroutine's processor until the fill
		// below blocks on its reply — the fill's whole write path — for a
		// value it already has.
		runtime.Gosched()
	}
	for _, fc := range fills {
		reach(c.hooks, pBeforeFill, tasks[fc.task].rk)
	}
	c.fill(ctx, tasks, fills, !ensured)
	for _, fc := range fills {
		reach(c.hooks, pAfterFill, tasks[fc.task].rk)
	}
	for _, t := range tasks {
		if t.f.loaded != nil && t.f.valid && t.f.err == nil { // a caller's load (a refresh has no L1 note)
			c.keepInL1(t.key, t.f.v, t.note, t.f.freshUntil, t.f.tags, t.tags)
		}
	}
	if !variantOn(c.hooks, vKeepLease) {
		c.release(ctx, tasks, releases)
	}
	for _, t := range tasks {
		t.f.hand()
	}
}

type fillCmd struct {
	task int
	b    []byte
	ttl  time.Duration
}

// fill writes each value under its task's lease, in one round trip, and
// marks the flights whose compare-and-set succeeded. A lease whose fill did
// not reach Redis is owed (owed.go): given back once Redis answers.
func (c *Cache[T]) fill(ctx context.Context, tasks []leaseTask[T], fills []fillCmd, extendTags bool) {
	if len(fills) == 0 {
		return
	}
	idx := make([]int, len(fills))
	for i, fc := range fills {
		idx[i] = fc.task
	}
	if !c.store.redisUp(ctx) {
		c.owe(tasks, idx, nil)
		return
	}
	if variantOn(c.hooks, vUnconditionalFill) {
		for _, fc := range fills {
			tasks[fc.task].f.valid = c.writeEntry(ctx, tasks[fc.task].rk, fc.b, fc.ttl) == nil
		}
		return
	}
	rks := make([]string, len(fills))
	for i, fc := range fills {
		rks[i] = tasks[fc.task].rk
	}
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	cmds, err := c.store.evalEntries(octx, fillScript, rks, func(i int) []any {
		return []any{tasks[fills[i].task].token, fills[i].b, fills[i].ttl.Milliseconds()}
	})
	c.store.record(octx, err, &c.stats, c.name)
	var waited []string
	var tagLives map[string]time.Duration // the tags the stored entries recorded, and how long those live
	for i, fc := range fills {
		n, err := cmds[i].Int()
		switch {
		case err == nil && n >= 1:
			tasks[fc.task].f.valid = true
			c.stats.bytesWritten.Add(uint64(len(fc.b)))
			if n == 2 {
				waited = append(waited, rks[i])
			}
			for _, t := range tasks[fc.task].f.tags {
				if !extendTags {
					break
				}
				if tagLives == nil {
					tagLives = map[string]time.Duration{}
				}
				tagLives[t.Name] = max(tagLives[t.Name], fc.ttl+leaseSlack)
			}
		case err == nil:
			c.stats.fillsRefused.Add(1)
		}
	}
	c.owe(tasks, idx, cmds)
	c.store.extendTags(ctx, tagLives) // after the fill, as its caller has its value: a round trip nobody waits for
	c.store.bus.AnnounceFills(waited)
}

// renewScript extends a lease while its token is still the one held.
var renewScript = redis.NewScript(`
if redis.call('HGET', KEYS[2], 't') == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 0`)

// negativeEntry is the stored form of "the source has no such row", fresh
// for the profile's NegativeTTL.
func (c *Cache[T]) negativeEntry(start time.Time, tags []tagToken) []byte {
	return envelope.Encode(envelope.Envelope{Flags: envelope.FlagNegative, TypeID: c.typeID, CreatedMs: start.UnixMilli(),
		FreshMs: start.Add(c.profile.NegativeTTL).UnixMilli(), Tags: tags}, 0)
}
