package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// fault is one kind of failure the run injects: do injects it and returns
// how to undo it.
type fault struct {
	id, name string
	do       func(r *run) (undo func(), err error)
	// after is how long after the undo reads still count to the fault's
	// window (default 1 s).
	after time.Duration
	// excused: Redis itself loses acknowledged writes here, so stale reads
	// in the window are reported as what no cache over this Redis could
	// prevent, not as a broken guarantee.
	excused bool
	// mayOverlap: loads of one key may overlap — Redis itself fails
	// (degraded loads are per process; leases are lost with Redis' data or
	// evicted), or a lease holder dies or pauses (its waiters' budget ends).
	mayOverlap bool
	// slow: reads may wait longer than the liveness bound (see
	// liveBound) by design — a lease holder killed or paused (its waiters
	// wait out their budget, T6), a worker paused (its own reads pause), a
	// Cluster master lost (go-redis waits for the new topology).
	slow bool
	only string // "single" or "cluster": the only deployment it applies to
}

// restoredLife is how long an entry Redis brought back (from a snapshot, or
// a replica that had not received a DEL) can be served: TTL 3 s + 1 s
// jitter + the stale window's 5 s, and an L1 entry filled from one just
// before it expired. The excused windows last that long after the fault.
const restoredLife = 10 * time.Second

// faults is every kind, in the order a run injects them (round robin).
var faults = []fault{
	{id: "kill-reader", mayOverlap: true, slow: true, name: "SIGKILL a reader (loads in flight)", do: func(r *run) (func(), error) {
		p := r.anyAlive("reader")
		if p == nil {
			return nil, nil
		}
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait() // sets ProcessState: the process is no longer picked
		return func() { _, _ = r.spawn("reader") }, nil
	}},
	{id: "stop-reader", mayOverlap: true, slow: true, name: "SIGSTOP a reader past its L1 lease", do: func(r *run) (func(), error) {
		p := r.anyAlive("reader")
		if p == nil {
			return nil, nil
		}
		_ = p.cmd.Process.Signal(syscall.SIGSTOP)
		time.Sleep(1500 * time.Millisecond)
		return func() { _ = p.cmd.Process.Signal(syscall.SIGCONT) }, nil
	}},
	{id: "stall", mayOverlap: true, name: "Redis stalled (SIGSTOP 1 s; on the Cluster, a master)", do: func(r *run) (func(), error) {
		if r.cluster == nil {
			r.redis.signal(syscall.SIGSTOP)
			time.Sleep(time.Second)
			return func() { r.redis.signal(syscall.SIGCONT) }, nil
		}
		m, _, err := aMaster(context.Background(), r.admin)
		if err != nil {
			return nil, err
		}
		if err := r.cluster.signal(m.port, syscall.SIGSTOP); err != nil {
			return nil, err
		}
		time.Sleep(time.Second) // under the node timeout (2 s): no failover
		return func() { _ = r.cluster.signal(m.port, syscall.SIGCONT) }, nil
	}},
	{id: "restart", only: "single", mayOverlap: true, name: "Redis killed, restarted empty", do: func(r *run) (func(), error) {
		r.redis.kill()
		time.Sleep(300 * time.Millisecond)
		return func() { r.restartRedis("") }, nil
	}},
	{id: "pubsub", name: "CLIENT KILL TYPE pubsub", do: func(r *run) (func(), error) {
		return func() {}, r.eachNode(false, func(ctx context.Context, c *redis.Client) error {
			return c.ClientKillByFilter(ctx, "TYPE", "pubsub").Err()
		})
	}},
	{id: "kill-writer", name: "SIGKILL a writer between its commit and its invalidation", do: func(r *run) (func(), error) {
		p := r.anyAlive("writer")
		if p == nil {
			return nil, nil
		}
		_ = p.cmd.Process.Signal(syscall.SIGUSR1) // commit the next write, then hang before invalidating
		time.Sleep(300 * time.Millisecond)
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait() // sets ProcessState: the process is no longer picked
		return func() { _, _ = r.spawn("writer") }, nil
	}},
	{id: "latency", only: "single", mayOverlap: true, name: "60 ms latency on odd-numbered workers' Redis connections, 2 s", do: func(r *run) (func(), error) {
		r.proxy.SetLatency(60 * time.Millisecond)
		time.Sleep(2 * time.Second)
		return func() { r.proxy.SetLatency(0) }, nil
	}},
	{id: "blackhole", only: "single", mayOverlap: true, name: "black hole: odd-numbered workers' Redis traffic swallowed, 2 s", do: func(r *run) (func(), error) {
		r.proxy.SetBlackhole(true)
		time.Sleep(2 * time.Second)
		return func() { r.proxy.SetBlackhole(false) }, nil
	}},
	{id: "evict", mayOverlap: true, name: "memory pressure: maxmemory at half the data, allkeys-lru, 2 s", do: func(r *run) (func(), error) {
		err := r.eachNode(true, func(ctx context.Context, c *redis.Client) error {
			info, err := c.InfoMap(ctx, "memory").Result()
			if err != nil {
				return err
			}
			used, _ := strconv.ParseInt(info["Memory"]["used_memory"], 10, 64)
			base, _ := strconv.ParseInt(info["Memory"]["used_memory_startup"], 10, 64)
			if err := c.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
				return err
			}
			return c.ConfigSet(ctx, "maxmemory", strconv.FormatInt(base+(used-base)/2, 10)).Err()
		})
		time.Sleep(2 * time.Second)
		return func() {
			_ = r.eachNode(true, func(ctx context.Context, c *redis.Client) error { return c.ConfigSet(ctx, "maxmemory", "0").Err() })
		}, err
	}},
	{id: "old-snapshot", only: "single", mayOverlap: true, name: "Redis restarted from a snapshot 1.5 s old", excused: true,
		after: restoredLife,
		do: func(r *run) (func(), error) {
			snap, err := r.redis.snapshot(r.admin.(*redis.Client))
			if err != nil {
				return nil, err
			}
			time.Sleep(1500 * time.Millisecond) // writers invalidate meanwhile; the snapshot forgets it
			r.redis.kill()
			return func() { r.restartRedis(snap) }, nil
		}},
	{id: "failover", only: "cluster", excused: true, mayOverlap: true, slow: true, after: restoredLife,
		name: "replica promoted (CLUSTER FAILOVER)",
		do: func(r *run) (func(), error) {
			ctx := context.Background()
			_, replica, err := aMaster(ctx, r.admin)
			if err != nil {
				return nil, err
			}
			c := nodeClient(replica.port)
			defer c.Close()
			if err := c.ClusterFailover(ctx).Err(); err != nil {
				return nil, err
			}
			return func() {}, waitMaster(ctx, replica.port, 10*time.Second)
		}},
	{id: "kill-master", only: "cluster", excused: true, mayOverlap: true, slow: true, after: restoredLife,
		name: "a master SIGKILLed (its replica promoted), then restarted",
		do: func(r *run) (func(), error) {
			ctx := context.Background()
			master, replica, err := aMaster(ctx, r.admin)
			if err != nil {
				return nil, err
			}
			if err := r.cluster.signal(master.port, syscall.SIGKILL); err != nil {
				return nil, err
			}
			err = waitMaster(ctx, replica.port, 15*time.Second) // node timeout 2 s, then the election
			return func() {
				if err := r.cluster.restart(master.port); err != nil {
					fmt.Fprintln(os.Stderr, "chaos:", err)
				}
				_ = waitHealthy(ctx, r.admin, 15*time.Second)
			}, err
		}},
	{id: "reshard", only: "cluster", mayOverlap: true, name: "resharding: 300 slots moved between masters, with their keys",
		do: func(r *run) (func(), error) {
			ctx := context.Background()
			from, _, err := aMaster(ctx, r.admin)
			if err != nil {
				return nil, err
			}
			to, _, err := aMaster(ctx, r.admin)
			for i := 0; err == nil && to.id == from.id && i < 10; i++ {
				to, _, err = aMaster(ctx, r.admin)
			}
			if err != nil || to.id == from.id {
				return nil, fmt.Errorf("two masters: %v", err)
			}
			out, err := exec.Command("redis-cli", "--cluster", "reshard", "127.0.0.1:"+from.port, "--cluster-from", from.id,
				"--cluster-to", to.id, "--cluster-slots", "300", "--cluster-yes", "--cluster-pipeline", "100").CombinedOutput()
			if err != nil {
				return nil, fmt.Errorf("reshard: %v: %s", err, lastLine(out))
			}
			return func() {}, nil
		}},
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// pickFaults returns the faults a comma-separated list of ids names, in
// their run order; "all" (or "") is every one that applies to the
// deployment (single node, or a Cluster).
func pickFaults(list string, cluster bool) ([]fault, error) {
	mode := map[bool]string{false: "single", true: "cluster"}[cluster]
	all := list == "" || list == "all"
	want := map[string]bool{}
	for _, id := range strings.Split(list, ",") {
		want[strings.TrimSpace(id)] = !all
	}
	var out []fault
	for _, f := range faults {
		switch {
		case f.only != "" && f.only != mode && want[f.id]:
			return nil, fmt.Errorf("fault %q applies to a %s deployment only", f.id, f.only)
		case f.only != "" && f.only != mode:
		case all || want[f.id]:
			out = append(out, f)
		}
		delete(want, f.id)
	}
	for id, named := range want {
		if named {
			return nil, fmt.Errorf("unknown fault %q (known: %s)", id, faultIDList())
		}
	}
	return out, nil
}

