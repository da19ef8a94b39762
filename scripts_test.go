package aside_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// noScripts counts the commands of pipelines answered NOSCRIPT.
type noScripts struct{ n atomic.Int32 }

func (h *noScripts) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *noScripts) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *noScripts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if noScript(cmd.Err()) {
				h.n.Add(1)
			}
		}
		return err
	}
}

// flushScripts returns a func that makes Redis forget every script, as a
// new or restarted server has: on a Cluster, only the master that holds
// key (every master for ""), so that a pipeline over several nodes is
// answered NOSCRIPT by some and run by the others. It connects as the
// admin (the suite's own user may not flush), and on a Cluster asks for
// the masters as they are now: an earlier test may have failed one over.
func flushScripts(t *testing.T, b *backend) func(key string) {
	if b.cluster == nil {
		admin := redis.NewClient(&redis.Options{Addr: b.addr, DisableIdentity: true, MaxRetries: -1})
		t.Cleanup(func() { _ = admin.Close() })
		return func(string) {
			t.Helper()
			if err := admin.ScriptFlush(bgCtx).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	admin := redis.NewClusterClient(&redis.ClusterOptions{Addrs: b.cluster, DisableIdentity: true})
	t.Cleanup(func() { _ = admin.Close() })
	return func(key string) {
		t.Helper()
		flush := func(ctx context.Context, m *redis.Client) error { return m.ScriptFlush(ctx).Err() }
		var err error
		if key == "" {
			err = admin.ForEachMaster(bgCtx, flush)
		} else {
			var m *redis.Client
			if m, err = admin.MasterForKey(bgCtx, key); err == nil {
				err = flush(bgCtx, m)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestPipelinedScriptsOnAServerThatHasNotSeenThem: the entry scripts of a
// pipeline go as EVALSHA, their body never on the wire; those a server
// answers NOSCRIPT did not run and go again with their body — those only,
// for the others ran. The scripts are flushed before a GetMany's leases,
// again before its fills, and everywhere before a tagged read that starts with the
// lease script (its tokens ride in that round trip): one load per read,
// and every entry stored. The broken variant sends every script again;
// on a Cluster, where one node only was flushed, the keys of the others
// find the lease their first script took, wait for it, and are not stored.
func TestPipelinedScriptsOnAServerThatHasNotSeenThem(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		flush := flushScripts(t, b)
		holds := func(broken bool) bool {
			store, rdb := b.newStore(t, aside.WithProfiles(aside.Profile{Name: "quick", TTL: time.Minute, LoadTimeout: 300 * time.Millisecond}))
			var beforeFill sync.Once
			var first string // the Redis key of the first entry: its node is the one flushed on a Cluster
			aside.SetStoreHooks(store, &aside.TestHooks{ResendAllScripts: broken, BeforeFill: func(string) { beforeFill.Do(func() { flush(first) }) }})
			c := newCache[string](t, store, aside.WithProfile("quick"))
			seen := &noScripts{}
			rdb.AddHook(seen)

			keys := keyRange("k", 0, 40) // 40 keys: some on every node of a Cluster
			first = aside.EntryKey(c, keys[0])
			// Every node runs the scripts once (a Cluster's nodes may have
			// been flushed by the last round), and then forgets them.
			if _, err := c.GetMany(bgCtx, keyRange("warm", 0, 40), (&recordingBatch{}).load); err != nil {
				t.Fatal(err)
			}
			settled(t, store)
			r := &recordingBatch{}
			flush(first)
			got, err := c.GetMany(bgCtx, keys, r.load)
			if err != nil || len(got) != len(keys) {
				t.Fatalf("GetMany: %d values, %v; want %d", len(got), err, len(keys))
			}
			settled(t, store)
			if _, err := c.GetMany(bgCtx, keys, r.load); err != nil {
				t.Fatal(err)
			}
			if n := seen.n.Load(); n < 2 {
				t.Fatalf("%d scripts answered NOSCRIPT; want the leases' and the fills'", n)
			}
			ok := len(r.callKeys()) == 1 // the second GetMany read every entry stored
			if !ok {
				t.Logf("broken=%v: %d loader calls; want 1", broken, len(r.callKeys()))
			}

			var loads atomic.Int32
			load := func(context.Context) (string, error) { loads.Add(1); return "v", nil }
			flush("")
			before := seen.n.Load()
			for range 2 {
				if v, err := c.Get(bgCtx, "tagged", load, aside.LeaseFirstCall(), aside.Tags("t")); err != nil || v != "v" {
					t.Fatalf("tagged Get = %q, %v", v, err)
				}
				settled(t, store)
			}
			if seen.n.Load() == before {
				t.Fatal("the tagged lease-first read was not answered NOSCRIPT: its pipeline was not exercised")
			}
			if n := loads.Load(); n != 1 {
				t.Logf("broken=%v: the tagged read loaded %d times; want 1", broken, n)
				ok = false
			}
			return ok
		}
		if b.cluster == nil { // one server forgets all: the broken variant sends what the fixed one sends
			if !holds(false) {
				t.Error("scripts answered NOSCRIPT were not run again")
			}
			return
		}
		expectBroken(t, "only the scripts answered NOSCRIPT go again", holds)
	})
}
