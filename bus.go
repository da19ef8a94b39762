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
// publishes; a Store subscribes once its first cache with L1 is created.
//
// A Store trusts its subscription only while it hears its own heartbeats:
// every busBeat it publishes one through the client's normal routing — the
// way invalidations travel, to the current master of the channel's shard —
// and expects it back on the subscription. A heartbeat not heard back in
// time means invalidations may not be arriving either: the connection is
// stalled, the subscription sits on a node that stopped being master (a
// Sentinel failover moves pooled connections, not PubSub ones), or publishes
// land on another shard than the subscription (a Ring). Any such doubt, and
// any resubscription, resets the Store: L1 is bypassed and logically cleared
// until a heartbeat sent after the reset has been heard back.
type bus struct {
	channel string
	origin  string // this Store's id: its own messages are not applied twice
	seed    maphash.Seed
	hooks   *testHooks
	// ordered: one pipeline reaches one server, which runs it in order, so
	// a publish may travel with the writes it announces. On a Cluster or a
	// Ring a pipeline fans out to several nodes in parallel, so the publish
	// goes after the writes have been acknowledged: a Store that hears it
	// and re-reads must not find the old value still there.
	ordered bool

	up         atomic.Bool   // subscribed and heard back: L1 may be used
	epoch      atomic.Uint64 // bumped on every reset and recovery: L1 entries of older epochs are invalid
	tagEpoch   atomic.Uint64 // bumped before the tag generations by every tag invalidation
	tagGens    [genSlots]atomic.Uint64
	received   atomic.Uint64 // foreign invalidations applied
	resets     atomic.Uint64 // times the stream was doubted
	beatMissed atomic.Bool   // a heartbeat went unheard once; only the SubscribeVia test hook reads it

	mu      sync.Mutex // protects tiers, started, cancel, ps
	tiers   map[string][]localTier
	started bool
	cancel  context.CancelFunc
	ps      *redis.PubSub // closed by stop, to end a blocking read at once
}

// busMessage is one published invalidation — keys of one cache, tags, or a
// whole cache (Names empty) — or a heartbeat.
type busMessage struct {
	Origin string   `msgpack:"o"`
	Kind   byte     `msgpack:"k"`
	Cache  string   `msgpack:"c,omitempty"`
	Names  []string `msgpack:"n,omitempty"`
	Seq    uint64   `msgpack:"s,omitempty"`
}

const (
	busKeys  = 'k'
	busTags  = 't'
	busCache = 'c'
	busBeat  = 'h'
	// busBatch bounds the names in one message, so that a mass invalidation
	// is a few messages rather than one huge one or a storm of small ones.
	busBatch = 512
	// beatEvery is the heartbeat interval. A Store whose stream broke is
	// reset within beatEvery + 2 op timeouts.
	beatEvery = 250 * time.Millisecond

	whyNotHeard = "heartbeat not heard back"
)

func newBus(s *Store) *bus {
	_, single := s.rdb.(*redis.Client)
	return &bus{channel: s.prefix + ":#bus", origin: newToken()[:16], seed: maphash.MakeSeed(),
		tiers: map[string][]localTier{}, ordered: single}
}

// register adds a cache's L1 and starts the subscription on first use.
func (b *bus) register(s *Store, name string, t localTier) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tiers[name] = append(b.tiers[name], t)
	if b.started {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	if s.goTracked(func() { b.run(ctx, s) }) {
		b.started, b.cancel = true, cancel
	} else {
		cancel()
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

// publish adds the PUBLISH commands for m to a pipeline. Each is routed by
// its channel, like the subscription: go-redis routes PUBLISH as a command
// without a key, which on a Ring lands on another shard than the one
// subscribed to.
func (b *bus) publish(ctx context.Context, p redis.Pipeliner, m busMessage) {
	names := m.Names
	for {
		m.Names = names[:min(len(names), busBatch)]
		cmd := p.Publish(ctx, b.channel, b.encode(m))
		if !b.hooks.keylessPublish() {
			cmd.SetFirstKeyPos(1)
		}
		names = names[len(m.Names):]
		if len(names) == 0 {
			return
		}
	}
}

func (b *bus) encode(m busMessage) []byte {
	m.Origin = b.origin
	payload, _ := msgpack.Marshal(&m) // strings, bytes and integers only: cannot fail
	return payload
}

// writeAndTell runs writes and publishes msgs, under ctx (an op context),
// and applies msgs to this Store's own L1 (read-your-writes) whether or not
// Redis answered. The publish travels in the writes' pipeline when one
// server runs it in order, and after them otherwise.
func (s *Store) writeAndTell(ctx context.Context, writes func(p redis.Pipeliner), msgs ...busMessage) error {
	tell := func(p redis.Pipeliner) {
		for _, m := range msgs {
			s.bus.publish(ctx, p, m)
		}
	}
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		writes(p)
		if s.bus.ordered {
			tell(p)
		}
		return nil
	})
	if err == nil && !s.bus.ordered && len(msgs) > 0 {
		_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error { tell(p); return nil })
	}
	for _, m := range msgs {
		s.bus.apply(m)
	}
	return err
}

