package aside

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

// bus carries invalidations between Stores over Redis pub/sub. Every Store
// publishes; a Store subscribes once its first cache with L1 is created, or
// once an invalidation of its has to wait for another Store's L1.
//
// A Store trusts its subscription only while it hears its own heartbeats:
// every beatEvery it publishes one on its own channel through the client's
// normal routing — the way invalidations travel, to the current master of
// the channels' shard — and expects it back. A heartbeat not heard back in
// time, or one that reached nobody, means invalidations may not be arriving
// either: the connection is stalled, the subscription sits on a node that
// stopped being master (a Sentinel failover moves pooled connections, not
// PubSub ones), or publishes land on another shard than the subscription (a
// Ring). Any such doubt, and any resubscription, resets the Store: L1 is
// bypassed and logically cleared until a heartbeat sent after the reset has
// been heard back.
//
// Strict coherence (the default) adds leases, after Gray and Cheriton: a
// Store serves from L1 only until L (leaseFor) after sending the last
// heartbeat it heard back, and a heartbeat also records the Store in a
// registry scored by the server's clock. An invalidation publishes and reads
// the registry in one script, then waits until every Store listed has
// acknowledged it or has passed its lease. Why that suffices — the order
// argument — is in the README ("L1: strict coherence").
type bus struct {
	channel  string // invalidations, heard by every Store
	own      string // this Store's heartbeats and the acknowledgements it awaits
	registry string // the Stores holding an L1 lease, scored by lease end (server ms)
	origin   string // this Store's id: its own messages are not applied twice
	seed     maphash.Seed
	hooks    seams
	// ordered: one pipeline reaches one server, which runs it in order, so
	// a publish may travel with the writes it announces. On a Cluster or a
	// Ring a pipeline fans out to several nodes in parallel, so the publish
	// goes after the writes have been acknowledged: a Store that hears it
	// and re-reads must not find the old value still there.
	ordered bool
	// sharded: a Cluster, where only sharded pub/sub (SSUBSCRIBE, SPUBLISH)
	// stays on the node of the channels' slot, in order; plain PUBLISH is
	// relayed between nodes without order.
	sharded   bool
	strict    bool          // this Store's L1 serves only under a lease and is waited for
	leaseFor  time.Duration // L
	beatEvery time.Duration // L/4
	base      time.Time     // lease times are monotonic nanoseconds since base

	up          atomic.Bool   // subscribed and heard back: L1 may be filled
	lease       atomic.Int64  // L1 may serve while mono() < lease; 0: not at all
	epoch       atomic.Uint64 // bumped on every reset and recovery: L1 entries of older epochs are invalid
	tagEpoch    atomic.Uint64 // bumped before the tag generations by every tag invalidation
	tagGens     [genSlots]atomic.Uint64
	listening   atomic.Bool   // subscribed: acknowledgements can reach this Store
	withL1      atomic.Bool   // a cache of this Store has L1: heartbeats run
	seq         atomic.Uint64 // numbers this Store's invalidations that await acknowledgements
	incarnation atomic.Uint64 // bumped by every reset; see member
	received    atomic.Uint64 // foreign invalidations applied
	resets      atomic.Uint64 // times the stream was doubted
	beatMissed  atomic.Bool   // a heartbeat went unheard once; only the SubscribeVia test hook reads it
	waitStats   waitStats

	mu      sync.Mutex // protects tiers, started, cancel, ps, waits
	tiers   map[string][]localTier
	started bool
	cancel  context.CancelFunc
	ps      *redis.PubSub // closed by stop, to end a blocking read at once
	waits   map[uint64]*ackWait

	wakers sync.Map // Redis key → chan struct{}: the poller of a key this Store waits on

	ackMu   sync.Mutex            // protects ackOut
	ackOut  map[ackRoute][]uint64 // acknowledgements to send
	ackWake chan struct{}
}

// busMessage is one published invalidation — keys of one cache, tags, or a
// whole cache (Names empty) —, a heartbeat, or acknowledgements.
type busMessage struct {
	Origin string   `msgpack:"o"`
	Kind   byte     `msgpack:"k"`
	Cache  string   `msgpack:"c,omitempty"`
	Names  []string `msgpack:"n,omitempty"`
	Seq    uint64   `msgpack:"s,omitempty"`
	Ack    bool     `msgpack:"a,omitempty"` // the sender waits for an acknowledgement of Seq
	Seqs   []uint64 `msgpack:"q,omitempty"` // busAck: the invalidations acknowledged
	From   string   `msgpack:"f,omitempty"` // busAck: the acknowledging Store's member name (see [bus.member])
}

