package aside

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// BatchLoader fetches the values of keys from the source of truth after
// misses, in one call. A key absent from the returned map does not exist:
// it is treated as [ErrNotFound] (negatively cached under the profile's
// NegativeTTL). An error fails every key of the call.
type BatchLoader[T any] func(ctx context.Context, keys []string) (map[string]T, error)

// BatchError reports the keys of a [Cache.GetMany] that failed, with why.
// The other keys' values are returned beside it.
type BatchError struct {
	Errs map[string]error
}

// Error names how many keys failed and the first failure, by key order.
func (e *BatchError) Error() string {
	keys := make([]string, 0, len(e.Errs))
	for k := range e.Errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	first := e.Errs[keys[0]]
	return fmt.Sprintf("aside: %d of the keys failed, the first: %v", len(keys), first)
}

// Unwrap returns the per-key errors, so errors.Is finds a loader's error.
func (e *BatchError) Unwrap() []error {
	errs := make([]error, 0, len(e.Errs))
	for _, err := range e.Errs {
		errs = append(errs, err)
	}
	return errs
}

// maxWaiters bounds the goroutines one GetMany uses to wait for keys that
// other callers are loading.
const maxWaiters = 16

// GetMany returns the values of keys: from L1, then from Redis in one
// pipelined read (one round trip per node), and for the misses from one call
// of load with exactly the keys this call holds leases on. Keys that other
// callers — concurrent Gets, other batches, other processes — are loading
// are awaited, not loaded twice. Fills are compare-and-sets, as in
// [Cache.Get]; tags apply to every key.
//
// Keys that do not exist are absent from the map. Keys that failed are
// absent too and reported in a *[BatchError]; the others are still
// returned. Like Get, GetMany fails open when Redis fails.
func (c *Cache[T]) GetMany(ctx context.Context, keys []string, load BatchLoader[T], opts ...CallOption) (map[string]T, error) {
	if load == nil {
		return nil, errNilLoader
	}
	o, err := collectCallOptions(opts)
	if err != nil {
		return nil, err
	}
	b := &batch[T]{c: c, load: load, tags: o.tags, out: make(map[string]T, len(keys)), errs: map[string]error{}}
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if k == "" {
			return nil, errEmptyKey
		}
		if seen[k] {
			continue
		}
		seen[k] = true
		if c.l1 != nil {
			if v, ok := c.l1.get(k); ok {
				c.stats.l1Hits.Add(1)
				b.out[k] = v
				continue
			}
		}
		b.calls = append(b.calls, b.newCall(k))
	}
	if len(b.calls) > 0 {
		b.run(ctx)
	}
	if len(b.errs) > 0 {
		return b.out, &BatchError{Errs: b.errs}
	}
	return b.out, nil
}

// batch is the state of one GetMany.
type batch[T any] struct {
	c     *Cache[T]
	load  BatchLoader[T]
	tags  []string
	calls []*batchCall[T]

	mu   sync.Mutex
	out  map[string]T
	errs map[string]error
}

type batchCall[T any] struct {
	key  string
	cl   *call[T]
	note l1Note
	bad  []byte // undecodable or invalidated bytes, for the lease script
}

func (b *batch[T]) newCall(key string) *batchCall[T] {
	c := b.c
	bc := &batchCall[T]{key: key}
	if c.l1 != nil {
		bc.note = c.l1.note(key, b.tags)
	}
	bc.cl = &call[T]{rk: c.keys.entry(key), load: b.single(key), tags: b.tags}
	return bc
}

// single adapts the batch loader to one key, for refreshes and for keys
// that end up waiting on the single-key path.
func (b *batch[T]) single(key string) Loader[T] {
	return func(ctx context.Context) (T, error) {
		m, err := b.load(ctx, []string{key})
		if err != nil {
			var zero T
			return zero, err
		}
		v, ok := m[key]
		if !ok {
			return v, ErrNotFound
		}
		return v, nil
	}
}

func (b *batch[T]) done(bc *batchCall[T], v T, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case err == nil:
		b.out[bc.key] = v
		if bc.cl.l1OK && b.c.l1 != nil {
			b.c.l1.set(bc.key, v, bc.note, bc.cl.freshUntil)
		}
	case errors.Is(err, ErrNotFound):
	default:
		b.errs[bc.key] = err
	}
}

