package aside_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// The topologies the README claims beside a single node and a Cluster: a
// two-shard Ring and a Sentinel group, started by the tests on free
// loopback ports and stopped by PID.

// startRing starts two redis-servers and returns a function that makes a
// Ring client over them.
func startRing(t *testing.T) func(t testing.TB) redis.UniversalClient {
	addrs := startRingShards(t)
	return func(t testing.TB) redis.UniversalClient {
		rdb := redis.NewRing(&redis.RingOptions{Addrs: addrs, ContextTimeoutEnabled: true, MaxRetries: -1,
			DialTimeout: 200 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second, DisableIdentity: true})
		t.Cleanup(func() { _ = rdb.Close() })
		return rdb
	}
}

// startRingShards starts the two redis-servers of a Ring, stopped when t
// ends, and returns their addresses by shard name.
func startRingShards(t testing.TB) map[string]string {
	requireLong(t)
	requireReal(t)
	addrs := map[string]string{}
	for _, name := range []string{"s1", "s2"} {
		p, err := startRedis(0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.stop)
		addrs[name] = p.addr
	}
	return addrs
}

// sentinelGroup is a master, one replica and one sentinel (quorum 1).
type sentinelGroup struct {
	sentinel string // the sentinel's address
	procs    []*redisProc
}

const sentinelMaster = "mymaster"

func startSentinelGroup(t *testing.T) *sentinelGroup {
	requireLong(t)
	requireReal(t)
	g := &sentinelGroup{}
	t.Cleanup(func() {
		for _, p := range g.procs {
			p.stop()
		}
	})
	master, err := startRedis(0)
	if err != nil {
		t.Fatal(err)
	}
	g.procs = append(g.procs, master)
	replica, err := startRedis(0, "--replicaof", "127.0.0.1", strconv.Itoa(master.port))
	if err != nil {
		t.Fatal(err)
	}
	g.procs = append(g.procs, replica)
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "aside-sentinel-")
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\nsentinel monitor %s 127.0.0.1 %d 1\n"+
		"sentinel down-after-milliseconds %s 1000\nsentinel failover-timeout %s 5000\n",
		port, dir, filepath.Join(dir, "sentinel.log"), sentinelMaster, master.port, sentinelMaster, sentinelMaster)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, conf, "--sentinel")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g.procs = append(g.procs, &redisProc{cmd: cmd, addr: "127.0.0.1:" + strconv.Itoa(port), port: port, dir: dir})
	g.sentinel = "127.0.0.1:" + strconv.Itoa(port)
	// Ready when the sentinel knows the replica and the replica has synced.
	sc := redis.NewSentinelClient(&redis.Options{Addr: g.sentinel, DisableIdentity: true})
	defer sc.Close()
	rc := redis.NewClient(&redis.Options{Addr: replica.addr, DisableIdentity: true})
	defer rc.Close()
	eventuallyWithin(t, 20*time.Second, "the sentinel group", func() bool {
		reps, err := sc.Replicas(bgCtx, sentinelMaster).Result()
		info, _ := rc.Info(bgCtx, "replication").Result()
		return err == nil && len(reps) > 0 && strings.Contains(info, "master_link_status:up")
	})
	return g
}

// client returns a Sentinel failover client of the group.
func (g *sentinelGroup) client(t testing.TB) redis.UniversalClient {
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: sentinelMaster, SentinelAddrs: []string{g.sentinel},
		ContextTimeoutEnabled: true, MaxRetries: -1, DialTimeout: 200 * time.Millisecond,
		ReadTimeout: time.Second, WriteTimeout: time.Second, DisableIdentity: true})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// cutReplication makes the replica at addr fail its replication handshake.
func (g *sentinelGroup) cutReplication(t *testing.T, addr string) {
	rc := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	defer rc.Close()
	if err := rc.ConfigSet(bgCtx, "masterauth", "wrong").Err(); err != nil {
		t.Fatal(err)
	}
	_ = rc.ClientKillByFilter(bgCtx, "TYPE", "master").Err()
	eventuallyWithin(t, 10*time.Second, "replication cut", func() bool {
		info, _ := rc.Info(bgCtx, "replication").Result()
		return strings.Contains(info, "master_link_status:down")
	})
}

