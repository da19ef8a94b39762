package bus

import (
	"hash/maphash"
	"math"
	"time"

	"github.com/redis/go-redis/v9"
)

// Kinds of the invalidations a Store publishes ([Message.Kind]).
const (
	KindKeys  byte = 'k' // keys of one cache (Cache, Names)
	KindTags  byte = 't' // tags (Names)
	KindCache byte = 'c' // a whole cache (Cache)
)

// TagSlots is the number of tag generation counters of a Store: tags that
// share one are invalidated together in L1 (a false positive, safe).
const TagSlots = 1024

// The bounds and default of a Store's L1 lease (L).
const (
	// DefaultLease is how long after sending a heartbeat it heard back a
	// strict Store may serve from L1; heartbeats go every L/4, so one lost
	// or slow heartbeat does not interrupt L1. It is also the longest an
	// invalidation waits for a Store that has stopped answering (a paused
	// process, a black-holed connection), plus leaseMargin. A Store whose
	// stream broke is reset within L/4 + 2 op timeouts.
	DefaultLease       = time.Second
	MinLease, MaxLease = 100 * time.Millisecond, time.Minute
)

// Tier is what the bus needs of a cache's L1, whatever its values' type.
type Tier interface {
	Invalidate(keys []string)
	Clear()
}

// Seams let a test take one of the bus's protections out (see the root
// package's seams.go); nil outside tests.
type Seams interface {
	Variant(v Variant) bool
	BeforeApply()                        // a heard invalidation is about to be applied
	SubscribeVia() redis.UniversalClient // a client to subscribe through until a heartbeat goes unheard
}

// Variant names a protection of the bus that a test can take out.
type Variant uint8

// The variants, each with the test it fails in the root package.
const (
	KeylessPublish Variant = iota // T17: publishes routed as go-redis routes a keyless command
	NoHeartbeat                   // T16: trust the subscription's connection, not heartbeats
	NoAckWait                     // T18: an invalidation returns without waiting for other Stores' L1
	NoLeaseCheck                  // T18: an L1 hit does not check the Store's lease
	NoFillWake                    // T19: a fill does not announce itself to waiters
)

// SetSeams installs a test's seams; call it before the bus is used.
func (b *Bus) SetSeams(s Seams) { b.seams = s }

func (b *Bus) variant(v Variant) bool { return b.seams != nil && b.seams.Variant(v) }

func (b *Bus) beforeApply() {
	if b.seams != nil {
		b.seams.BeforeApply()
	}
}

func (b *Bus) subscribeVia() redis.UniversalClient {
	if b.seams == nil {
		return nil
	}
	return b.seams.SubscribeVia()
}

// What an L1 reads of the bus. The order of the reads is part of the rule
// each serves, and lives here.

// Seed hashes an L1's keys, so that its slots differ from other processes'.
func (b *Bus) Seed() maphash.Seed { return b.seed }

// Lease is the Store's L1 lease as a Mono time (0: none, MaxInt64: relaxed).
// A hit reads it first: a lease extended meanwhile is not needed, the older
// one is the stricter.
func (b *Bus) Lease() int64 { return b.lease.Load() }

// Mono is the lease clock: monotonic, whatever the Store's clock says.
func (b *Bus) Mono() int64 { return int64(time.Since(b.base)) }

// Holds reports whether lease, read before the clock, still lets L1 answer
// at mono: relaxed, or strict and not yet over.
func (b *Bus) Holds(lease, mono int64) bool {
	return lease == math.MaxInt64 || lease != 0 && (mono < lease || b.variant(NoLeaseCheck))
}

// Serving reports whether L1 may answer now.
func (b *Bus) Serving() bool { return b.up.Load() && b.Holds(b.lease.Load(), b.Mono()) }

// Note is what an L1 fill records of the bus before its read of Redis.
type Note struct {
	Up              bool   // the stream is trusted: filling is allowed
	Epoch, TagEpoch uint64 // the stream's epoch; the tag invalidations begun
}

// Note reads the bus before an L1 fill's read of Redis.
func (b *Bus) Note() Note {
	n := Note{Up: b.up.Load(), Epoch: b.epoch.Load(), TagEpoch: b.tagEpoch.Load()}
	// Read after the counters: if the bus went down meanwhile, epoch moved.
	n.Up = n.Up && b.up.Load()
	return n
}

// TagGens records, for an entry filled under n, the slot and generation of
// each of its tags (named by name); false when a tag invalidation began
// since n, for the generations read may then postdate the value and the
// fill must not keep it. Apply bumps the tag epoch before the generations,
// so an unchanged epoch read after them proves they are those of before
// the fill's read.
func TagGens[E any](b *Bus, n Note, tags []E, name func(E) string, slots []uint16, gens []uint64) bool {
	for i, t := range tags {
		slots[i] = b.TagSlot(name(t))
		gens[i] = b.tagGens[slots[i]].Load()
	}
	return b.tagEpoch.Load() == n.TagEpoch
}

// Valid reports whether an entry filled in epoch, with tag generations gens
// in slots, has seen no reset of the stream and no invalidation of its tags.
func (b *Bus) Valid(epoch uint64, slots []uint16, gens []uint64) bool {
	if epoch != b.epoch.Load() {
		return false
	}
	for i, s := range slots {
		if gens[i] != b.tagGens[s].Load() {
			return false
		}
	}
	return true
}

// Up reports whether the stream is trusted now.
func (b *Bus) Up() bool { return b.up.Load() }

// Stats is what invalidations waited for, and what the bus sent and heard.
type Stats struct {
	Strict              bool          // strict coherence (leases and acknowledgements), not relaxed
	Serving             bool          // L1 may answer now: the stream is trusted and the lease holds
	Listening           bool          // subscribed: acknowledgements can reach this Store
	Epoch               uint64        // bumped by every reset and recovery of the stream
	Resets              uint64        // times the stream was doubted
	Received            uint64        // other Stores' invalidations applied
	Waits               uint64        // invalidations that waited for other Stores' L1
	AcksAwaited, Silent uint64        // acknowledgements awaited; Stores that let their lease run out instead
	WaitTime            time.Duration // spent in those waits
	Beats, AckMsgs      uint64        // heartbeats and acknowledgement messages sent
}

// Stats returns the bus's counters.
func (b *Bus) Stats() Stats {
	return Stats{
		Strict: b.strict, Serving: b.Serving(), Resets: b.resets.Load(), Received: b.received.Load(),
		Waits: b.waitStats.waits.Load(), AcksAwaited: b.waitStats.acksAwaited.Load(), Silent: b.waitStats.silent.Load(),
		Beats: b.waitStats.beats.Load(), AckMsgs: b.waitStats.ackMsgs.Load(), WaitTime: time.Duration(b.waitStats.nanos.Load()),
		Listening: b.listening.Load(), Epoch: b.epoch.Load(),
	}
}

// ForgetWaker removes the waker of rk if it is still wake.
func (b *Bus) ForgetWaker(rk string, wake chan struct{}) { b.wakers.CompareAndDelete(rk, wake) }