func (b *batch[T]) run(ctx context.Context) {
	c := b.c
	if !c.store.breaker.allow() || !c.store.drained(ctx) {
		c.stats.skipped.Add(uint64(len(b.calls)))
		b.loadWithoutRedis(ctx, b.calls)
		return
	}
	// 1. One pipelined read of every entry (and the tags' tokens).
	raws, snap, err := b.readAll(ctx)
	if err != nil {
		if ctx.Err() != nil {
			b.failAll(b.calls, ctx.Err())
			return
		}
		b.loadWithoutRedis(ctx, b.calls)
		return
	}
	var misses []*batchCall[T]
	for i, bc := range b.calls {
		bc.cl.snap = snap
		if raws[i] == nil {
			misses = append(misses, bc)
			continue
		}
		if v, err, ok := c.serve(ctx, bc.cl, raws[i]); ok {
			b.done(bc, v, err)
			continue
		}
		bc.bad = raws[i]
		misses = append(misses, bc)
	}
	if len(misses) == 0 {
		return
	}
	// 2. Leases for the misses, in one pipeline.
	leased, waiting, err := b.acquireAll(ctx, misses)
	if err != nil { // Redis went away between the two round trips
		b.loadWithoutRedis(ctx, misses)
		return
	}
	// 3. One loader call for the keys this batch leased; others wait.
	var wg sync.WaitGroup
	if len(leased) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.loadLeased(ctx, leased)
		}()
	}
	sem := make(chan struct{}, maxWaiters)
	for _, bc := range waiting {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			bc.cl.deadline = time.Now().Add(c.profile.waitBudget())
			v, err := c.get(ctx, bc.cl) // the single-key path: join, poll, or lease
			b.done(bc, v, err)
		}()
	}
	wg.Wait()
}

func (b *batch[T]) failAll(calls []*batchCall[T], err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, bc := range calls {
		b.errs[bc.key] = err
	}
}

func (b *batch[T]) readAll(ctx context.Context) ([][]byte, tagSnap, error) {
	c := b.c
	octx, cancel := c.store.opContext(ctx)
	defer cancel()
	hgets := make([]*redis.StringCmd, len(b.calls))
	gets := make([]*redis.StringCmd, len(b.tags))
	_, _ = c.store.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		for i, bc := range b.calls {
			hgets[i] = p.HGet(octx, bc.cl.rk, fieldValue)
		}
		for i, t := range b.tags {
			gets[i] = p.Get(octx, tagKey(c.store.prefix, t))
		}
		return nil
	})
	snap := tagSnap{names: b.tags, tokens: make([]string, len(b.tags))}
	for i, g := range gets {
		if err := g.Err(); err != nil && !errors.Is(err, redis.Nil) {
			c.record(ctx, err)
			return nil, snap, err
		}
		snap.tokens[i] = g.Val()
	}
	raws := make([][]byte, len(b.calls))
	for i, g := range hgets {
		bs, err := g.Bytes()
		switch {
		case errors.Is(err, redis.Nil):
			c.stats.misses.Add(1)
		case err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE"):
			c.decodeFailed(fmt.Errorf("%w: key holds another Redis type", errCorrupt))
		case err != nil:
			c.record(ctx, err)
			return nil, snap, err
		default:
			raws[i] = bs
		}
	}
	c.store.breaker.record(nil)
	return raws, snap, nil
}

// acquireAll runs the lease script for every miss in one pipeline. Keys
// that turn out filled meanwhile are served at once.
func (b *batch[T]) acquireAll(ctx context.Context, misses []*batchCall[T]) (leased map[string]*leasedKey[T], waiting []*batchCall[T], err error) {
	c := b.c
	leased = map[string]*leasedKey[T]{}
	tokens := make([]string, len(misses))
	flights := make([]*flight[T], len(misses))
	c.mu.Lock()
	for i := range misses {
		tokens[i], flights[i] = newToken(), &flight[T]{done: make(chan struct{})}
		c.leases[tokens[i]] = flights[i]
	}
	c.mu.Unlock()
	octx, cancel := c.store.opContext(ctx)
	cmds := make([]*redis.Cmd, len(misses))
	_, err = c.store.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		for i, bc := range misses {
			flag, bad := "0", ""
			if bc.bad != nil {
				flag, bad = "1", string(bc.bad)
			}
			cmds[i] = acquireScript.Eval(octx, p, []string{bc.cl.rk}, tokens[i], c.leaseTTL().Milliseconds(), flag, bad)
		}
		return nil
	})
	cancel()
	c.record(ctx, err)
	if err != nil && isOutage(err) {
		c.mu.Lock()
		for _, t := range tokens {
			delete(c.leases, t)
		}
		c.mu.Unlock()
		return nil, nil, err
	}
	err = nil // a script error reply for one key: the single-key path sorts it out
	var unleased []string
	for i, bc := range misses {
		res, cerr := cmds[i].Slice()
		kind, payload := parseReply(res, cerr)
		if kind != replyLease {
			unleased = append(unleased, tokens[i])
		}
		switch {
		case kind == replyLease:
			leased[bc.key] = &leasedKey[T]{bc: bc, token: tokens[i], f: flights[i]}
		case kind == replyHit:
			if v, err, ok := c.serve(ctx, bc.cl, []byte(payload)); ok {
				b.done(bc, v, err)
				continue
			}
			waiting = append(waiting, bc)
		default: // WAIT, or the script failed: the single-key path sorts it out
			waiting = append(waiting, bc)
		}
	}
	c.mu.Lock()
	for _, t := range unleased {
		delete(c.leases, t)
	}
	c.mu.Unlock()
	return leased, waiting, nil
}

