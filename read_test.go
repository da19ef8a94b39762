package aside_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/asidecache/aside"
	"github.com/redis/go-redis/v9"
)

// entryCommands records the names of the commands sent for entry keys of
// the cache "items" (not tag keys, not the bus), in order, and counts the
// round trips.
type entryCommands struct {
	mu    sync.Mutex
	names []string
	trips atomic.Int32 // round trips for entries and tags: commands and pipelines
}

// record notes cmd if it is for an entry, and reports whether it is for an
// entry or a tag.
func (e *entryCommands) record(cmd redis.Cmder) bool {
	args := cmd.Args()
	key := 1 // GET key, SET key ...
	if name := cmd.Name(); name == "evalsha" || name == "eval" {
		key = 3 // EVALSHA sha numkeys key ...
	}
	k, _ := args[min(key, len(args)-1)].(string)
	if strings.Contains(k, ":items:") {
		e.mu.Lock()
		e.names = append(e.names, cmd.Name())
		e.mu.Unlock()
		return true
	}
	return strings.Contains(k, ":#tag:")
}

func (e *entryCommands) DialHook(next redis.DialHook) redis.DialHook { return next }
func (e *entryCommands) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		// A script's first run on a server is EVALSHA, NOSCRIPT, then EVAL:
		// one round trip is counted, as every later run costs.
		if !noScript(err) && e.record(cmd) {
			e.trips.Add(1)
		}
		return err
	}
}
func (e *entryCommands) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if noScript(cmd.Err()) {
				return err // its script did not run: the round trip is sent again, and counted then
			}
		}
		ours := false
		for _, cmd := range cmds {
			ours = e.record(cmd) || ours
		}
		if ours {
			e.trips.Add(1)
		}
		return err
	}
}

// first returns the first command recorded since the last call, and forgets them.
func (e *entryCommands) first() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	defer func() { e.names = nil }()
	if len(e.names) == 0 {
		return "nothing"
	}
	return e.names[0]
}

// TestReadsThatMostlyMissStartWithTheLeaseScript: once a cache's reads
// have been missing, a read skips its read step — the lease script answers
// a hit too, and a tagged read's tokens come in its round trip — so a miss
// costs two round trips, as the floor's (a tagged one a third, beside its
// fill, that extends the tag key's life); one hit brings the GET back.
func TestReadsThatMostlyMissStartWithTheLeaseScript(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, rdb := b.newStore(t)
		// The tag's token exists (a load of another cache made it): no
		// load of c creates it.
		if _, err := newCacheNamed[int](t, store, "seed").Get(bgCtx, "s", func(context.Context) (int, error) { return 1, nil }, aside.Tags("t")); err != nil {
			t.Fatal(err)
		}
		c := newCache[int](t, store)
		sent := &entryCommands{}
		rdb.AddHook(sent)
		load := func(context.Context) (int, error) { return 7, nil }
		// startedWith reads key and returns its first command and its round trips.
		startedWith := func(key string, opts ...aside.CallOption) (string, int32) {
			t.Helper()
			sent.first()
			n := sent.trips.Load()
			if v, err := c.Get(bgCtx, key, load, opts...); err != nil || v != 7 {
				t.Fatalf("Get(%s) = %d, %v; want 7", key, v, err)
			}
			settled(t, store) // the fill, if any, is one of the read's round trips
			return sent.first(), sent.trips.Load() - n
		}
		isScript := func(name string) bool { return name == "evalsha" || name == "eval" }
		for i := range 8 { // the trend reaches leaseFirstAt
			if got, n := startedWith("cold" + strconv.Itoa(i)); got != "get" || n != 3 {
				t.Fatalf("miss %d started with %s, %d round trips; want get, 3 (read, lease, fill)", i+1, got, n)
			}
		}
		if got, n := startedWith("cold8"); !isScript(got) || n != 2 {
			t.Fatalf("the 9th miss in a row started with %s, %d round trips; want the lease script, 2 (lease, fill)", got, n)
		}
		if got, n := startedWith("tagged", aside.Tags("t")); !isScript(got) || n != 3 {
			t.Fatalf("a tagged miss then started with %s, %d round trips; want the lease script, 3 (lease and tokens, fill, the tag key's life)", got, n)
		}
		if got, n := startedWith("cold0"); !isScript(got) || n != 1 {
			t.Fatalf("a hit after 10 misses started with %s, %d round trips; want the lease script, 1", got, n)
		}
		if got, n := startedWith("cold1"); got != "get" || n != 1 {
			t.Errorf("the read after a hit started with %s, %d round trips; want get, 1", got, n)
		}
		if err := store.InvalidateTags(bgCtx, "t"); err != nil {
			t.Fatal(err)
		}
		if v, err := c.Get(bgCtx, "tagged", func(context.Context) (int, error) { return 8, nil }, aside.Tags("t")); err != nil || v != 8 {
			t.Errorf("after its tag's invalidation the tagged entry read %d, %v; want 8 from the loader", v, err)
		}
		if s := c.Stats(); s.Misses != 10 || s.Hits != 2 || s.TagMisses != 1 || s.Loads != 11 {
			t.Errorf("stats %+v; want 10 misses, 2 hits, 1 tag miss, 11 loads: each read counted once", s)
		}
	})
}

