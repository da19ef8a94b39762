package aside

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"
)

// Redis layout of one entry: a hash in one key (so one slot) holding
//
//	v   the envelope, absent while the first load runs
//	l   the lease token: the right to write v, held by one fill attempt
//	le  the lease's deadline, in ms of the server's clock
//
// Invalidate deletes the key, which revokes entry and lease at once.
const (
	fieldValue = "v"
	leaseSlack = 500 * time.Millisecond // lease TTL beyond LoadTimeout: time for the fill to arrive
)

// Replies of acquireScript and peekScript.
const (
	replyFree  = 0 // no value, no live lease
	replyHit   = 1 // the value, as the second element
	replyWait  = 2 // another attempt holds the lease; its token is the second element
	replyLease = 3 // the caller now holds the lease
)

// acquireScript is the miss path's single round trip: the value if one has
// appeared, else the live lease's token, else a new lease for the caller.
// ARGV: token, lease ms, "1" when ARGV[4] holds bytes the caller could not
// decode (they are dropped, and only if still there). A key of another Redis
// type under our name is deleted.
var acquireScript = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'hash' and t ~= 'none' then redis.call('DEL', KEYS[1]) end
if ARGV[3] == '1' and redis.call('HGET', KEYS[1], 'v') == ARGV[4] then
  redis.call('HDEL', KEYS[1], 'v')
end
local v = redis.call('HGET', KEYS[1], 'v')
if v then return {1, v} end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local l = redis.call('HMGET', KEYS[1], 'l', 'le')
if l[1] and tonumber(l[2]) > ms then return {2, l[1]} end
redis.call('HSET', KEYS[1], 'l', ARGV[1], 'le', ms + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {3}`)

// peekScript is what a waiter polls: the value, the live lease, or neither.
var peekScript = redis.NewScript(`
local r = redis.call('HMGET', KEYS[1], 'v', 'l', 'le')
if r[1] then return {1, r[1]} end
if r[2] then
  local now = redis.call('TIME')
  if tonumber(r[3]) > tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) then return {2, r[2]} end
end
return {0}`)

// refreshScript takes a refresh lease on an existing entry without touching
// its value or TTL: readers keep the current value meanwhile. ARGV[3] is the
// SHA-1 of the bytes the reader saw: an entry that another refresh has
// already replaced is not refreshed again.
var refreshScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'v')
if not v or redis.sha1hex(v) ~= ARGV[3] then return 0 end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local l = redis.call('HMGET', KEYS[1], 'l', 'le')
if l[1] and tonumber(l[2]) > ms then return 0 end
redis.call('HSET', KEYS[1], 'l', ARGV[1], 'le', ms + tonumber(ARGV[2]))
return 1`)