const (
	busKeys  = 'k'
	busTags  = 't'
	busCache = 'c'
	busBeat  = 'h'
	busAck   = 'a'
	busReset = 'r' // a Store dropped its L1 and left the registry: nobody need wait for it
	busFill  = 'f' // entries (Redis keys in Names) were filled or released while callers waited
	// busBatch bounds the names in one message, so that a mass invalidation
	// is a few messages rather than one huge one or a storm of small ones.
	busBatch = 512
	// defaultLease (L) is how long after sending a heartbeat it heard back a
	// strict Store may serve from L1; heartbeats go every L/4, so one lost or
	// slow heartbeat does not interrupt L1. It is also the longest an
	// invalidation waits for a Store that has stopped answering (a paused
	// process, a black-holed connection), plus leaseMargin; see the README
	// for the measurements behind 1 s. A Store whose stream broke is reset
	// within L/4 + 2 op timeouts.
	defaultLease = time.Second
	// leaseMargin covers what separates the clocks of the lease and of its
	// registry: millisecond rounding and rate differences.
	leaseMargin = 50 * time.Millisecond
	// minLease and maxLease bound WithL1Lease.
	minLease, maxLease = 100 * time.Millisecond, time.Minute

	whyNotHeard = "heartbeat not heard back"
)

func newBus(s *Store, relaxed bool, lease time.Duration) *bus {
	_, single := s.rdb.(*redis.Client)
	_, cluster := s.rdb.(*redis.ClusterClient)
	// One hash tag for the three names: one slot, one node, one order.
	channel := s.prefix + ":#bus{" + s.prefix + "}"
	origin := newToken()[:16]
	return &bus{channel: channel, own: channel + ":" + origin, registry: channel + ":leases", origin: origin,
		seed: maphash.MakeSeed(), ordered: single, sharded: cluster, strict: !relaxed, base: time.Now(),
		leaseFor: lease, beatEvery: lease / 4,
		tiers: map[string][]localTier{}, waits: map[uint64]*ackWait{}, ackOut: map[ackRoute][]uint64{},
		ackWake: make(chan struct{}, 1)}
}

// register adds a cache's L1 and starts the subscription on first use.
func (b *bus) register(s *Store, name string, t localTier) {
	b.mu.Lock()
	b.tiers[name] = append(b.tiers[name], t)
	b.mu.Unlock()
	b.withL1.Store(true)
	b.start(s)
}

// start runs the subscription (and the acknowledgements' sender) once.
func (b *bus) start(s *Store) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	if s.goTracked(func() { b.run(ctx, s) }) && s.goTracked(func() { b.sendAcks(ctx, s) }) {
		b.started, b.cancel = true, cancel
	} else {
		cancel()
	}
}

// listen starts the subscription if needed and waits, at most an op
// timeout, until it is in place: acknowledgements sent before would be lost.
func (b *bus) listen(ctx context.Context, s *Store) {
	b.start(s)
	deadline := time.Now().Add(s.opTimeout)
	for !b.listening.Load() && ctx.Err() == nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

func (b *bus) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cancel != nil {
		b.cancel()
	}
	if b.ps != nil {
		_ = b.ps.Close()
	}
}

// apply handles one invalidation: one heard on the channel, or one this
// Store made (before the call that made it returns: read-your-writes).
func (b *bus) apply(m busMessage) {
	if m.Kind == busTags {
		// tagEpoch first: an L1 fill that reads the generations and then
		// finds tagEpoch unchanged read them before this invalidation.
		b.tagEpoch.Add(1)
		for _, t := range m.Names {
			b.tagGens[b.tagSlot(t)].Add(1)
		}
		return
	}
	b.mu.Lock()
	tiers := b.tiers[m.Cache]
	b.mu.Unlock()
	for _, t := range tiers {
		if m.Kind == busCache {
			t.clear()
		} else {
			t.invalidate(m.Names)
		}
	}
}

func (b *bus) tagSlot(tag string) uint16 { return uint16(maphash.String(b.seed, tag) % genSlots) }

// publish adds the commands that publish m on channel to a pipeline. Each
// is routed by its channel, like the subscription: go-redis routes PUBLISH
// as a command without a key, which on a Ring lands on another shard than
// the one subscribed to.
func (b *bus) publish(ctx context.Context, p redis.Pipeliner, channel string, m busMessage) {
	for _, payload := range b.encode(m) {
		if b.sharded {
			p.SPublish(ctx, channel, payload)
			continue
		}
		cmd := p.Publish(ctx, channel, payload)
		if !variantOn(b.hooks, vKeylessPublish) {
			cmd.SetFirstKeyPos(1)
		}
	}
}

// encode returns m as one payload per busBatch names.
func (b *bus) encode(m busMessage) [][]byte {
	m.Origin = b.origin
	names := m.Names
	var out [][]byte
	for {
		m.Names = names[:min(len(names), busBatch)]
		payload, _ := msgpack.Marshal(&m) // strings, bytes and integers only: cannot fail
		out = append(out, payload)
		if names = names[len(m.Names):]; len(names) == 0 {
			return out
		}
	}
}

func (b *bus) flag(v bool) string {
	if v {
		return "1"
	}
	return "0"
}