// failTagReads makes every GET of a tag key sent in a pipeline fail, as a
// Cluster node holding the tag keys that does not answer.
type failTagReads struct{}

func (failTagReads) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (failTagReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (failTagReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if k, _ := cmd.Args()[len(cmd.Args())-1].(string); cmd.Name() == "get" && strings.Contains(k, ":#tag:") {
				cmd.SetErr(errors.New("tag read failed (injected)"))
			}
		}
		return err
	}
}

// TestLeaseFirstReadWithoutItsTokensServesNothingTheTagGuards: a tagged
// read that starts with the lease script and cannot read a tag's token
// takes it as missing: an entry written without that tag, before the tag's
// invalidation returned, is a miss (as a read that names a tag the entry
// lacks always is), not a hit.
func TestLeaseFirstReadWithoutItsTokensServesNothingTheTagGuards(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, rdb := b.newStore(t)
		c := newCache[int](t, store)
		var db atomic.Int64
		db.Store(1)
		load := func(context.Context) (int, error) { return int(db.Load()), nil }
		if v := mustGet(t, c, "k", load); v != 1 { // written without the tag
			t.Fatalf("fill = %d", v)
		}
		db.Store(2)
		if err := store.InvalidateTags(bgCtx, "t"); err != nil {
			t.Fatal(err)
		}
		rdb.AddHook(failTagReads{})
		v, err := c.Get(bgCtx, "k", load, aside.Tags("t"), aside.LeaseFirstCall())
		if err == nil && v != 2 {
			t.Errorf("Get naming t after InvalidateTags(t) returned %d without reading t's token; want 2 (or an error)", v)
		}
	})
}

// Hits recycle their call state (cache.go, recycle): a value a Get
// returned must stay the caller's — never rewritten by a later Get of this
// or another key, whose decode reuses that state — with slices and maps
// inside it, from many goroutines at once (the race detector watches the
// rest).
func TestHitValuesStayTheCallersOwn(t *testing.T) {
	type item struct {
		Key   string
		Parts []string
		Attrs map[string]int
	}
	want := func(k string) item {
		return item{Key: k, Parts: []string{k, k + k}, Attrs: map[string]int{k: len(k)}}
	}
	store, _ := (&backend{addr: realAddrOrMini(t)}).newStore(t)
	c := newCache[item](t, store)
	ctx := context.Background()
	var wg sync.WaitGroup
	kept := make([][]item, 8)
	for g := range kept {
		wg.Go(func() {
			for i := range 300 {
				k := "k" + strconv.Itoa((g+i)%16)
				v, err := c.Get(ctx, k, func(context.Context) (item, error) { return want(k), nil })
				if err != nil {
					t.Error(err)
					return
				}
				kept[g] = append(kept[g], v)
			}
		})
	}
	wg.Wait()
	if s := c.Stats(); s.Hits == 0 {
		t.Fatalf("no hits: %+v", s)
	}
	for g := range kept {
		for _, v := range kept[g] {
			w := want(v.Key)
			if v.Key == "" || !slices.Equal(v.Parts, w.Parts) || !maps.Equal(v.Attrs, w.Attrs) {
				t.Fatalf("a value changed after its Get returned: %+v, want %+v", v, w)
			}
		}
	}
}
