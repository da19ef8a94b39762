package aside

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asidecache/aside/internal/l1"
	"github.com/redis/go-redis/v9"
)

// The protocol, written once. Get resolves a group of one call, GetMany a
// group of many (every step then is one pipeline); a background refresh
// runs the load-and-fill step under a refresh lease. The states of one
// entry's Redis key, and who moves it between them:
//
//	absent ──acquire (a reader)──▶ leased(T) ──fill CAS with T (holder of T)──▶ filled
//	leased(T) ──release T (its holder, after a failed load)──▶ absent
//	leased(T) ──lease deadline passes (holder died)──▶ absent, for the next acquire
//	filled ──refresh lease (a reader of a stale or soon-expiring entry)──▶ filled+leased(R)
//	filled+leased(R) ──fill CAS with R──▶ filled (new value)
//	any ──Invalidate (DEL) / Set (DEL, then write)──▶ absent / filled, every lease revoked
//
// Why each move is safe: a lease token is new for every fill attempt, so
// only the attempt that acquired it can fill; Invalidate deletes the lease
// with the entry, so a load that began before an invalidation can never
// write (its CAS fails) and a Get after the invalidation never finds it. Tag
// invalidation leaves leases alone: there the entry records the tag tokens
// read before its load, and every reader compares them with the current
// ones. In process, a caller that finds another attempt's lease joins that
// attempt only if its result was confirmed under its lease (a CAS fill, or
// for an unstored not-found, the lease still held when it came back) and it
// recorded the tokens this caller read; otherwise it reads again.

// call is one key's way through the protocol: a Get, or one key of a GetMany.
type call[T any] struct {
	key, rk   string
	tags      []string       // the tags the caller named for this entry: Tags, and its KeyTags
	snap      tagSnap        // tag tokens read with the entry: what every answer is validated against
	raw       []byte         // bytes read but not served (undecodable, invalidated): the lease script drops them
	deadline  time.Time      // end of the wait budget, set at the first miss
	note      l1.Note        // L1 generations before the first read
	counted   bool           // its read outcome (hit, miss, ...) is counted: once per call, at its first read
	countedIn *atomic.Uint64 // the counter it went to
	// leaseFirst: the read starts with the lease script whatever the
	// cache's trend (read.go); set by tests, through a call option.
	leaseFirst bool

	token string     // the lease this call holds (f set), or waits on
	f     *flight[T] // the fill attempt this call holds
	// Its lease script (share.go): the one it sends, which others may
	// share, or the one on the wire that it shares instead.
	script, shares *leaseScript

	// The answer, and whether it may go to L1: it came fresh from Redis or
	// from a fill that succeeded; it stays fresh until freshUntil and is
	// guarded by the tags of its entry.
	done       bool
	v          T
	err        error
	outcome    Outcome // how it was answered, for traces
	l1OK       bool
	freshUntil time.Time
	entryTags  []tagToken

	self [1]*call[T] // backs alone(): a Get's group without an allocation of its own
}

// alone returns the group of one call that a Get resolves.
func (cl *call[T]) alone() []*call[T] {
	cl.self[0] = cl
	return cl.self[:]
}

func (cl *call[T]) finish(v T, err error) { cl.v, cl.err, cl.done = v, err, true }

func finishAll[T any](calls []*call[T], err error) {
	var zero T
	for _, cl := range calls {
		cl.finish(zero, err)
	}
}

// resolve answers every call of a group: read (one round trip), serve what
// is usable, lease the misses (one round trip), load what this group
// leased (one loader call) while waiting for what others load, and read
// again where a wait ended without a usable result. A lone read that will
// probably miss skips the first read: the lease script serves a hit too.
func (c *Cache[T]) resolve(ctx context.Context, calls []*call[T], src source[T]) {
	if c.naiveGet != nil {
		for _, cl := range calls {
			c.naiveGet(ctx, cl, src)
		}
		return
	}
	leaseFirst := c.leaseFirst(calls)
	for len(calls) > 0 {
		if !c.store.usable(ctx, &c.stats, c.name) {
			c.stats.skipped.Add(uint64(len(calls)))
			c.loadDegraded(ctx, calls, src)
			return
		}
		if calls = c.nodesUp(ctx, calls, src); len(calls) == 0 {
			return
		}
		misses, first := calls, leaseFirst
		if leaseFirst {
			leaseFirst = false // the lease script reads the entry too (read.go)
		} else {
			var done bool
			if misses, done = c.readStep(ctx, calls, src); done {
				return
			}
		}
		again := c.lease(ctx, misses, src, first)
		calls = again[:0]
		for _, cl := range again {
			if time.Now().After(cl.deadline) { // gone round past its wait budget: load alone
				c.budgetSpent(ctx, cl, src)
				continue
			}
			calls = append(calls, cl)
		}
	}
}

