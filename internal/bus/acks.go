package bus

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// What an invalidation waits for under strict L1 coherence: it publishes
// and reads the lease registry in one script, then waits until every
// listed Store has acknowledged or passed its lease (see [bus]).

// waitStats counts what invalidations waited for; see [Bus.Stats].
type waitStats struct {
	waits, acksAwaited, silent, nanos atomic.Uint64
	beats, ackMsgs                    atomic.Uint64
}

// tellScript publishes invalidations and lists, in the same atomic step,
// the Stores whose L1 leases were live then (or within the margin): those
// are the Stores that may hold a value older than the invalidations. It
// returns the server's time (ms) followed by member, lease end pairs.
var tellScript = redis.NewScript(`
local cmd = ARGV[1] == '1' and 'SPUBLISH' or 'PUBLISH'
for i = 4, #ARGV do redis.call(cmd, ARGV[2], ARGV[i]) end
if not KEYS[1] then return {} end -- only the broken variant of the tests sends no key
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[3]), '+inf', 'WITHSCORES')
table.insert(live, 1, tostring(now))
return live`)

// tellArgs are the tell script's arguments for msgs, which already carry
// their sequence number.
func (b *Bus) tellArgs(msgs []Message) []any {
	args := []any{b.flag(b.sharded), b.channel, leaseMargin.Milliseconds()}
	for _, m := range msgs {
		for _, payload := range b.encode(m) {
			args = append(args, payload)
		}
	}
	return args
}

// WriteAndTell runs writes and publishes msgs under octx (an op context),
// and applies msgs to this Store's own L1 (read-your-writes) whether or not
// Redis answered. The publish travels in the writes' pipeline when one
// server runs it in order, and after them otherwise. It returns what the
// caller must then wait for (see [AckWait.Wait]) before it returns.
func (b *Bus) WriteAndTell(octx context.Context, writes func(p redis.Pipeliner), msgs ...Message) (*AckWait, error) {
	seq := b.seq.Add(1)
	msgs[len(msgs)-1].Seq, msgs[len(msgs)-1].Ack = seq, true // heard in order: the last acknowledges all
	args, keys := b.tellArgs(msgs), []string{b.registry}
	if b.variant(KeylessPublish) {
		keys = nil // the broken variant: routed as go-redis routes a command without a key
	}
	w := b.expect(seq)
	var tell *redis.Cmd
	_, err := b.cfg.Client.Pipelined(octx, func(p redis.Pipeliner) error {
		writes(p)
		if b.ordered {
			tell = tellScript.EvalSha(octx, p, keys, args...)
		}
		return nil
	})
	// After the writes: a read of this Store that noted the generations
	// before this point and read the old value cannot keep it in L1.
	for _, m := range msgs {
		b.Apply(m)
	}
	if err == nil || isNoScript(err) && tell != nil && isNoScript(tell.Err()) {
		// Alone when the pipeline could not carry it: unordered, or the
		// script not yet loaded on that server (Run loads it).
		if tell == nil || tell.Err() != nil {
			tell = tellScript.Run(octx, b.cfg.Client, keys, args...)
		}
		err = tell.Err()
	}
	if err != nil {
		b.forget(w)
		return nil, err
	}
	w.members(tell.Val(), time.Now())
	if len(w.want) > 0 && !b.listening.Load() {
		// The first invalidation that has someone to wait for: listen for
		// acknowledgements and, once listening, tell again so that they
		// can reach us. Until then the leases bound the wait.
		if b.listen(octx); b.listening.Load() {
			b.forget(w)
			return b.WriteAndTell(octx, func(redis.Pipeliner) {}, msgs...)
		}
	}
	return w, nil
}

func isNoScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }

// AckWait is one invalidation's wait for the Stores listed by its tell
// script: each acknowledges it, or passes the end of its lease.
type AckWait struct {
	b    *Bus
	seq  uint64
	mu   sync.Mutex           // protects got and want
	got  map[string]bool      // acknowledged, possibly before the list was known
	want map[string]time.Time // listed Stores and when their lease ends at the latest, on this clock
	wake chan struct{}
}

func (b *Bus) expect(seq uint64) *AckWait {
	w := &AckWait{b: b, seq: seq, got: map[string]bool{}, wake: make(chan struct{}, 1)}
	b.mu.Lock()
	b.waits[seq] = w
	b.mu.Unlock()
	return w
}

func (b *Bus) forget(w *AckWait) {
	b.mu.Lock()
	delete(b.waits, w.seq)
	b.mu.Unlock()
}

