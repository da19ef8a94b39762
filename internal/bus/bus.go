// Package bus carries invalidations between the Stores of every process
// over Redis pub/sub, and keeps each Store's L1 strictly coherent: leases
// granted by heartbeats, acknowledgements awaited by invalidations, and the
// generations an L1 entry is checked against. It knows nothing of caches'
// values: the root package registers each L1 as a [Tier] and reads the bus
// through a few methods.
package bus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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

// Bus carries invalidations between Stores over Redis pub/sub. Every Store
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
// argument — is in docs/design.md ("L1: strict coherence").
type Bus struct {
	cfg      Config
	channel  string // invalidations, heard by every Store
	own      string // this Store's heartbeats and the acknowledgements it awaits
	registry string // the Stores holding an L1 lease, scored by lease end (server ms)
	origin   string // this Store's id: its own messages are not applied twice
	seed     maphash.Seed
	seams    Seams // nil outside tests
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
	tagGens     [TagSlots]atomic.Uint64
	listening   atomic.Bool   // subscribed: acknowledgements can reach this Store
	withL1      atomic.Bool   // a cache of this Store has L1: heartbeats run
	seq         atomic.Uint64 // numbers this Store's invalidations that await acknowledgements
	incarnation atomic.Uint64 // bumped by every reset; see member
	received    atomic.Uint64 // foreign invalidations applied
	resets      atomic.Uint64 // times the stream was doubted
	beatMissed  atomic.Bool   // a heartbeat went unheard once; only the SubscribeVia test hook reads it
	waitStats   waitStats

	mu      sync.Mutex // protects tiers, started, cancel, ps, waits
	tiers   map[string][]Tier
	started bool
	cancel  context.CancelFunc
	ps      *redis.PubSub // closed by stop, to end a blocking read at once
	waits   map[uint64]*AckWait

	wakers sync.Map // Redis key → chan struct{}: the poller of a key this Store waits on

	ackMu   sync.Mutex            // protects ackOut
	ackOut  map[ackRoute][]uint64 // acknowledgements to send
	ackWake chan struct{}
}

// Message is one published invalidation — keys of one cache, tags, or a
// whole cache (Names empty) —, a heartbeat, or acknowledgements.
type Message struct {
	Origin string   `msgpack:"o"`
	Kind   byte     `msgpack:"k"`
	Cache  string   `msgpack:"c,omitempty"`
	Names  []string `msgpack:"n,omitempty"`
	Seq    uint64   `msgpack:"s,omitempty"`
	Ack    bool     `msgpack:"a,omitempty"` // the sender waits for an acknowledgement of Seq
	Seqs   []uint64 `msgpack:"q,omitempty"` // kindAck: the invalidations acknowledged
	From   string   `msgpack:"f,omitempty"` // kindAck: the acknowledging Store's member name (see [Bus.member])
}

const (
	kindBeat  = 'h'
	kindAck   = 'a'
	kindReset = 'r' // a Store dropped its L1 and left the registry: nobody need wait for it
	kindFill  = 'f' // entries (Redis keys in Names) were filled or released while callers waited
	// batchNames bounds the names in one message, so that a mass invalidation
	// is a few messages rather than one huge one or a storm of small ones.
	batchNames = 512
	// leaseMargin covers what separates the clocks of the lease and of its
	// registry: millisecond rounding and rate differences.
	leaseMargin = 50 * time.Millisecond

	whyNotHeard = "heartbeat not heard back"
)

// Config is what a Bus needs of the Store that owns it.
type Config struct {
	Client    redis.UniversalClient
	Prefix    string        // the Store's: the bus's channels and registry live under it
	OpTimeout time.Duration // bounds the wait for a subscription, and the heartbeat's slack
	Relaxed   bool          // L1 coherent within a delivery, not strictly (no leases, no waits)
	Lease     time.Duration // L: how long a heard heartbeat lets L1 serve
	// Go runs fn on a goroutine the Store waits for when it closes; false
	// when it is closing (fn then does not run).
	Go func(fn func()) bool
	// OpContext bounds one Redis call of ctx by the Store's call deadline;
	// Detached does the same on a context no caller can cancel.
	OpContext, Detached func(ctx context.Context) (context.Context, context.CancelFunc)
	Log                 func(level slog.Level, msg string, args ...any)
}

// New returns the bus of a Store. It starts nothing: the subscription
// starts with the first L1 registered, or the first wait for another
// Store's acknowledgement.
func New(cfg Config) *Bus {
	_, single := cfg.Client.(*redis.Client)
	_, cluster := cfg.Client.(*redis.ClusterClient)
	// One hash tag for the three names: one slot, one node, one order.
	channel := cfg.Prefix + ":#bus{" + cfg.Prefix + "}"
	origin := randomID()
	return &Bus{cfg: cfg, channel: channel, own: channel + ":" + origin, registry: channel + ":leases", origin: origin,
		seed: maphash.MakeSeed(), ordered: single, sharded: cluster, strict: !cfg.Relaxed, base: time.Now(),
		leaseFor: cfg.Lease, beatEvery: cfg.Lease / 4,
		tiers: map[string][]Tier{}, waits: map[uint64]*AckWait{}, ackOut: map[ackRoute][]uint64{},
		ackWake: make(chan struct{}, 1)}
}

// randomID is a Store's id on the bus: 64 random bits, hex.
func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// Register adds a cache's L1 and starts the subscription on first use.
func (b *Bus) Register(name string, t Tier) {
	b.mu.Lock()
	b.tiers[name] = append(b.tiers[name], t)
	b.mu.Unlock()
	b.withL1.Store(true)
	b.start()
}