// lease takes leases for the misses in one round trip, starts one load for
// those this group now holds, waits for the others, and returns the calls
// that must read again. first: no read came before (read.go), so the tag
// tokens come in the lease's round trip.
func (c *Cache[T]) lease(ctx context.Context, misses []*call[T], src source[T], first bool) (again []*call[T]) {
	if len(misses) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		finishAll(misses, err)
		return nil
	}
	now := time.Now()
	for _, cl := range misses {
		if cl.deadline.IsZero() {
			cl.deadline = now.Add(c.profile.waitBudget())
		}
	}
	degraded, err := c.acquire(ctx, misses, src, first)
	switch {
	case err != nil && ctx.Err() != nil:
		finishAll(misses, ctx.Err())
		return nil
	case err != nil:
		c.loadDegraded(ctx, misses, src)
		return nil
	}
	if len(degraded) > 0 {
		c.loadDegraded(ctx, degraded, src)
	}
	var held []*call[T]
	var waiting []*call[T]
	for _, cl := range misses {
		switch {
		case cl.done:
		case cl.f != nil:
			held = append(held, cl)
			waiting = append(waiting, cl)
		case cl.token != "":
			waiting = append(waiting, cl)
		default:
			again = append(again, cl) // the entry appeared but was unusable: read, and drop it, again
		}
	}
	if len(held) > 0 {
		c.startFlight(ctx, held, src)
	}
	if len(waiting) == 1 {
		if c.wait(ctx, waiting[0], src) {
			again = append(again, waiting[0])
		}
		return again
	}
	var mu sync.Mutex // protects again
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxWaiters)
	for _, cl := range waiting {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if c.wait(ctx, cl, src) {
				mu.Lock()
				again = append(again, cl)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return again
}

// maxWaiters bounds the goroutines one GetMany uses to wait for keys that
// other callers are loading.
const maxWaiters = 16

// acquire runs the lease script for every miss in one round trip, on a
// context the caller cannot cut short: a lease taken in Redis always has a
// holder here, which hands it to the detached load even if the caller has
// given up by then. Each call ends up answered (the entry appeared), holding
// a lease (f), waiting on one (token), or with neither (read again). A miss
// whose key's script another call of this process has on the wire shares
// that script's lease instead of sending its own (share.go).
// degraded are the calls whose script failed on its own (an error reply).
// first: a lone call that started here reads its tag tokens in the same
// round trip, as its read would have.
func (c *Cache[T]) acquire(ctx context.Context, misses []*call[T], src source[T], first bool) (degraded []*call[T], err error) {
	send := c.planLeaseScripts(misses)
	if len(send) > 0 {
		if degraded, err = c.sendLeaseScripts(ctx, send, src, first); err != nil {
			return nil, err // every miss degrades, those that shared a script too
		}
	}
	if len(send) < len(misses) {
		for _, cl := range misses {
			if cl.shares != nil {
				c.takeSharedLease(ctx, cl, src, first)
			}
		}
	}
	return degraded, err
}

// sendLeaseScripts runs the lease scripts of send, and hands each answer
// to the calls that share it.
func (c *Cache[T]) sendLeaseScripts(ctx context.Context, send []*call[T], src source[T], first bool) (degraded []*call[T], err error) {
	defer func() {
		for _, cl := range send {
			c.endLeaseScript(cl) // after an error too: its sharers then read again
		}
	}()
	flights := make([]*flight[T], len(send))
	tokens := make([]string, len(send))
	rks := make([]string, len(send))
	c.mu.Lock()
	for i, cl := range send {
		// Registered before the lease exists, so that a WAIT(token) seen by
		// another goroutine of this process always finds the flight.
		tokens[i], flights[i], rks[i] = newToken(), &flight[T]{done: make(chan struct{}), loaded: make(chan struct{})}, cl.rk
		c.leases[tokens[i]] = flights[i]
	}
	c.mu.Unlock()
	actx := context.WithoutCancel(ctx)
	if variantOn(c.hooks, vAcquireOnCaller) {
		actx = ctx
	}
	octx, cancel := c.store.opContext(actx)
	defer cancel()
	leaseMs := c.leaseTTL().Milliseconds()
	args := func(i int) []any {
		if send[i].raw != nil {
			return []any{tokens[i], leaseMs, "1", send[i].raw}
		}
		return []any{tokens[i], leaseMs, "0", ""}
	}
	var cmds []*redis.Cmd
	if first && len(send[0].tags) > 0 {
		cmds, err = c.leaseWithTokens(octx, send[0], args(0))
	} else {
		cmds, err = c.store.evalEntries(octx, acquireScript, rks, args)
	}
	c.store.record(octx, err, &c.stats, c.name)
	if isOutage(err) || cutShort(octx, err) { // cut short: only the broken variant runs on the caller's ctx
		c.unregister(tokens...)
		if isTimeout(err) && !cutShort(octx, err) { // the scripts may still run: give back what they take
			c.releaseLater(rks, tokens)
		}
		return nil, err
	}
	for i, cl := range send {
		res, cerr := cmds[i].Slice()
		kind, payload := parseReply(res, cerr)
		cl.raw, cl.token = nil, ""
		if kind != replyHit {
			c.count(cl, &c.stats.misses) // a read that started here (leaseFirst) has counted nothing yet
		}
		if kind == replyLease {
			cl.token, cl.f = tokens[i], flights[i]
			c.shareAnswer(cl, cl.token, false, nil)
			continue
		}
		c.unregister(tokens[i])
		switch kind {
		case replyHit:
			b := c.replyBytes(payload)
			c.shareAnswer(cl, "", false, b)
			if !c.serve(ctx, cl, b, src) {
				cl.raw = b
			}
		case replyWait:
			cl.token = payload
			c.shareAnswer(cl, cl.token, true, nil)
		case replyFree:
		default:
			degraded = append(degraded, cl)
		}
	}
	return degraded, nil
}

// leaseWithTokens runs the lease script for a call that skipped its read,
// and reads the call's tag tokens in the same round trip (a pipeline, the
// tag keys after the script): what the read would have brought with the
// entry, and read, as it would have been, before any load. A token that
// could not be read counts as missing (""), which is fail-safe: no entry
// guarded by its tag is served on it (checkTags), no flight is joined on
// it (sameTokens), and a load reads it again (tokensBeforeLoad).
func (c *Cache[T]) leaseWithTokens(octx context.Context, cl *call[T], args []any) ([]*redis.Cmd, error) {
	cmd := c.leaseAndReadTokens(octx, cl, args, acquireScript.EvalSha)
	if isNoScript(cmd.Err()) { // the script did not run: the round trip again, with its body
		cmd = c.leaseAndReadTokens(octx, cl, args, acquireScript.Eval)
	}
	return []*redis.Cmd{cmd}, cmd.Err()
}

// leaseAndReadTokens sends cl's lease script, as run puts it in a pipeline,
// and the GETs of its tag tokens in one round trip.
func (c *Cache[T]) leaseAndReadTokens(octx context.Context, cl *call[T], args []any, run scriptRun) *redis.Cmd {
	p := c.store.rdb.Pipeline()
	cmd := run(octx, p, []string{cl.rk, leaseKey(cl.rk)}, args...)
	gets := make([]*redis.StringCmd, len(cl.tags))
	for i, t := range cl.tags {
		gets[i] = p.Get(octx, tagKey(c.store.prefix, t))
	}
	_, _ = p.Exec(octx) // the error is a command's: the script's is returned, the tokens' are missing ones
	cl.snap = tagSnap{names: cl.tags, tokens: make([]string, len(gets))}
	for i, g := range gets {
		cl.snap.tokens[i], _ = g.Result() // "" for a missing tag key, or one not read
	}
	return cmd
}

func (c *Cache[T]) unregister(tokens ...string) {
	c.mu.Lock()
	for _, t := range tokens {
		delete(c.leases, t)
	}
	c.mu.Unlock()
}

// retireCount is how many ended fill attempts a cache keeps findable by
// token. A caller whose read found one of this process's leases looks the
// attempt up once the reply is in, and by then the attempt may have ended:
// its fill's reply can arrive first (the caller that just missed reads the
// key again at once, its fill one round trip behind). The attempt's result
// is still the caller's to take — a fill that succeeded ran after the read
// that saw its lease, the rule every joiner relies on — and without this
// record the caller would poll Redis, a millisecond or more, for a value
// this process holds. A few records cover that window; each keeps a value
// alive, so they are few.
const retireCount = 16

// retiredFlights is a ring of the last attempts that ended, by token.
type retiredFlights[T any] struct {
	tokens  [retireCount]string
	flights [retireCount]*flight[T]
	next    int
}

// retire ends the tasks' attempts: their tokens move from the live ones to
// the ring of ended ones.
func (c *Cache[T]) retire(tasks []leaseTask[T]) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := &c.retired
	for _, t := range tasks {
		delete(c.leases, t.token)
		if variantOn(c.hooks, vForgetEnded) {
			continue
		}
		r.tokens[r.next], r.flights[r.next] = t.token, t.f
		r.next = (r.next + 1) % retireCount
	}
}

// flightOf returns the attempt of this process that holds (or held, see
// retireCount) the lease token, or nil when it is another process's.
func (c *Cache[T]) flightOf(token string) *flight[T] {
	if token == "" {
		return nil // the ring's empty slots
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.leases[token]; f != nil {
		return f
	}
	for i, t := range c.retired.tokens {
		if t == token {
			return c.retired.flights[i]
		}
	}
	return nil
}