// healReplication undoes cutReplication and waits for the link.
func (g *sentinelGroup) healReplication(t *testing.T, addr string) {
	rc := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	defer rc.Close()
	if err := rc.ConfigSet(bgCtx, "masterauth", "").Err(); err != nil {
		t.Fatal(err)
	}
	eventuallyWithin(t, 20*time.Second, "replication back", func() bool {
		info, _ := rc.Info(bgCtx, "replication").Result()
		return strings.Contains(info, "master_link_status:up")
	})
}

// master returns the current master's address.
func (g *sentinelGroup) master(t *testing.T) string {
	sc := redis.NewSentinelClient(&redis.Options{Addr: g.sentinel, DisableIdentity: true})
	defer sc.Close()
	a, err := sc.GetMasterAddrByName(bgCtx, sentinelMaster).Result()
	if err != nil {
		t.Fatal(err)
	}
	return a[0] + ":" + a[1]
}

// failover makes the sentinel promote the replica, and waits until the new
// master says so and the demoted one follows it.
func (g *sentinelGroup) failover(t *testing.T) {
	sc := redis.NewSentinelClient(&redis.Options{Addr: g.sentinel, DisableIdentity: true})
	defer sc.Close()
	before, err := sc.GetMasterAddrByName(bgCtx, sentinelMaster).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Failover(bgCtx, sentinelMaster).Err(); err != nil {
		t.Fatal(err)
	}
	eventuallyWithin(t, 20*time.Second, "the failover", func() bool {
		now, err := sc.GetMasterAddrByName(bgCtx, sentinelMaster).Result()
		if err != nil || now[1] == before[1] {
			return false
		}
		nc := redis.NewClient(&redis.Options{Addr: now[0] + ":" + now[1], DisableIdentity: true})
		defer nc.Close()
		oc := redis.NewClient(&redis.Options{Addr: before[0] + ":" + before[1], DisableIdentity: true})
		defer oc.Close()
		newRole, _ := nc.Info(bgCtx, "replication").Result()
		oldRole, _ := oc.Info(bgCtx, "replication").Result()
		return strings.Contains(newRole, "role:master") && strings.Contains(oldRole, "role:slave")
	})
}

func eventuallyWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestT17BusOnRing: on a two-shard Ring, every invalidation reaches every
// subscribed Store's L1, for several prefixes (so that the bus channel lands
// on either shard). Broken variant: PUBLISH routed as go-redis routes a
// keyless command — in a pipeline, to the shard of the word "publish".
func TestT17BusOnRing(t *testing.T) {
	newRing := startRing(t)
	expectBroken(t, "invalidations reach the other Store's L1", func(broken bool) bool {
		const prefixes = 12 // the broken variant escapes only if all land on one shard: 1 in 4096
		var failed atomic.Int32
		var wg sync.WaitGroup
		for range prefixes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if !ringPairHears(t, newRing, broken) {
					failed.Add(1)
				}
			}()
		}
		wg.Wait()
		return failed.Load() == 0
	})
}

// ringPairHears runs two Stores with L1 on one prefix of the Ring: B caches
// k in L1, A invalidates it; B must hear it and answer the new value.
func ringPairHears(t *testing.T, newRing func(testing.TB) redis.UniversalClient, broken bool) bool {
	prefix := uniquePrefix()
	var stores []*aside.Store
	var caches []*aside.Cache[int]
	for range 2 {
		s, err := aside.NewStore(newRing(t), aside.WithPrefix(prefix), aside.WithOpTimeout(time.Second))
		if err != nil {
			t.Error(err)
			return false
		}
		t.Cleanup(func() { _ = s.Close() })
		aside.SetStoreHooks(s, &aside.TestHooks{KeylessPublish: broken})
		c, err := aside.New[int](s, "items", aside.WithL1(100, time.Minute))
		if err != nil {
			t.Error(err)
			return false
		}
		stores, caches = append(stores, s), append(caches, c)
	}
	if !within(2*time.Second, func() bool { up, _, _ := aside.BusState(stores[1]); return up }) {
		return false // B never heard its own heartbeats: it would have served L1 without hearing anything
	}
	var db atomic.Int64
	db.Store(1)
	load := func(context.Context) (int, error) { return int(db.Load()), nil }
	for range 2 {
		if _, err := caches[1].Get(bgCtx, "k", load); err != nil {
			t.Error(err)
			return false
		}
	}
	db.Store(2)
	if err := caches[0].Invalidate(bgCtx, "k"); err != nil {
		t.Error(err)
		return false
	}
	return within(time.Second, func() bool { v, err := caches[1].Get(bgCtx, "k", load); return err == nil && v == 2 })
}

