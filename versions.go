package aside

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Every version of a cache that a Store uses is recorded in Redis, in one
// set per cache name, so that an invalidation reaches the entries of every
// live version: during a rolling deploy that bumps WithVersion, pods of
// both versions serve, and a write made on either must reach the other's
// entries. The rule that makes the set enough: a Store reads or writes no
// entry before the versions of its caches are recorded (usable), so a
// version an invalidation does not find in the set has no entry loaded
// before that invalidation read the set — and the invalidation reads it in
// the same round trip as its deletions, after the source of truth committed.

// versionsKey is the set of the versions of cache name in use. '#' cannot
// start a cache name; the name is its hash tag.
func versionsKey(prefix, name string) string { return prefix + ":#v:{" + name + "}" }

// versionBook is what a Store knows of the versions in use, by cache name:
// its own caches' (to record in Redis before the first read) and the ones
// an invalidation found in Redis (its first guess the next time).
type versionBook struct {
	mu      sync.Mutex       // protects known, unsent and sending
	known   map[string][]int // sorted
	own     map[string][]int // this Store's caches'
	unsent  map[string][]int // this Store's versions not yet recorded in Redis
	sending *recording       // the recording of unsent in flight, if any
	nUnsent atomic.Int32     // len(unsent), read on every usable without the lock
	// recordedAt is when the versions were last recorded (unix ns), and
	// refreshing whether a recording again is under way (refreshVersions).
	recordedAt atomic.Int64
	refreshing atomic.Bool
}

// versionRefresh is how often a Store records its versions again while it
// uses Redis: a Redis restarted empty, flushed or evicting loses the set
// without any breaker noticing (the client's retries hide a restart), and
// an invalidation would then miss the entries of a version it has not
// learnt. Recording again bounds that to this long after the loss.
const versionRefresh = 5 * time.Second

// recording is one SADD round trip of the unsent versions; the callers
// that find it in flight wait for its outcome instead of sending their own.
type recording struct {
	done chan struct{}
	ok   bool // set before done is closed
}

// use notes that a cache of this Store uses version v of name.
func (b *versionBook) use(name string, v int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.known == nil {
		b.known, b.unsent, b.own = map[string][]int{}, map[string][]int{}, map[string][]int{}
	}
	b.known[name] = insertSorted(b.known[name], v)
	b.own[name] = insertSorted(b.own[name], v)
	b.unsent[name] = insertSorted(b.unsent[name], v)
	b.nUnsent.Store(int32(len(b.unsent)))
}

// resend has the versions of this Store's caches recorded again, in the
// background, by the next read: a read never waits for (or, should it fail,
// loses Redis to) a recording of versions recorded before.
func (b *versionBook) resend() {
	if b.recordedAt.Load() != 0 {
		b.recordedAt.Store(1) // long ago: due
	}
}

// versions returns the versions of name known to be in use; with own,
// only those of this Store's caches (the broken variant).
func (b *versionBook) versions(name string, own bool) []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if own {
		return slices.Clone(b.own[name])
	}
	return slices.Clone(b.known[name])
}

// learn adds the versions found in Redis and returns those that were not
// known.
func (b *versionBook) learn(name string, found []string) []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	var added []int
	for _, s := range found {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			continue // not a version aside wrote
		}
		if _, ok := slices.BinarySearch(b.known[name], v); !ok {
			if b.known == nil {
				b.known, b.unsent, b.own = map[string][]int{}, map[string][]int{}, map[string][]int{}
			}
			b.known[name] = insertSorted(b.known[name], v)
			added = append(added, v)
		}
	}
	return added
}

func insertSorted(vs []int, v int) []int {
	if i, ok := slices.BinarySearch(vs, v); !ok {
		return slices.Insert(vs, i, v)
	}
	return vs
}

// versionsRecorded reports whether every version this Store's caches use
// is recorded in Redis, recording them now if not (one round trip, the
// first time; concurrent callers share it, each waiting at most until its
// ctx ends). A failure counts in st, the counters of the caller's cache.
// Once recorded, it records them again in the background every
// versionRefresh, and answers at once.
func (s *Store) versionsRecorded(ctx context.Context, st *counters, cache string) bool {
	b := &s.versions
	if b.nUnsent.Load() == 0 {
		if at := b.recordedAt.Load(); at != 0 && time.Now().UnixNano()-at > int64(s.versionRefresh) && b.refreshing.CompareAndSwap(false, true) {
			if !s.goTracked(func() { defer b.refreshing.Store(false); s.refreshVersions() }) {
				b.refreshing.Store(false)
			}
		}
		return true
	}
	b.mu.Lock()
	if r := b.sending; r != nil {
		b.mu.Unlock()
		select {
		case <-r.done:
			return r.ok
		case <-ctx.Done():
			return false
		}
	}
	r := &recording{done: make(chan struct{})}
	b.sending = r
	unsent := make(map[string][]int, len(b.unsent))
	for name, vs := range b.unsent {
		unsent[name] = slices.Clone(vs)
	}
	b.mu.Unlock()

	// On a context no caller can cut short: the others wait for it.
	err := s.recordVersions(context.WithoutCancel(ctx), unsent, st, cache)
	b.mu.Lock()
	if err == nil {
		for name, vs := range unsent {
			b.unsent[name] = slices.DeleteFunc(b.unsent[name], func(v int) bool { return slices.Contains(vs, v) })
			if len(b.unsent[name]) == 0 {
				delete(b.unsent, name)
			}
		}
		b.nUnsent.Store(int32(len(b.unsent)))
	}
	b.sending = nil
	b.mu.Unlock()
	r.ok = err == nil
	close(r.done)
	return r.ok
}

// refreshVersions records every version of this Store's caches again.
func (s *Store) refreshVersions() {
	b := &s.versions
	b.mu.Lock()
	own := make(map[string][]int, len(b.own))
	for name, vs := range b.own {
		own[name] = slices.Clone(vs)
	}
	b.mu.Unlock()
	_ = s.recordVersions(context.Background(), own, nil, "")
}

// recordVersions adds versions to their sets in one round trip, and notes
// when.
func (s *Store) recordVersions(ctx context.Context, versions map[string][]int, st *counters, cache string) error {
	octx, cancel := s.opContext(ctx)
	defer cancel()
	_, err := s.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		for name, vs := range versions {
			members := make([]any, len(vs))
			for i, v := range vs {
				members[i] = v
			}
			p.SAdd(octx, versionsKey(s.prefix, name), members...)
		}
		return nil
	})
	s.record(octx, err, st, cache)
	if err == nil {
		s.versions.recordedAt.Store(time.Now().UnixNano())
	}
	return err
}

// versionsInUse reads the versions in use of each cache in names (one
// round trip), adding those it learns to the book.
func (s *Store) versionsInUse(ctx context.Context, names []string) (map[string][]int, error) {
	if len(names) == 0 {
		return nil, nil
	}
	found := make([]*redis.StringSliceCmd, len(names))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, name := range names {
			found[i] = p.SMembers(ctx, versionsKey(s.prefix, name))
		}
		return nil
	})
	s.record(ctx, err, nil, "")
	if err != nil {
		return nil, err
	}
	out := make(map[string][]int, len(names))
	for i, name := range names {
		s.versions.learn(name, found[i].Val())
		out[name] = s.versions.versions(name, variantOn(s.hooks, vOwnVersionsOnly))
	}
	return out, nil
}
