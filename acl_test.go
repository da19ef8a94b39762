package aside_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// aclCommands are the only commands aside needs: the ACL the README
// documents, and under which the whole real-Redis suite runs.
const aclCommands = "+get +mget +set +setnx +setrange +del +unlink +exists +pexpire +type +hget +hset +hmget " +
	"+eval +evalsha +time +scan +publish +subscribe +spublish +ssubscribe +ping " +
	"+zadd +zrem +zrangebyscore +zremrangebyscore +sadd +smembers +pttl"

// aclRule limits a user to keys under prefix, its channels and aclCommands.
func aclRule(prefix string) string {
	return "~" + prefix + ":* &" + prefix + ":#bus* " + aclCommands
}

// TestACLRestrictedUser runs every path of aside as a Redis user limited to
// the documented ACL, on a redis-server of its own.
func TestACLRestrictedUser(t *testing.T) {
	requireReal(t)
	srv, err := startRedis(0)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.stop()
	admin := newClient(t, srv.addr)
	args := append([]any{"ACL", "SETUSER", "app", "on", ">secret", "resetkeys", "resetchannels", "-@all"}, stringsToAny(strings.Fields(aclRule("shop")))...)
	if err := admin.Do(bgCtx, args...).Err(); err != nil {
		t.Fatal(err)
	}
	admin.Set(bgCtx, "other:secret", "not yours", 0)
	rdb := redis.NewClient(&redis.Options{Addr: srv.addr, Username: "app", Password: "secret", DisableIdentity: true,
		ContextTimeoutEnabled: true, MaxRetries: -1})
	defer rdb.Close()
	if err := rdb.Get(bgCtx, "other:secret").Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("the ACL does not restrict keys: %v", err)
	}
	exerciseAllPaths(t, rdb, "shop")
}

// exerciseAllPaths runs every path of aside — miss, hit, tags, Set,
// MarkStale, Invalidate, InvalidateTags, MarkTagsStale, GetMany, negative
// caching, Purge, L1 and its bus — on rdb, and fails on any Redis error:
// aside serves through its loaders when Redis refuses a command, so a
// permission or CROSSSLOT error would otherwise go unnoticed.
func exerciseAllPaths(t *testing.T, rdb redis.UniversalClient, prefix string) {
	t.Helper()
	var mu sync.Mutex
	var redisErrs []error
	store, err := aside.NewStore(rdb, aside.WithPrefix(prefix), aside.WithObserver(func(e aside.Event) {
		if e.Kind == aside.EventRedisError {
			mu.Lock()
			redisErrs = append(redisErrs, e.Err)
			mu.Unlock()
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c, err := aside.New[string](store, "product", aside.WithL1(100, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the subscription", func() bool { up, _, _ := aside.BusState(store); return up })
	ctx := context.Background()
	load := func(context.Context) (string, error) { return "v", nil }
	tags := aside.Tags("cat", "brand")
	many := func(context.Context, []string) (map[string]string, error) { return map[string]string{"3": "x"}, nil }
	steps := []struct {
		name string
		run  func() error
	}{
		{"get", func() error { _, err := c.Get(ctx, "1", load, tags); return err }},
		{"hit", func() error { _, err := c.Get(ctx, "1", load, tags); return err }},
		{"set", func() error { return c.Set(ctx, "2", "w", tags) }},
		{"mark stale", func() error { return c.MarkStale(ctx, "2") }},
		{"stale read", func() error { _, err := c.Get(ctx, "2", load, tags); return err }},
		{"invalidate", func() error { return c.Invalidate(ctx, "1", "2", "3") }},
		{"tags", func() error { return store.InvalidateTags(ctx, "cat", "brand") }},
		{"soft tags", func() error { return store.MarkTagsStale(ctx, "cat") }},
		{"get many", func() error { _, err := c.GetMany(ctx, []string{"1", "3", "4", "5", "6"}, many, tags); return err }},
		{"get many hits", func() error { _, err := c.GetMany(ctx, []string{"1", "3", "4", "5", "6"}, many, tags); return err }},
		{"negative", func() error {
			_, err := c.Get(ctx, "9", func(context.Context) (string, error) { return "", aside.ErrNotFound })
			return nil2(err)
		}},
		{"inspect", func() error { _, err := c.Inspect(ctx, "1"); return err }},
		{"inspect by name", func() error { _, err := store.Inspect(ctx, c.Name(), "1", 0); return err }},
		{"purge", func() error { _, err := c.Purge(ctx); return err }},
		{"purge by name", func() error { _, err := store.Purge(ctx, c.Name()); return err }},
		{"get after it", func() error { _, err := c.Get(ctx, "1", load); return err }},
	}
	for _, st := range steps {
		if err := st.run(); err != nil {
			t.Errorf("%s: %v", st.name, err)
		}
	}
	store.Close() // background refreshes done: their errors count too
	mu.Lock()
	defer mu.Unlock()
	if len(redisErrs) != 0 {
		t.Errorf("%d Redis errors: %v", len(redisErrs), redisErrs)
	}
}

// TestClusterEveryPathIsSingleSlot runs every path on a real 3-master
// Cluster: a script or transaction touching two slots would fail there with
// CROSSSLOT, which exerciseAllPaths turns into a test failure.
func TestClusterEveryPathIsSingleSlot(t *testing.T) {
	requireCluster(t)
	b := &backend{cluster: clusterAddrs}
	exerciseAllPaths(t, b.client(t), uniquePrefix())
}

func stringsToAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// nil2 treats ErrNotFound as success.
func nil2(err error) error {
	if err != nil && strings.Contains(err.Error(), "not found") {
		return nil
	}
	return err
}