// fillScript is the compare-and-set of a fill: the value is written only
// while the caller's lease is still there. An invalidation in between
// deleted the lease, so a load that read the old row can never write it back.
var fillScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'l') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2])
redis.call('HDEL', KEYS[1], 'l', 'le')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1`)

// releaseScript gives a lease back after a failed load, so that waiters
// retry at once instead of waiting for the lease to expire.
var releaseScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'l') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'l', 'le')
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
type flight[T any] struct {
	done       chan struct{}
	v          T
	err        error
	filled     bool       // the compare-and-set succeeded
	tags       []tagToken // the tag tokens read before the load
	freshUntil time.Time
}

// call is the state of one Get.
type call[T any] struct {
	rk       string
	load     Loader[T]
	tags     []string
	snap     tagSnap   // tag tokens read with the entry: what every answer is validated against
	deadline time.Time // end of the wait budget

	// The answer may go to L1: it came fresh from Redis or from a fill that
	// succeeded, and stays fresh until freshUntil.
	l1OK       bool
	freshUntil time.Time
}

// miss handles a Get that found no usable value. It returns done=false
// when the caller should read again (the lease it waited on vanished, or a
// flight it joined was refused its write).
func (c *Cache[T]) miss(ctx context.Context, cl *call[T], bad []byte, haveBad bool) (v T, err error, done bool) {
	rk := cl.rk
	token := newToken()
	f := &flight[T]{done: make(chan struct{})}
	// Registered before the lease exists, so that a WAIT(token) seen by
	// another goroutine of this process always finds the flight.
	c.mu.Lock()
	c.leases[token] = f
	c.mu.Unlock()

	octx, cancel := c.store.opContext(ctx)
	flag, badArg := "0", ""
	if haveBad {
		flag, badArg = "1", string(bad)
	}
	res, err := acquireScript.Run(octx, c.store.rdb, []string{rk}, token, c.leaseTTL().Milliseconds(), flag, badArg).Slice()
	cancel()
	c.record(ctx, err)
	kind, payload := parseReply(res, err)
	if kind != replyLease {
		c.mu.Lock()
		delete(c.leases, token)
		c.mu.Unlock()
	}
	switch {
	case err != nil && ctx.Err() != nil:
		return v, ctx.Err(), true
	case err != nil:
		v, err = c.loadDegraded(ctx, rk, cl.load)
		return v, err, true
	case kind == replyHit:
		return c.serve(ctx, cl, []byte(payload))
	case kind == replyLease:
		c.startFlight(ctx, cl, token, f)
		v, err, done = c.await(ctx, f, true, cl.snap)
		if done && err == nil && f.filled {
			cl.l1OK, cl.freshUntil = true, f.freshUntil
		}
		return v, err, done
	case kind == replyWait:
		return c.waitFor(ctx, cl, payload)
	}
	return v, fmt.Errorf("aside: unexpected lease reply %v", res), true
}

func parseReply(res []any, err error) (kind int64, payload string) {
	if err != nil || len(res) == 0 {
		return -1, ""
	}
	kind, _ = res[0].(int64)
	if len(res) > 1 {
		payload, _ = res[1].(string)
	}
	return kind, payload
}

// waitFor waits for the holder of lease token to fill the entry: by joining
// the holder's flight when it runs in this process, else through the shared
// poller of this key.
func (c *Cache[T]) waitFor(ctx context.Context, cl *call[T], token string) (v T, err error, done bool) {
	c.stats.leaseWaits.Add(1)
	for {
		c.mu.Lock()
		f := c.leases[token]
		c.mu.Unlock()
		if f != nil {
			v, err, done = c.await(ctx, f, false, cl.snap)
			if done && err == nil {
				cl.l1OK, cl.freshUntil = true, f.freshUntil // a joiner only takes a filled value
			}
			return v, err, done
		}
		r, err := c.poll(ctx, cl.rk, cl.deadline)
		switch {
		case err != nil:
			return v, err, true
		case r == nil: // the wait budget is spent
			c.stats.waitTimeouts.Add(1)
			v, err = c.loadAlone(ctx, cl.load)
			return v, err, true
		case r.err != nil && isOutage(r.err):
			v, err = c.loadDegraded(ctx, cl.rk, cl.load)
			return v, err, true
		case r.kind == replyHit:
			return c.serve(ctx, cl, []byte(r.payload))
		case r.kind == replyWait:
			token = r.payload // the same holder, or a new one after it failed
		default:
			return v, nil, false // freed without a value: read again, maybe take the lease
		}
	}
}

// await waits for a flight of this process on the caller's own ctx. The
// holder (the caller whose read created the lease) takes the result in any
// case; a caller that joined it takes the value only if its
// compare-and-set succeeded and it recorded the tag tokens the caller read
// — otherwise an invalidation came in between and the caller reads again.
func (c *Cache[T]) await(ctx context.Context, f *flight[T], holder bool, snap tagSnap) (v T, err error, done bool) {
	select {
	case <-f.done:
	case <-ctx.Done():
		return v, ctx.Err(), true
	}
	if f.err != nil {
		return v, f.err, true
	}
	if holder || f.filled && sameTokens(f.tags, snap) {
		return f.v, nil, true
	}
	return v, nil, false
}

// startFlight loads and fills under the lease token on a goroutine of its
// own, so that no caller's cancellation stops the load that others wait for.
func (c *Cache[T]) startFlight(ctx context.Context, cl *call[T], token string, f *flight[T]) {
	rk, load, tags := cl.rk, cl.load, cl.tags
	run := func() {
		defer close(f.done)
		defer func() {
			c.mu.Lock()
			delete(c.leases, token)
			c.mu.Unlock()
		}()
		r := c.loadAndFill(context.WithoutCancel(ctx), rk, token, load, tags)
		f.v, f.tags, f.err, f.filled, f.freshUntil = r.v, r.tags, r.err, r.filled, r.freshUntil
	}
	if !c.store.goTracked(run) {
		go run() // the Store is closed: the caller still gets its value
	}
}

// loadAndFill reads the tags' tokens, runs the loader under a held lease
// and writes the result with the compare-and-set. A failed load releases the
// lease at once, except that ErrNotFound is stored as a negative entry when
// the profile says so. Without tokens (Redis failed) nothing is written.
// fillResult is the outcome of one load under a lease.
type fillResult[T any] struct {
	v          T
	tags       []tagToken
	err        error
	filled     bool
	freshUntil time.Time
}

func (c *Cache[T]) loadAndFill(ctx context.Context, rk, token string, load Loader[T], tags []string) fillResult[T] {
	var recorded []tagToken
	var tokErr error
	if !c.hooks.tokensAfterLoad() {
		recorded, tokErr = c.store.ensureTokens(ctx, tags) // before the load: that is the point
	}
	start := c.store.now()
	v, err := c.timedLoad(ctx, load)
	took := c.store.now().Sub(start)
	r := fillResult[T]{v: v, tags: recorded, err: err}
	c.hooks.afterLoad(rk)
	if c.hooks.tokensAfterLoad() {
		recorded, tokErr = c.store.ensureTokens(ctx, tags)
	}
	switch {
	case err != nil && errors.Is(err, ErrNotFound) && c.profile.NegativeTTL > 0 && tokErr == nil:
		r.filled = c.casFill(ctx, rk, token, c.negativeEntry(start, recorded), c.profile.NegativeTTL)
		return r
	case err != nil || tokErr != nil:
		if !c.hooks.keepLease() {
			c.release(ctx, rk, token)
		}
		return r
	}
	c.hooks.beforeFill(rk)
	fresh := c.profile.freshFor()
	b, ok := c.encodeForFill(v, start, fresh, took, recorded)
	if !ok {
		c.release(ctx, rk, token)
		return r
	}
	r.filled, r.freshUntil = c.casFill(ctx, rk, token, b, fresh+c.profile.StaleWindow), start.Add(fresh)
	return r
}

// casFill writes b under the lease token; it reports whether the lease was
// still held.
func (c *Cache[T]) casFill(ctx context.Context, rk, token string, b []byte, ttl time.Duration) bool {
	if c.hooks.unconditionalFill() {
		return c.write(ctx, rk, b, ttl) == nil
	}
	if !c.store.breaker.allow() {
		return false
	}
	octx, cancel := c.store.opContext(ctx)
	n, err := fillScript.Run(octx, c.store.rdb, []string{rk}, token, b, ttl.Milliseconds()).Int()
	cancel()
	c.record(ctx, err)
	if err != nil || n != 1 {
		if err == nil {
			c.stats.fillsRefused.Add(1)
		}
		return false
	}
	c.stats.bytesWritten.Add(uint64(len(b)))
	return true
}

func (c *Cache[T]) release(ctx context.Context, rk, token string) {
	if !c.store.breaker.allow() {
		return
	}
	octx, cancel := c.store.opContext(ctx)
	err := releaseScript.Run(octx, c.store.rdb, []string{rk}, token).Err()
	cancel()
	c.record(ctx, err)
}

// leaseTTL outlives the longest load, so that a live holder never loses its
// lease, while a crashed holder's lease expires on its own.
func (c *Cache[T]) leaseTTL() time.Duration {
	return c.profile.LoadTimeout + c.store.opTimeout + leaseSlack
}

// pollRound is one read of a waited-on key. Waiters register for the next
// round that has not been issued yet, so a result is only handed to waiters
// that were registered before its read went out.
type pollRound struct {
	done    chan struct{}
	kind    int64
	payload string
	err     error
}

type poller struct {
	next *pollRound // waiters register here; nil when nobody waits
}

// poll waits for the next read of rk by this key's shared poller. It
// returns nil, nil when deadline passes first.
func (c *Cache[T]) poll(ctx context.Context, rk string, deadline time.Time) (*pollRound, error) {
	c.mu.Lock()
	p := c.polls[rk]
	if p == nil {
		p = &poller{}
		c.polls[rk] = p
		if !c.store.goTracked(func() { c.runPoller(rk, p) }) {
			delete(c.polls, rk)
			c.mu.Unlock()
			return nil, nil // closed Store: load alone
		}
	}
	if p.next == nil {
		p.next = &pollRound{done: make(chan struct{})}
	}
	r := p.next
	c.mu.Unlock()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-r.done:
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timer.C:
		return nil, nil
	}
}

// Poll intervals: quick at first (most loads are short), backing off so a
// slow load costs few reads.
const (
	pollFirst = time.Millisecond
	pollMax   = 10 * time.Millisecond
)

func (c *Cache[T]) runPoller(rk string, p *poller) {
	delay := pollFirst
	for {
		time.Sleep(delay)
		delay = min(delay*3/2, pollMax)
		c.mu.Lock()
		r := p.next
		p.next = nil
		if r == nil {
			delete(c.polls, rk)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		c.hooks.beforePoll(rk)
		ctx, cancel := c.store.opContext(context.Background())
		res, err := peekScript.Run(ctx, c.store.rdb, []string{rk}).Slice()
		cancel()
		c.record(context.Background(), err)
		r.kind, r.payload = parseReply(res, err)
		r.err = err
		close(r.done)
	}
}

// refreshInBackground reloads an entry that is stale or due for early
// refresh, under a refresh lease so that one refresher runs cluster-wide,
// while every reader keeps getting the current value.
func (c *Cache[T]) refreshInBackground(ctx context.Context, cl *call[T], seen []byte) {
	rk, load, tags := cl.rk, cl.load, cl.tags
	if _, busy := c.refreshing.LoadOrStore(rk, struct{}{}); busy {
		return
	}
	sum := sha1.Sum(seen)
	seenSum := hex.EncodeToString(sum[:])
	started := c.store.goTracked(func() {
		defer c.refreshing.Delete(rk)
		ctx := context.WithoutCancel(ctx)
		token := newToken()
		octx, cancel := c.store.opContext(ctx)
		n, err := refreshScript.Run(octx, c.store.rdb, []string{rk}, token, c.leaseTTL().Milliseconds(), seenSum).Int()
		cancel()
		c.record(ctx, err)
		if err != nil || n != 1 {
			return // another process refreshes, or Redis is unwell
		}
		if r := c.loadAndFill(ctx, rk, token, load, tags); r.err == nil && r.filled {
			c.stats.refreshes.Add(1)
		}
	})
	if !started {
		c.refreshing.Delete(rk)
	}
}

// loadDegraded serves a read while Redis cannot be used: one load per key
// per process, nothing written.
func (c *Cache[T]) loadDegraded(ctx context.Context, rk string, load Loader[T]) (T, error) {
	ch := c.keyFlights.DoChan(rk, func() (any, error) {
		return c.timedLoad(context.WithoutCancel(ctx), load)
	})
	select {
	case r := <-ch:
		v, _ := r.Val.(T) // comma-ok: a nil interface value is a valid T
		return v, r.Err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// loadAlone is the way out for a caller whose wait budget is spent: it loads
// by itself, shares nothing and writes nothing.
func (c *Cache[T]) loadAlone(ctx context.Context, load Loader[T]) (T, error) {
	return c.timedLoad(context.WithoutCancel(ctx), load)
}

// timedLoad calls load under the profile's LoadTimeout and counts it.
func (c *Cache[T]) timedLoad(ctx context.Context, load Loader[T]) (T, error) {
	return timed(ctx, c, load)
}

// timed runs one loader call — single or batch — under the profile's
// LoadTimeout, recovering panics, and counts it. ErrNotFound is an answer,
// not a failure.
func timed[T, V any](ctx context.Context, c *Cache[T], load Loader[V]) (V, error) {
	lctx, cancel := context.WithTimeout(ctx, c.profile.LoadTimeout)
	defer cancel()
	start := time.Now()
	v, err := safeLoad(lctx, load)
	c.stats.observeLoad(time.Since(start))
	if err == nil || errors.Is(err, ErrNotFound) {
		c.stats.loads.Add(1)
	} else {
		c.stats.loadErrors.Add(1)
		c.store.emit(Event{Kind: EventLoadError, Cache: c.name, Err: err})
	}
	return v, err
}

// negativeEntry is the stored form of "the source has no such row", fresh
// for the profile's NegativeTTL.
func (c *Cache[T]) negativeEntry(start time.Time, tags []tagToken) []byte {
	return encodeEnvelope(envelope{flags: flagNegative, typeID: c.typeID, createdMs: start.UnixMilli(),
		freshMs: start.Add(c.profile.NegativeTTL).UnixMilli(), tags: tags}, 0)
}

// safeLoad calls load, turning a panic into ErrLoaderPanic and a loader that
// outlives ctx into an error, so that no waiter crashes or hangs. A loader
// that ignores ctx keeps its goroutine until it returns; its result is
// dropped.
func safeLoad[T any](ctx context.Context, load Loader[T]) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{err: fmt.Errorf("%w: %v\n%s", ErrLoaderPanic, p, debug.Stack())}
			}
		}()
		v, err := load(ctx)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("aside: load: %w", ctx.Err())
	}
}

// testHooks let tests force interleavings (after a load, before a fill,
// before a poll read) and switch on deliberately broken variants, so that
// each interleaving test is seen to fail without leases. nil in production.
type testHooks struct {
	AfterLoad, BeforeFill, BeforePoll func(rk string)
	// UnconditionalFill writes a loaded value even if its lease was revoked.
	UnconditionalFill bool
	// KeepLeaseOnError does not release the lease after a failed load, so
	// that waiters must sit out the wait budget.
	KeepLeaseOnError bool
	// TokensAfterLoad reads tag tokens after the load instead of before.
	TokensAfterLoad bool
	// Naive replaces leases by plain cache-aside with one singleflight per
	// key that invalidations do not touch: read, load, write — the design
	// DESIGN.md measures as unsafe.
	Naive   bool
	flights *singleflight.Group // set with Naive
}

func (h *testHooks) afterLoad(rk string) {
	if h != nil && h.AfterLoad != nil {
		h.AfterLoad(rk)
	}
}

func (h *testHooks) beforeFill(rk string) {
	if h != nil && h.BeforeFill != nil {
		h.BeforeFill(rk)
	}
}

func (h *testHooks) beforePoll(rk string) {
	if h != nil && h.BeforePoll != nil {
		h.BeforePoll(rk)
	}
}

func (h *testHooks) unconditionalFill() bool { return h != nil && h.UnconditionalFill }
func (h *testHooks) naive() bool             { return h != nil && h.Naive }
func (h *testHooks) keepLease() bool         { return h != nil && h.KeepLeaseOnError }
func (h *testHooks) tokensAfterLoad() bool   { return h != nil && h.TokensAfterLoad }

// naiveGet is the broken variant behind testHooks.Naive.
func (c *Cache[T]) naiveGet(ctx context.Context, cl *call[T]) (T, error) {
	rk, load := cl.rk, cl.load
	if b, err := c.read(ctx, cl); err == nil && b != nil {
		if v, err, ok := c.serve(ctx, cl, b); ok {
			return v, err
		}
	}
	ch := c.hooks.flights.DoChan(rk, func() (any, error) {
		ctx := context.WithoutCancel(ctx)
		start := c.store.now()
		v, err := c.timedLoad(ctx, load)
		c.hooks.afterLoad(rk)
		if err == nil {
			c.hooks.beforeFill(rk)
			fresh := c.profile.freshFor()
			if b, ok := c.encodeForFill(v, start, fresh, 0, nil); ok {
				_ = c.write(ctx, rk, b, fresh+c.profile.StaleWindow)
			}
		}
		return v, err
	})
	r := <-ch
	v, _ := r.Val.(T)
	return v, r.Err
}
