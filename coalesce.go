package aside

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Concurrent reads share round trips. A read (a Get's GET, a GetMany's or a
// tagged Get's MGET) goes out on its own when no other read of the Store is
// on the wire, alone or in a batch: one goroutine's hits cost one GET each,
// as without coalescing. A read that arrives while one is on the wire joins
// the pending batch instead, which goes out as one MGET (a pipeline of GETs
// where keys live on several servers) without waiting for the reads already
// on the wire: sent by the reader that makes it batchReaders strong, or
// else, by a goroutine of its own once the goroutines ready to run have had
// their turn (one yield). Where the client's CPU is the bottleneck — many
// goroutines, few cores — a hit then costs a fraction of a round trip's
// system calls; where the network is, readers do not wait for one another
// long enough to matter (bench/RESULTS.md has the figures, both ways).
//
// Every key of a batch is read after its caller arrived: a caller never
// takes the answer to a read issued before it came, which could predate an
// invalidation that returned before it (T21). A batch runs on an op context
// of the Store's: one caller's cancellation never fails the others' reads.
// A reader that is not sending the batch stops waiting when its context
// ends; the reader that sends it is bounded by the op timeout, as a read
// sent alone is.
//
// Counting the batches on the wire too was measured (BenchmarkParallelHit,
// 16 goroutines, 10 interleaved runs): counting only the reads sent alone
// let a read go alone beside batches in flight — a round trip for one hit —
// and cost 8 % of the time per hit, on one node and on a Cluster alike. The batch's own goroutine
// costs a start and a wake-up per batch (5–10 % on a Cluster), and is kept:
// with the first reader sending its batch, that reader could no longer
// stop waiting when its context ends.

// batchReaders is the most readers a batch waits for. Measured with 16
// goroutines over 64 keys on 2 cores: 2 gains little, 8 and more make the
// first readers of a batch wait for the others long enough to lose
// throughput over a slow link.
const batchReaders = 4

// coalescer holds a Store's reads on the wire and the batch forming.
type coalescer struct {
	onWire atomic.Int32 // reads and batches sent and not yet answered

	mu sync.Mutex // protects pending and sent
	// pending: the reads waiting to be sent together, by node — on a
	// Cluster, the master of their keys (on a Ring, their shard), so that a
	// batch waits for one server and a stalled master delays no read of
	// another's keys; "" elsewhere, and for reads whose keys span nodes.
	pending map[string]*readBatch
	sent    *readBatch // the last batch sent, until answered: only for the broken variant
}

// readBatch is a group of reads sent together.
type readBatch struct {
	node    string // its key in coalescer.pending
	keys    []string
	readers int
	first   context.Context // its first reader's: the broken variant sends it on that
	vals    []string
	errs    []error       // per key: nil, redis.Nil (missing) or the read's error
	done    chan struct{} // closed when vals and errs are set
}

// reply is what a read of keys brought: per key, the value or an error
// (redis.Nil when missing), and the context it ran on, for record.
type reply struct {
	vals []string
	errs []error
	octx context.Context
}

// readEntry reads one entry key: the hit path of a lone untagged Get,
// which sent alone costs one GET and nothing else.
func (s *Store) readEntry(ctx context.Context, rk string) (v string, octx context.Context, err error) {
	if s.sendAlone() {
		defer s.reads.onWire.Add(-1)
		octx, cancel := s.opContext(ctx)
		defer cancel()
		v, err = s.rdb.Get(octx, rk).Result()
		if s.nodes != nil {
			s.recordNodes(octx, []string{rk}, func(int) error { return err })
		}
		return v, octx, err
	}
	r := s.joinBatch(ctx, rk)
	if r.errs == nil { // the caller gave up
		return "", r.octx, r.octx.Err()
	}
	return r.vals[0], r.octx, r.errs[0]
}

// readKeys reads keys in one round trip, its own or a batch's.
func (s *Store) readKeys(ctx context.Context, keys []string) reply {
	if s.sendAlone() {
		defer s.reads.onWire.Add(-1)
		octx, cancel := s.opContext(ctx)
		defer cancel()
		r := reply{vals: make([]string, len(keys)), errs: make([]error, len(keys)), octx: octx}
		s.fetch(octx, keys, r.vals, r.errs)
		return r
	}
	r := s.joinBatch(ctx, keys...)
	if r.errs == nil { // the caller gave up: every key fails with its context's error
		r.vals, r.errs = make([]string, len(keys)), make([]error, len(keys))
		for i := range r.errs {
			r.errs[i] = r.octx.Err()
		}
	}
	return r
}

// sendAlone reports whether a read may go out on its own: no other read is
// on the wire. The caller then takes reads.onWire back down once answered.
func (s *Store) sendAlone() bool {
	if s.reads.onWire.Add(1) == 1 && !variantOn(s.hooks, vBatchEveryRead) {
		return true
	}
	s.reads.onWire.Add(-1)
	return false
}

// joinBatch adds keys to the pending batch, starting one if none is
// pending, and returns their answers (errs nil: ctx ended first).
func (s *Store) joinBatch(ctx context.Context, keys ...string) reply {
	node := s.nodeOf(ctx, keys) // before the lock: it may load the Cluster's slot table
	co := &s.reads
	co.mu.Lock()
	if b := co.sent; b != nil && variantOn(s.hooks, vJoinSentBatch) {
		if r, ok := b.share(ctx, keys, co); ok {
			return r
		}
	}
	b := co.pending[node]
	first := b == nil
	if first {
		b = &readBatch{node: node, first: ctx, done: make(chan struct{})}
		if co.pending == nil {
			co.pending = map[string]*readBatch{}
		}
		co.pending[node] = b
	}
	i := len(b.keys)
	b.keys = append(b.keys, keys...)
	b.readers++
	full := b.readers == batchReaders
	if full {
		delete(co.pending, node) // no one joins b from here on
	}
	co.mu.Unlock()
	switch {
	case full:
		s.sendBatch(b)
	case first:
		send := func() { s.sendWhenReady(b) }
		if !s.goTracked(send) {
			go send() // the Store is closed: reads still work
		}
	}
	return b.wait(ctx, i, len(keys))
}

// nodeOf returns the batch a read of keys joins: on a Cluster, the address
// of their keys' master (its slot table is in memory: no round trip), on a
// Ring their shard's (its hash ring is), or "" when they span nodes; "" on
// any other client.
func (s *Store) nodeOf(ctx context.Context, keys []string) string {
	var nodeFor func(key string) (*redis.Client, error)
	switch c := s.rdb.(type) {
	case *redis.ClusterClient:
		nodeFor = func(key string) (*redis.Client, error) { return c.MasterForKey(ctx, key) }
	case *redis.Ring:
		nodeFor = c.GetShardClientForKey
	}
	if nodeFor == nil || variantOn(s.hooks, vOneBatch) {
		return ""
	}
	node := ""
	for i, k := range keys {
		m, err := nodeFor(k)
		if err != nil {
			return ""
		}
		if addr := m.Options().Addr; i == 0 {
			node = addr
		} else if addr != node {
			return ""
		}
	}
	return node
}

// sendWhenReady sends b once the goroutines ready to run have had their
// turn to join it — unless one of them filled it and sent it.
func (s *Store) sendWhenReady(b *readBatch) {
	runtime.Gosched()
	reach(s.hooks, pBeforeBatchClaim, "")
	co := &s.reads
	co.mu.Lock()
	mine := co.pending[b.node] == b
	if mine {
		delete(co.pending, b.node)
	}
	co.mu.Unlock()
	if mine {
		s.sendBatch(b)
	}
}

// sendBatch reads b's keys in one round trip and hands out the answers.
func (s *Store) sendBatch(b *readBatch) {
	co := &s.reads
	broken := variantOn(s.hooks, vJoinSentBatch) // only its joins look at the batch sent
	if broken {
		co.mu.Lock()
		co.sent = b
		co.mu.Unlock()
	}
	keys, at := distinct(b.keys)
	vals, errs := make([]string, len(keys)), make([]error, len(keys))
	octx, cancel := s.detachedOpContext(context.Background())
	if variantOn(s.hooks, vBatchOnCaller) {
		octx, cancel = s.opContext(b.first)
	}
	co.onWire.Add(1)
	s.fetch(octx, keys, vals, errs)
	co.onWire.Add(-1)
	cancel()
	b.vals, b.errs = vals, errs
	if at != nil {
		b.vals, b.errs = make([]string, len(b.keys)), make([]error, len(b.keys))
		for i, j := range at {
			b.vals[i], b.errs[i] = vals[j], errs[j]
		}
	}
	afterBatchRead(s.hooks, keys)
	if broken {
		co.mu.Lock()
		if co.sent == b {
			co.sent = nil
		}
		co.mu.Unlock()
	}
	close(b.done)
}

// distinct returns a batch's keys without repeats — readers of one key,
// tagged reads naming the same tags: each is read once — and, when some
// repeat, where each of keys is among them (nil when none does: keys
// itself is returned, and nothing is allocated for a batch of a few).
func distinct(keys []string) ([]string, []int) {
	if !repeats(keys) {
		return keys, nil
	}
	first := make(map[string]int, len(keys)) // a key's index among the distinct
	uniq, at := make([]string, 0, len(keys)), make([]int, len(keys))
	for i, k := range keys {
		j, seen := first[k]
		if !seen {
			j = len(uniq)
			first[k] = j
			uniq = append(uniq, k)
		}
		at[i] = j
	}
	return uniq, at
}

// repeats reports whether a key occurs twice in keys: searched among a
// few, mapped beyond (a search per key costs more than a map from there).
func repeats(keys []string) bool {
	if len(keys) <= 16 {
		for i, k := range keys {
			if slices.Contains(keys[:i], k) {
				return true
			}
		}
		return false
	}
	seen := make(map[string]struct{}, len(keys))
	for _, k := range keys {
		if _, ok := seen[k]; ok {
			return true
		}
		seen[k] = struct{}{}
	}
	return false
}

// wait returns the answers to the batch's n reads from the i-th, or the
// caller's context if it gives up first.
func (b *readBatch) wait(ctx context.Context, i, n int) reply {
	select {
	case <-b.done:
		// Not the caller's context: a batch's failure is never the caller's doing.
		return reply{vals: b.vals[i : i+n : i+n], errs: b.errs[i : i+n : i+n], octx: context.Background()}
	case <-ctx.Done():
		return reply{octx: ctx}
	}
}

// share is the broken variant's join: when the batch already sent reads
// every one of keys, the caller takes its answers. It unlocks co then.
func (b *readBatch) share(ctx context.Context, keys []string, co *coalescer) (reply, bool) {
	at := make([]int, len(keys))
	for j, k := range keys {
		if at[j] = slices.Index(b.keys, k); at[j] < 0 {
			return reply{}, false
		}
	}
	co.mu.Unlock()
	r := b.wait(ctx, 0, len(b.keys))
	if r.errs == nil {
		return r, true
	}
	out := reply{vals: make([]string, len(keys)), errs: make([]error, len(keys)), octx: r.octx}
	for j, i := range at {
		out.vals[j], out.errs[j] = r.vals[i], r.errs[i]
	}
	return out, true
}

// fetch reads keys in one round trip: a GET for one key, an MGET where one
// server holds every key, else (a Cluster, a Ring) a pipeline of GETs. MGET
// answers nil for a key of another Redis type as for a missing one: an
// entry's is then a miss (the lease script deletes it), a tag's an absent
// token.
func (s *Store) fetch(octx context.Context, keys []string, vals []string, errs []error) {
	if s.nodes != nil {
		defer s.recordNodes(octx, keys, func(i int) error { return errs[i] })
	}
	switch {
	case len(keys) == 1:
		vals[0], errs[0] = s.rdb.Get(octx, keys[0]).Result()
	case s.multiKey:
		res, err := s.rdb.MGet(octx, keys...).Result()
		if err == nil && len(res) != len(keys) {
			err = fmt.Errorf("aside: MGET of %d keys answered %d values", len(keys), len(res))
		}
		for i := range keys {
			if err != nil {
				errs[i] = err
			} else if v, ok := res[i].(string); ok {
				vals[i] = v
			} else {
				errs[i] = redis.Nil
			}
		}
	default:
		p := s.rdb.Pipeline()
		cmds := make([]*redis.StringCmd, len(keys))
		for i, k := range keys {
			cmds[i] = p.Get(octx, k)
		}
		_, _ = p.Exec(octx)
		for i, c := range cmds {
			vals[i], errs[i] = c.Result()
		}
	}
}
