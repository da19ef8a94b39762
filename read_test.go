package aside_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// entryCommands records the names of the commands sent for entry keys of
// the cache "items" (not tag keys, not the bus), in order.
type entryCommands struct {
	mu    sync.Mutex
	names []string
}

func (e *entryCommands) DialHook(next redis.DialHook) redis.DialHook { return next }
func (e *entryCommands) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		key := 1 // GET key, SET key ...
		if name := cmd.Name(); name == "evalsha" || name == "eval" {
			key = 3 // EVALSHA sha numkeys key ...
		}
		if k, ok := args[min(key, len(args)-1)].(string); ok && strings.Contains(k, ":items:") {
			e.mu.Lock()
			e.names = append(e.names, cmd.Name())
			e.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}
func (e *entryCommands) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
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
// have been missing, a read skips its GET — the lease script answers a hit
// too — and a miss costs two round trips, as the floor's; one hit in the
// lease script brings the GET back.
func TestReadsThatMostlyMissStartWithTheLeaseScript(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		store, rdb := b.newStore(t)
		c := newCache[int](t, store)
		sent := &entryCommands{}
		rdb.AddHook(sent)
		load := func(context.Context) (int, error) { return 7, nil }
		startedWith := func(key string) string {
			t.Helper()
			sent.first()
			if v := mustGet(t, c, key, load); v != 7 {
				t.Fatalf("Get(%s) = %d, want 7", key, v)
			}
			return sent.first()
		}
		isScript := func(name string) bool { return name == "evalsha" || name == "eval" }
		for i := range 8 { // the trend reaches leaseFirstAt
			if got := startedWith("cold" + strconv.Itoa(i)); got != "get" {
				t.Fatalf("miss %d started with %s, want get", i+1, got)
			}
		}
		if got := startedWith("cold8"); !isScript(got) {
			t.Fatalf("the 9th miss in a row started with %s, want the lease script", got)
		}
		if got := startedWith("cold0"); !isScript(got) {
			t.Fatalf("a hit after 9 misses started with %s, want the lease script", got)
		}
		if got := startedWith("cold1"); got != "get" {
			t.Errorf("the read after a hit started with %s, want get", got)
		}
		if s := c.Stats(); s.Misses != 9 || s.Hits != 2 || s.Loads != 9 {
			t.Errorf("stats %+v; want 9 misses, 2 hits, 9 loads: each read counted once", s)
		}
	})
}
