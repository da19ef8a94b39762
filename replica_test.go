package aside_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// WithReplicaWait: an invalidation returns once a replica holds it, and
// fails (queued; ApplyRecorded's left to its record) when none acknowledged
// it in time — the master applied it, a failover could lose it. Broken: the
// WAIT's answer ignored.
func TestReplicaWait(t *testing.T) {
	requireReal(t)
	master, err := startRedis(0, "--repl-diskless-sync-delay", "0")
	if err != nil {
		t.Fatal(err)
	}
	defer master.stop()
	replica, err := startRedis(0, "--replicaof", "127.0.0.1", strconv.Itoa(master.port))
	if err != nil {
		t.Fatal(err)
	}
	defer replica.stop()
	rdb := newClient(t, master.addr)
	// In sync once it acknowledges a write: "online" on the master comes
	// before the replica has loaded what the master sent.
	eventually(t, "the replica in sync", func() bool {
		rdb.Set(bgCtx, "probe", "1", 0)
		n, _ := rdb.Do(bgCtx, "WAIT", 1, 100).Int()
		return n == 1
	})
	newWaiting := func(hooks *aside.TestHooks) (*aside.Store, *aside.Cache[int]) {
		store, err := aside.NewStore(rdb, aside.WithPrefix(uniquePrefix()), aside.WithOpTimeout(500*time.Millisecond),
			aside.WithReplicaWait(1, 100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		aside.SetStoreHooks(store, hooks)
		t.Cleanup(func() { _ = store.Close() })
		return store, newCache[int](t, store)
	}
	store, c := newWaiting(nil)
	mustGet(t, c, "k", func(context.Context) (int, error) { return 1, nil })
	if err := c.Invalidate(bgCtx, "k"); err != nil {
		t.Fatalf("Invalidate with the replica up = %v", err)
	}

	if err := syscall.Kill(replica.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(replica.cmd.Process.Pid, syscall.SIGCONT) }()
	expectBroken(t, "an invalidation no replica acknowledged fails", func(broken bool) bool {
		store, c := store, c
		if broken {
			store, c = newWaiting(&aside.TestHooks{IgnoreReplicas: true})
		}
		err := c.Invalidate(bgCtx, "k")
		rerr := store.ApplyRecorded(bgCtx, c.Changed("k"))
		return errors.Is(err, aside.ErrQueued) && strings.Contains(err.Error(), "0 of 1 replicas") &&
			errors.Is(rerr, aside.ErrUnavailable) && !errors.Is(rerr, aside.ErrQueued)
	})
	_ = syscall.Kill(replica.cmd.Process.Pid, syscall.SIGCONT)
	eventually(t, "an invalidation succeeds once the replica answers", func() bool { return c.Invalidate(bgCtx, "k") == nil })

	for _, tc := range []struct {
		client redis.UniversalClient
		n      int
		d      time.Duration
		want   string
	}{
		{rdb, 0, 50 * time.Millisecond, "replicas >= 1"},
		{rdb, 1, time.Second, "op timeout"},
		{redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{master.addr}, ContextTimeoutEnabled: true}), 1, 50 * time.Millisecond, "one master"},
	} {
		_, err := aside.NewStore(tc.client, aside.WithOpTimeout(100*time.Millisecond), aside.WithReplicaWait(tc.n, tc.d))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewStore with WithReplicaWait(%d, %v) = %v, want an error about %q", tc.n, tc.d, err, tc.want)
		}
	}
}