func within(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// TestT16BusFollowsSentinelFailover: after SENTINEL FAILOVER, every
// Store's bus follows the new master: within a heartbeat timeout the Store
// whose subscription sat on the demoted node resets its L1 and hears
// invalidations again, and from then on no L1 serves an invalidated value.
// Broken variant: the bus trusts its connection, not heartbeats (v1).
func TestT16BusFollowsSentinelFailover(t *testing.T) {
	g := startSentinelGroup(t)
	expectBroken(t, "no L1 serves an invalidated value after the switch", func(broken bool) bool {
		prefix := uniquePrefix()
		const opTimeout = 200 * time.Millisecond
		sa, err := aside.NewStore(g.client(t), aside.WithPrefix(prefix), aside.WithOpTimeout(opTimeout))
		if err != nil {
			t.Fatal(err)
		}
		defer sa.Close()
		sb, err := aside.NewStore(g.client(t), aside.WithPrefix(prefix), aside.WithOpTimeout(opTimeout))
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Close()
		// B's subscription starts on the current master through a client of
		// that node alone: when the switch drops it, it comes back there.
		master := g.master(t)
		aside.SetStoreHooks(sb, &aside.TestHooks{NoHeartbeat: broken, SubscribeVia: newClient(t, master)})
		ca := newCache[int](t, sa)
		cb := newCache[int](t, sb, aside.WithL1(100, time.Minute))
		eventually(t, "B's subscription", func() bool { up, _, _ := aside.BusState(sb); return up })
		var db atomic.Int64
		db.Store(1)
		load := func(context.Context) (int, error) { return int(db.Load()), nil }
		for range 2 {
			if _, err := cb.Get(bgCtx, "k", load); err != nil {
				t.Fatal(err)
			}
		}
		_, epoch, _ := aside.BusState(sb)
		g.failover(t)
		// The demoted node stops replicating (a failed handshake, as in a
		// long resync or a partition): what is published on the new master
		// no longer reaches subscribers left on it.
		g.cutReplication(t, master)
		defer g.healReplication(t, master)
		// B's bus has noticed the switch (its connection was dropped) and is
		// up again; B caches k in L1 again, then A invalidates it.
		eventuallyWithin(t, 10*time.Second, "B's bus back after the switch", func() bool {
			up, e, _ := aside.BusState(sb)
			return up && e != epoch
		})
		// A's client has moved to the new master: its writes succeed.
		eventuallyWithin(t, 10*time.Second, "A on the new master", func() bool { return ca.Invalidate(bgCtx, "other") == nil })
		for range 2 {
			if _, err := cb.Get(bgCtx, "k", load); err != nil {
				t.Fatal(err)
			}
		}
		_, _, heard := aside.BusState(sb)
		db.Store(2)
		defer func() {
			_, _, h := aside.BusState(sb)
			t.Logf("broken=%v: B heard %d invalidations after the switch", broken, h-heard)
		}()
		eventuallyWithin(t, 10*time.Second, "an invalidation on the new master", func() bool { return ca.Invalidate(bgCtx, "k") == nil })
		// The bound: one heartbeat interval plus two op timeouts, plus the
		// time to resubscribe and hear a heartbeat again.
		if !within(3*time.Second, func() bool { v, err := cb.Get(bgCtx, "k", load); return err == nil && v == 2 }) {
			return false
		}
		for range 20 { // and from then on, never the old value
			if v, err := cb.Get(bgCtx, "k", load); err != nil || v != 2 {
				return false
			}
			time.Sleep(5 * time.Millisecond)
		}
		// The bus is on the new master: a second invalidation is heard.
		db.Store(3)
		eventuallyWithin(t, 5*time.Second, "B's L1 in use again", func() bool {
			up, _, _ := aside.BusState(sb)
			return up
		})
		if _, err := cb.Get(bgCtx, "k", load); err != nil {
			t.Fatal(err)
		}
		if err := ca.Invalidate(bgCtx, "k"); err != nil {
			t.Fatal(err)
		}
		return within(time.Second, func() bool { v, err := cb.Get(bgCtx, "k", load); return err == nil && v == 3 })
	})
}