// start runs the subscription (and the acknowledgements' sender) once.
func (b *Bus) start() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	if b.cfg.Go(func() { b.run(ctx) }) && b.cfg.Go(func() { b.sendAcks(ctx) }) {
		b.started, b.cancel = true, cancel
	} else {
		cancel()
	}
}

// listen starts the subscription if needed and waits, at most an op
// timeout, until it is in place: acknowledgements sent before would be lost.
func (b *Bus) listen(ctx context.Context) {
	b.start()
	deadline := time.Now().Add(b.cfg.OpTimeout)
	for !b.listening.Load() && ctx.Err() == nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

// Stop ends the subscription.
func (b *Bus) Stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cancel != nil {
		b.cancel()
	}
	if b.ps != nil {
		_ = b.ps.Close()
	}
}

// Apply handles one invalidation: one heard on the channel, or one this
// Store made (before the call that made it returns: read-your-writes).
func (b *Bus) Apply(m Message) {
	if m.Kind == KindTags {
		// tagEpoch first: an L1 fill that reads the generations and then
		// finds tagEpoch unchanged read them before this invalidation.
		b.tagEpoch.Add(1)
		for _, t := range m.Names {
			b.tagGens[b.TagSlot(t)].Add(1)
		}
		return
	}
	b.mu.Lock()
	tiers := b.tiers[m.Cache]
	b.mu.Unlock()
	for _, t := range tiers {
		if m.Kind == KindCache {
			t.Clear()
		} else {
			t.Invalidate(m.Names)
		}
	}
}

// TagSlot is the generation counter that guards L1 entries carrying tag.
func (b *Bus) TagSlot(tag string) uint16 { return uint16(maphash.String(b.seed, tag) % TagSlots) }

// publish adds the commands that publish m on channel to a pipeline. Each
// is routed by its channel, like the subscription: go-redis routes PUBLISH
// as a command without a key, which on a Ring lands on another shard than
// the one subscribed to.
func (b *Bus) publish(ctx context.Context, p redis.Pipeliner, channel string, m Message) {
	for _, payload := range b.encode(m) {
		if b.sharded {
			p.SPublish(ctx, channel, payload)
			continue
		}
		cmd := p.Publish(ctx, channel, payload)
		if !b.variant(KeylessPublish) {
			cmd.SetFirstKeyPos(1)
		}
	}
}

// encode returns m as one payload per batchNames names.
func (b *Bus) encode(m Message) [][]byte {
	m.Origin = b.origin
	names := m.Names
	var out [][]byte
	for {
		m.Names = names[:min(len(names), batchNames)]
		payload, _ := msgpack.Marshal(&m) // strings, bytes and integers only: cannot fail
		out = append(out, payload)
		if names = names[len(m.Names):]; len(names) == 0 {
			return out
		}
	}
}

func (b *Bus) flag(v bool) string {
	if v {
		return "1"
	}
	return "0"
}

func (b *Bus) subscribe(ctx context.Context) (ps *redis.PubSub, err error) {
	defer func() {
		if p := recover(); p != nil { // a Ring panics when no shard is up
			ps, err = nil, fmt.Errorf("aside: subscribe: %v", p)
		}
	}()
	rdb := b.cfg.Client
	if via := b.subscribeVia(); via != nil && !b.beatMissed.Load() {
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
func (b *Bus) run(ctx context.Context) {
	var (
		ps           *redis.PubSub
		registered   bool   // a heartbeat of this incarnation was sent: it may be in the registry
		seq, awaited uint64 // awaited: the heartbeat not yet heard back, 0 if none
		sentAt       time.Time
		backoff      = 10 * time.Millisecond
		limit        = b.beatEvery + 2*b.cfg.OpTimeout
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
			b.leave(true)
		}
	}()
	reset := func(why string) {
		b.resets.Add(1)
		if why == whyNotHeard {
			b.beatMissed.Store(true)
		}
		if b.drop() {
			b.cfg.Log(slog.LevelWarn, "aside: invalidation stream in doubt: L1 bypassed until it is back", "why", why)
		}
		if registered {
			b.leave(true)
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
			if ps, err = b.subscribe(ctx); err != nil {
				reset(err.Error())
				continue
			}
		}
		switch {
		case !b.withL1.Load() || !b.listening.Load():
			// No L1 (this Store only awaits acknowledgements), or not
			// subscribed yet: nothing to beat for.
		case b.variant(NoHeartbeat):
			awaited = 0 // the broken variant: trust the connection, as v1 did
		case awaited == 0 && time.Since(sentAt) >= b.beatEvery:
			seq++
			sent := time.Now()
			registered = registered || b.strict
			n, err := b.beat(seq)
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
			if b.variant(NoHeartbeat) && b.withL1.Load() {
				b.heard(time.Now())
			}
		case *redis.Message:
			var bm Message
			if msgpack.Unmarshal([]byte(m.Payload), &bm) != nil {
				continue
			}
			switch {
			case bm.Kind == kindAck:
				b.acked(bm.From, bm.Seqs)
			case bm.Kind == kindReset && len(bm.Names) == 1:
				b.acked(bm.Names[0], nil)
			case bm.Kind == kindFill:
				b.wake(bm.Names)
			case bm.Origin != b.origin:
				b.received.Add(1)
				b.beforeApply()
				b.Apply(bm)
				if bm.Ack && b.strict && b.withL1.Load() {
					b.queueAck(bm.Origin, bm.Seq)
				}
			case bm.Kind == kindBeat && bm.Seq == awaited && awaited != 0:
				awaited, backoff = 0, 10*time.Millisecond
				b.heard(sentAt)
			}
		}
	}
}