// eachNode runs fn on the run's Redis, or on every node of the Cluster
// (masters only, if mastersOnly).
func (r *run) eachNode(mastersOnly bool, fn func(context.Context, *redis.Client) error) error {
	ctx := context.Background()
	switch a := r.admin.(type) {
	case *redis.ClusterClient:
		if mastersOnly {
			return a.ForEachMaster(ctx, fn)
		}
		return a.ForEachShard(ctx, fn)
	case *redis.Client:
		return fn(ctx, a)
	}
	return fmt.Errorf("admin client %T", r.admin)
}

func faultIDList() string {
	var ids []string
	for _, f := range faults {
		ids = append(ids, f.id)
	}
	return strings.Join(ids, ", ")
}

// anyAlive returns a random live worker of role, nil if none lives. The
// first worker of each role is never picked: it lives through the run, so
// that its heap and goroutines can be checked from warm-up to the end.
func (r *run) anyAlive(role string) *proc {
	var ps []*proc
	for _, p := range r.procs {
		if p.role == role && p.cmd.ProcessState == nil && p != r.first(role) {
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		return nil
	}
	return ps[rand.IntN(len(ps))]
}

// first is the first worker of role the run spawned.
func (r *run) first(role string) *proc {
	for _, p := range r.procs {
		if p.role == role {
			return p
		}
	}
	return nil
}

// restartRedis starts the run's Redis again on its port, from the snapshot
// file rdb ("": empty). The port can still be held for a moment by the
// killed server's sockets: it tries again rather than leave Redis away.
func (r *run) restartRedis(rdb string) {
	for try := 0; ; try++ {
		err := r.redis.start(rdb)
		if err == nil {
			return
		}
		if try == 4 {
			fmt.Fprintln(os.Stderr, "chaos: restart redis:", err)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}
