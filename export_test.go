package aside

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"
)

// Test-only access to unexported knobs, for the behaviour tests in package
// aside_test. Compiled only into this package's tests.

// TestHooks is testHooks, exported to the tests.
type TestHooks = testHooks

// SetTestHooks installs hooks on c (its protocol and its L1); call it before
// c is used.
func SetTestHooks[T any](c *Cache[T], h *TestHooks) {
	if h.Naive {
		flights := new(singleflight.Group)
		c.naiveGet = func(ctx context.Context, cl *call[T], src source[T]) { naiveGet(ctx, c, cl, src, flights) }
	}
	if h == nil {
		c.hooks = nil
	} else {
		c.hooks = h
	}
	if c.l1 != nil {
		if h == nil {
			c.l1.SetSeams(nil)
		} else {
			c.l1.SetSeams(h.L1Seams())
		}
	}
}

// SetStoreHooks installs the Store-wide hooks on s (breaker, bus, tag
// tokens) and on the caches created from s afterwards; call it right after
// NewStore.
func SetStoreHooks(s *Store, h *TestHooks) {
	if h == nil {
		s.hooks = nil
	} else {
		s.hooks = h
	}
	if h == nil {
		s.bus.SetSeams(nil)
	} else {
		s.bus.SetSeams(busSeams{h})
	}
}

// IsLeaseScript reports whether cmd runs the lease script (acquireScript),
// by SHA-1 or by source.
func IsLeaseScript(cmd redis.Cmder) bool {
	args := cmd.Args()
	if len(args) < 2 {
		return false
	}
	body, _ := args[1].(string)
	switch cmd.Name() {
	case "evalsha":
		return body == acquireScript.Hash()
	case "eval":
		sum := sha1.Sum([]byte(body))
		return hex.EncodeToString(sum[:]) == acquireScript.Hash()
	}
	return false
}

// TagSlot is the generation counter that guards s's L1 copies carrying
// tag: tags that share one are dropped together (a false positive that keeps
// L1 safe), which a test of "only this tag drops it" must avoid.
func TagSlot(s *Store, tag string) uint16 { return s.bus.TagSlot(tag) }

// BusState reports whether s's subscription is up, its epoch, and how many
// foreign messages it has applied.
func BusState(s *Store) (up bool, epoch, received uint64) {
	st := s.bus.Stats()
	return s.bus.Up(), st.Epoch, st.Received
}

// BusListening reports whether s's subscription is in place (it hears the
// bus and what is addressed to it), with or without L1.
func BusListening(s *Store) bool { return s.bus.Stats().Listening }

// BusResets reports how many times s doubted its invalidation stream.
func BusResets(s *Store) uint64 { return s.bus.Stats().Resets }

// DropPending is the broken variant of the replay queue: it forgets the
// invalidations that failed.
func DropPending(s *Store) {
	s.pending.mu.Lock()
	s.pending.ops = nil
	s.pending.n.Store(0)
	s.pending.mu.Unlock()
}

// StoreOf is the Store of c.
func StoreOf[T any](c *Cache[T]) *Store { return c.store }

// PendingReads is how many keys wait in s's pending read batches.
func PendingReads(s *Store) int {
	s.reads.mu.Lock()
	defer s.reads.mu.Unlock()
	n := 0
	for _, b := range s.reads.pending {
		n += len(b.keys)
	}
	return n
}

// LeaseFirstCall makes a read start with the lease script, as reads do
// while their cache's reads mostly miss: the tests' way onto that path.
func LeaseFirstCall() CallOption { return func(o *callOptions) { o.leaseFirst = true } }

// EntryKey is the Redis key of c's entry for key.
func EntryKey[T any](c *Cache[T], key string) string { return c.keys.entry(key) }

// naiveGet is the broken variant behind TestHooks.Naive: plain cache-aside
// as x/sync's singleflight makes it — read, then one load per key shared by
// whoever asks while it runs, then an unconditional write. docs/design.md
// says why aside's flights replace it; the stale-set race measures it.
func naiveGet[T any](ctx context.Context, c *Cache[T], cl *call[T], src source[T], flights *singleflight.Group) {
	if b, err := c.readOne(ctx, cl); err == nil && b != nil && c.serve(ctx, cl, b, src) {
		return
	}
	ch := flights.DoChan(cl.rk, func() (any, error) {
		ctx := context.WithoutCancel(ctx)
		start := c.store.now()
		o := c.loadFrom(ctx, src, []string{cl.key})[0]
		reach(c.hooks, pAfterLoad, cl.rk)
		if o.err == nil {
			reach(c.hooks, pBeforeFill, cl.rk)
			fresh := c.profile.freshFor()
			if b, _, ok := c.encodeForFill(o.v, start, fresh, 0, nil); ok {
				_ = c.writeEntry(ctx, cl.rk, b, fresh+c.profile.StaleWindow)
			}
		}
		return o.v, o.err
	})
	r := <-ch
	v, _ := r.Val.(T)
	cl.finish(v, r.Err)
}

// SetVersionRefresh replaces how often s records its caches' versions again.
func SetVersionRefresh(s *Store, d time.Duration) { s.versionRefresh = d }