func (b *bus) subscribe(ctx context.Context, s *Store) (ps *redis.PubSub, err error) {
	defer func() {
		if p := recover(); p != nil { // a Ring panics when no shard is up
			ps, err = nil, fmt.Errorf("aside: subscribe: %v", p)
		}
	}()
	rdb := s.rdb
	if via := subscribeVia(b.hooks); via != nil && !b.beatMissed.Load() {
		rdb = via
	}
	if c, ok := rdb.(*redis.ClusterClient); ok {
		ps = c.SSubscribe(ctx, b.channel, b.own)
	} else {
		ps = rdb.Subscribe(ctx, b.channel, b.own)
	}
	b.mu.Lock()
	b.ps = ps
	b.mu.Unlock()
	return ps, nil
}

// run keeps the subscription and applies what arrives; see [bus] for the
// heartbeats. The bus's own Redis calls do not feed the breaker: they run
// whether or not the application does.
func (b *bus) run(ctx context.Context, s *Store) {
	var (
		ps           *redis.PubSub
		registered   bool   // a heartbeat of this incarnation was sent: it may be in the registry
		seq, awaited uint64 // awaited: the heartbeat not yet heard back, 0 if none
		sentAt       time.Time
		backoff      = 10 * time.Millisecond
		limit        = b.beatEvery + 2*s.opTimeout
		// A heartbeat's receiver count is the node's: on a Cluster client
		// that reads from replicas, the subscription is not counted there.
		countable = !b.sharded
	)
	defer func() {
		if ps != nil {
			_ = ps.Close()
		}
		b.listening.Store(false)
		b.drop()
		if registered {
			b.leave(s, true)
		}
	}()
	reset := func(why string) {
		b.resets.Add(1)
		if why == whyNotHeard {
			b.beatMissed.Store(true)
		}
		if b.drop() {
			s.log(slog.LevelWarn, "aside: invalidation stream in doubt: L1 bypassed until it is back", "why", why)
		}
		if registered {
			b.leave(s, true)
			registered = false
		}
		b.listening.Store(false)
		if ps != nil {
			_ = ps.Close()
			ps = nil
		}
		awaited = 0
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
	for ctx.Err() == nil {
		if ps == nil {
			var err error
			if ps, err = b.subscribe(ctx, s); err != nil {
				reset(err.Error())
				continue
			}
		}
		switch {
		case !b.withL1.Load() || !b.listening.Load():
			// No L1 (this Store only awaits acknowledgements), or not
			// subscribed yet: nothing to beat for.
		case variantOn(b.hooks, vNoHeartbeat):
			awaited = 0 // the broken variant: trust the connection, as v1 did
		case awaited == 0 && time.Since(sentAt) >= b.beatEvery:
			seq++
			sent := time.Now()
			registered = registered || b.strict
			n, err := b.beat(s, seq)
			if err != nil {
				reset("heartbeat not sent: " + err.Error())
				continue
			}
			if n == 0 && countable {
				b.beatMissed.Store(true)
				reset("heartbeat reached no subscriber")
				continue
			}
			awaited, sentAt = seq, sent
		case awaited != 0 && time.Since(sentAt) > limit:
			reset(whyNotHeard)
			continue
		}
		msg, err := ps.ReceiveTimeout(ctx, b.beatEvery/2)
		if err != nil {
			var ne net.Error
			if ctx.Err() != nil || errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			reset("receive: " + err.Error())
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" && m.Kind != "ssubscribe" {
				if m.Kind == "sunsubscribe" || m.Kind == "unsubscribe" { // a slot moved, or the server dropped us
					reset("unsubscribed by the server")
				}
				continue
			}
			// (Re)subscribed: messages may have been lost before. Anything
			// cached earlier is dropped; a new heartbeat brings L1 back.
			b.drop()
			b.listening.Store(true)
			awaited, sentAt = 0, time.Time{}
			if variantOn(b.hooks, vNoHeartbeat) && b.withL1.Load() {
				b.heard(s, time.Now())
			}
		case *redis.Message:
			var bm busMessage
			if msgpack.Unmarshal([]byte(m.Payload), &bm) != nil {
				continue
			}
			switch {
			case bm.Kind == busAck:
				b.acked(bm.From, bm.Seqs)
			case bm.Kind == busReset && len(bm.Names) == 1:
				b.acked(bm.Names[0], nil)
			case bm.Kind == busFill:
				b.wake(bm.Names)
			case bm.Origin != b.origin:
				b.received.Add(1)
				reach(b.hooks, pBeforeApply, "")
				b.apply(bm)
				if bm.Ack && b.strict && b.withL1.Load() {
					b.queueAck(bm.Origin, bm.Seq)
				}
			case bm.Kind == busBeat && bm.Seq == awaited && awaited != 0:
				awaited, backoff = 0, 10*time.Millisecond
				b.heard(s, sentAt)
			}
		}
	}
}