func (b *bus) subscribe(ctx context.Context, s *Store) (ps *redis.PubSub, err error) {
	defer func() {
		if p := recover(); p != nil { // a Ring panics when no shard is up
			ps, err = nil, fmt.Errorf("aside: subscribe: %v", p)
		}
	}()
	rdb := s.rdb
	if via := b.hooks.subscribeVia(); via != nil && !b.beatMissed.Load() {
		rdb = via
	}
	ps = rdb.Subscribe(ctx, b.channel)
	b.mu.Lock()
	b.ps = ps
	b.mu.Unlock()
	return ps, nil
}

// beat publishes heartbeat seq the way invalidations travel.
func (b *bus) beat(s *Store, seq uint64) error {
	ctx, cancel := s.opContext(context.Background())
	defer cancel()
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		b.publish(ctx, p, busMessage{Kind: busBeat, Seq: seq})
		return nil
	})
	return err
}

// run keeps the subscription and applies what arrives; see [bus] for the
// heartbeats. The bus's own Redis calls do not feed the breaker: they run
// whether or not the application does.
func (b *bus) run(ctx context.Context, s *Store) {
	var ps *redis.PubSub
	defer func() {
		if ps != nil {
			_ = ps.Close()
		}
	}()
	var (
		seq, awaited uint64 // awaited: the heartbeat not yet heard back, 0 if none
		sentAt       time.Time
		backoff      = 10 * time.Millisecond
		limit        = beatEvery + 2*s.opTimeout
	)
	reset := func(why string) {
		b.resets.Add(1)
		if why == whyNotHeard {
			b.beatMissed.Store(true)
		}
		if b.up.Swap(false) {
			b.epoch.Add(1)
			s.log(slog.LevelWarn, "aside: invalidation stream in doubt: L1 bypassed until it is back", "why", why)
		}
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
	defer func() {
		if b.up.Swap(false) {
			b.epoch.Add(1)
		}
	}()
	for ctx.Err() == nil {
		if ps == nil {
			var err error
			if ps, err = b.subscribe(ctx, s); err != nil {
				reset(err.Error())
				continue
			}
		}
		if b.hooks.noHeartbeat() {
			awaited = 0 // the broken variant: trust the connection, as v1 did
		} else if awaited == 0 && time.Since(sentAt) >= beatEvery {
			seq++
			if err := b.beat(s, seq); err != nil {
				reset("heartbeat not sent: " + err.Error())
				continue
			}
			awaited, sentAt = seq, time.Now()
		} else if awaited != 0 && time.Since(sentAt) > limit {
			reset(whyNotHeard)
			continue
		}
		msg, err := ps.ReceiveTimeout(ctx, beatEvery/2)
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
			if m.Kind != "subscribe" {
				continue
			}
			// (Re)subscribed: messages may have been lost before. Anything
			// cached earlier is dropped; a new heartbeat brings L1 back.
			if b.up.Swap(false) {
				b.epoch.Add(1)
			}
			awaited, sentAt = 0, time.Time{}
			if b.hooks.noHeartbeat() {
				b.heard(s)
			}
		case *redis.Message:
			var bm busMessage
			if msgpack.Unmarshal([]byte(m.Payload), &bm) != nil {
				continue
			}
			if bm.Origin != b.origin {
				b.received.Add(1)
				b.apply(bm)
			} else if bm.Kind == busBeat && bm.Seq == awaited && awaited != 0 {
				awaited, backoff = 0, 10*time.Millisecond
				b.heard(s)
			}
		}
	}
}

// heard marks the stream trusted after a heartbeat came back.
func (b *bus) heard(s *Store) {
	if !b.up.Load() {
		b.epoch.Add(1) // entries filled while in doubt stay invalid
		b.up.Store(true)
		s.log(slog.LevelInfo, "aside: invalidation stream up: L1 in use")
	}
}