type leasedKey[T any] struct {
	bc    *batchCall[T]
	token string
	f     *flight[T]
}

// loadLeased calls the batch loader once for every key this batch holds a
// lease on, then fills them with compare-and-sets in one pipeline. It runs
// detached from the caller's cancellation, like a single-key load, and
// completes the flights that concurrent Gets of these keys have joined.
func (b *batch[T]) loadLeased(ctx context.Context, leased map[string]*leasedKey[T]) {
	c := b.c
	ctx = context.WithoutCancel(ctx)
	keys := make([]string, 0, len(leased))
	for k := range leased {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	defer func() {
		c.mu.Lock()
		for _, lk := range leased {
			delete(c.leases, lk.token)
		}
		c.mu.Unlock()
		for _, lk := range leased {
			close(lk.f.done)
		}
	}()
	recorded, tokErr := c.store.ensureTokens(ctx, b.tags)
	start := c.store.now()
	values, err := c.timedBatchLoad(ctx, b.load, keys)
	took := c.store.now().Sub(start)
	if err != nil {
		for _, lk := range leased {
			lk.f.err = err
			b.done(lk.bc, lk.f.v, err)
			c.release(ctx, lk.bc.cl.rk, lk.token)
		}
		return
	}
	fresh := c.profile.freshFor()
	type fill struct {
		lk  *leasedKey[T]
		b   []byte
		ttl time.Duration
	}
	var fills []fill
	for _, k := range keys {
		lk := leased[k]
		v, found := values[k]
		lk.f.v, lk.f.tags = v, recorded
		if !found {
			lk.f.err = ErrNotFound
			if c.profile.NegativeTTL > 0 && tokErr == nil {
				fills = append(fills, fill{lk, c.negativeEntry(start, recorded), c.profile.NegativeTTL})
			}
			continue
		}
		if tokErr != nil {
			continue // loaded, but without tokens it cannot be stored safely
		}
		if enc, ok := c.encodeForFill(v, start, fresh, took, recorded); ok {
			fills = append(fills, fill{lk, enc, fresh + c.profile.StaleWindow})
		}
	}
	if len(fills) > 0 && c.store.breaker.allow() {
		octx, cancel := c.store.opContext(ctx)
		cmds := make([]*redis.Cmd, len(fills))
		_, ferr := c.store.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
			for i, f := range fills {
				cmds[i] = fillScript.Eval(octx, p, []string{f.lk.bc.cl.rk}, f.lk.token, f.b, f.ttl.Milliseconds())
			}
			return nil
		})
		cancel()
		c.record(ctx, ferr)
		for i, f := range fills {
			if n, err := cmds[i].Int(); err == nil && n == 1 {
				f.lk.f.filled = true
				c.stats.bytesWritten.Add(uint64(len(f.b)))
			} else if err == nil {
				c.stats.fillsRefused.Add(1)
			}
		}
	}
	for _, k := range keys {
		lk := leased[k]
		if lk.f.filled && lk.f.err == nil {
			lk.f.freshUntil = start.Add(fresh)
			lk.bc.cl.l1OK, lk.bc.cl.freshUntil = true, lk.f.freshUntil
		}
		if !lk.f.filled {
			c.release(ctx, lk.bc.cl.rk, lk.token)
		}
		b.done(lk.bc, lk.f.v, lk.f.err)
	}
}

// timedBatchLoad calls the batch loader once, as timedLoad does a loader.
func (c *Cache[T]) timedBatchLoad(ctx context.Context, load BatchLoader[T], keys []string) (map[string]T, error) {
	return timed(ctx, c, func(ctx context.Context) (map[string]T, error) { return load(ctx, keys) })
}

// loadWithoutRedis serves keys while Redis cannot be used: one loader call,
// nothing written.
func (b *batch[T]) loadWithoutRedis(ctx context.Context, calls []*batchCall[T]) {
	keys := make([]string, len(calls))
	for i, bc := range calls {
		keys[i] = bc.key
	}
	values, err := b.c.timedBatchLoad(context.WithoutCancel(ctx), b.load, keys)
	for _, bc := range calls {
		if err != nil {
			b.done(bc, values[bc.key], err)
			continue
		}
		v, ok := values[bc.key]
		if !ok {
			b.done(bc, v, ErrNotFound)
			continue
		}
		b.done(bc, v, nil)
	}
}