// members records the Stores of a tell script's reply. A Store's lease
// ends, in real time, before its registry score plus the margin: it began
// when the Store sent a heartbeat, before the server scored it.
func (w *AckWait) members(reply any, received time.Time) {
	r, _ := reply.([]any)
	if len(r) == 0 {
		return
	}
	str := func(v any) string { s, _ := v.(string); return s }
	now, _ := strconv.ParseInt(str(r[0]), 10, 64)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.want = map[string]time.Time{}
	for i := 1; i+1 < len(r); i += 2 {
		id := str(r[i])
		score, err := strconv.ParseFloat(str(r[i+1]), 64)
		if strings.HasPrefix(id, w.b.origin+".") || id == "" || err != nil {
			continue
		}
		left := min(time.Duration(int64(score)-now)*time.Millisecond, MaxLease)
		w.want[id] = received.Add(left + leaseMargin)
	}
}

// acked records acknowledgements from Store from: of seqs, or of every
// invalidation in progress when seqs is nil (from reset: it serves nothing
// it held before).
func (b *Bus) acked(from string, seqs []uint64) {
	b.mu.Lock()
	var ws []*AckWait
	if seqs == nil {
		for _, w := range b.waits {
			ws = append(ws, w)
		}
	}
	for _, seq := range seqs {
		if w := b.waits[seq]; w != nil {
			ws = append(ws, w)
		}
	}
	b.mu.Unlock()
	for _, w := range ws {
		w.mu.Lock()
		w.got[from] = true
		w.mu.Unlock()
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// Wait returns once every listed Store has acknowledged or passed its
// lease, or with ctx's error. A nil w waits for nothing.
func (w *AckWait) Wait(ctx context.Context) error {
	if w == nil {
		return nil
	}
	b := w.b
	defer b.forget(w)
	if len(w.want) == 0 || b.variant(NoAckWait) {
		return nil
	}
	start := time.Now()
	b.waitStats.waits.Add(1)
	b.waitStats.acksAwaited.Add(uint64(len(w.want)))
	defer func() { b.waitStats.nanos.Add(uint64(time.Since(start))) }()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		w.mu.Lock()
		var next time.Time
		now := time.Now()
		for id, until := range w.want {
			switch {
			case w.got[id]:
				delete(w.want, id)
			case !now.Before(until):
				delete(w.want, id) // silent: its lease has ended, it serves nothing old
				b.waitStats.silent.Add(1)
			case next.IsZero() || until.Before(next):
				next = until
			}
		}
		w.mu.Unlock()
		if next.IsZero() {
			return nil
		}
		if timer == nil {
			timer = time.NewTimer(time.Until(next))
		} else {
			timer.Reset(time.Until(next))
		}
		select {
		case <-w.wake:
		case <-timer.C:
		case <-ctx.Done():
			return fmt.Errorf("waiting for other Stores' L1 to acknowledge: %w", context.Cause(ctx))
		}
	}
}

// ackRoute is where acknowledgements go (a Store's origin) and whom they
// are from (this Store's member name when it applied them).
type ackRoute struct{ to, from string }

// queueAck schedules an acknowledgement of invalidation seq to Store to.
func (b *Bus) queueAck(to string, seq uint64) {
	r := ackRoute{to: to, from: b.member()} // the incarnation that applied it
	b.ackMu.Lock()
	b.ackOut[r] = append(b.ackOut[r], seq)
	b.ackMu.Unlock()
	select {
	case b.ackWake <- struct{}{}:
	default:
	}
}

// sendAcks publishes queued acknowledgements, one message per Store and
// round trip: those that arrive while one round trip is in flight go
// together in the next, so acknowledgements do not grow with the rate of
// invalidations faster than round trips allow.
func (b *Bus) sendAcks(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.ackWake:
		}
		b.ackMu.Lock()
		out := b.ackOut
		b.ackOut = map[ackRoute][]uint64{}
		b.ackMu.Unlock()
		b.waitStats.ackMsgs.Add(uint64(len(out)))
		octx, cancel := b.cfg.OpContext(ctx)
		_, _ = b.cfg.Client.Pipelined(octx, func(p redis.Pipeliner) error {
			for r, seqs := range out {
				b.publish(octx, p, b.channel+":"+r.to, Message{Kind: kindAck, Seqs: seqs, From: r.from})
			}
			return nil
		})
		cancel()
		// A lost acknowledgement costs its invalidation a wait until our
		// lease ends; the lease, not the acknowledgement, is what is safe.
	}
}
