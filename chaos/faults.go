package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
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
}

// faults is every kind, in the order a run injects them (round robin).
var faults = []fault{
	{id: "kill-reader", mayOverlap: true, name: "SIGKILL a reader (loads in flight)", do: func(r *run) (func(), error) {
		p := r.anyAlive("reader")
		if p == nil {
			return nil, nil
		}
		_ = p.cmd.Process.Kill()
		_, _ = p.cmd.Process.Wait()
		return func() { _, _ = r.spawn("reader") }, nil
	}},
	{id: "stop-reader", mayOverlap: true, name: "SIGSTOP a reader past its L1 lease", do: func(r *run) (func(), error) {
		p := r.anyAlive("reader")
		if p == nil {
			return nil, nil
		}
		_ = p.cmd.Process.Signal(syscall.SIGSTOP)
		time.Sleep(1500 * time.Millisecond)
		return func() { _ = p.cmd.Process.Signal(syscall.SIGCONT) }, nil
	}},
	{id: "stall", mayOverlap: true, name: "Redis stalled (SIGSTOP 1 s)", do: func(r *run) (func(), error) {
		r.redis.signal(syscall.SIGSTOP)
		time.Sleep(time.Second)
		return func() { r.redis.signal(syscall.SIGCONT) }, nil
	}},
	{id: "restart", mayOverlap: true, name: "Redis killed, restarted empty", do: func(r *run) (func(), error) {
		r.redis.kill()
		time.Sleep(300 * time.Millisecond)
		return func() { r.restartRedis("") }, nil
	}},
	{id: "pubsub", name: "CLIENT KILL TYPE pubsub", do: func(r *run) (func(), error) {
		return func() {}, r.admin.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Err()
	}},
	{id: "kill-writer", name: "SIGKILL a writer between its commit and its invalidation", do: func(r *run) (func(), error) {
		p := r.anyAlive("writer")
		if p == nil {
			return nil, nil
		}
		_ = p.cmd.Process.Signal(syscall.SIGUSR1) // commit the next write, then hang before invalidating
		time.Sleep(300 * time.Millisecond)
		_ = p.cmd.Process.Kill()
		_, _ = p.cmd.Process.Wait()
		return func() { _, _ = r.spawn("writer") }, nil
	}},
	{id: "latency", mayOverlap: true, name: "60 ms latency on odd-numbered workers' Redis connections, 2 s", do: func(r *run) (func(), error) {
		r.proxy.SetLatency(60 * time.Millisecond)
		time.Sleep(2 * time.Second)
		return func() { r.proxy.SetLatency(0) }, nil
	}},
	{id: "blackhole", mayOverlap: true, name: "black hole: odd-numbered workers' Redis traffic swallowed, 2 s", do: func(r *run) (func(), error) {
		r.proxy.SetBlackhole(true)
		time.Sleep(2 * time.Second)
		return func() { r.proxy.SetBlackhole(false) }, nil
	}},
	{id: "evict", mayOverlap: true, name: "memory pressure: maxmemory at half the data, allkeys-lru, 2 s", do: func(r *run) (func(), error) {
		ctx := context.Background()
		info, err := r.admin.InfoMap(ctx, "memory").Result()
		if err != nil {
			return nil, err
		}
		used, _ := strconv.ParseInt(info["Memory"]["used_memory"], 10, 64)
		base, _ := strconv.ParseInt(info["Memory"]["used_memory_startup"], 10, 64)
		limit := base + (used-base)/2
		if err := r.admin.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
			return nil, err
		}
		if err := r.admin.ConfigSet(ctx, "maxmemory", strconv.FormatInt(limit, 10)).Err(); err != nil {
			return nil, err
		}
		time.Sleep(2 * time.Second)
		return func() { _ = r.admin.ConfigSet(ctx, "maxmemory", "0").Err() }, nil
	}},
	{id: "old-snapshot", mayOverlap: true, name: "Redis restarted from a snapshot 1.5 s old", excused: true,
		// Until every restored entry has expired: TTL 3 s + 1 s jitter + the
		// stale window's 5 s, and an L1 entry filled from one just before.
		after: 10 * time.Second,
		do: func(r *run) (func(), error) {
			snap, err := r.redis.snapshot(r.admin)
			if err != nil {
				return nil, err
			}
			time.Sleep(1500 * time.Millisecond) // writers invalidate meanwhile; the snapshot forgets it
			r.redis.kill()
			return func() { r.restartRedis(snap) }, nil
		}},
}

// pickFaults returns the faults a comma-separated list of ids names, in
// their run order; "all" (or "") is every one.
func pickFaults(list string) ([]fault, error) {
	if list == "" || list == "all" {
		return faults, nil
	}
	want := map[string]bool{}
	for _, id := range strings.Split(list, ",") {
		want[strings.TrimSpace(id)] = true
	}
	var out []fault
	for _, f := range faults {
		if want[f.id] {
			out = append(out, f)
			delete(want, f.id)
		}
	}
	for id := range want {
		return nil, fmt.Errorf("unknown fault %q (known: %s)", id, faultIDList())
	}
	return out, nil
}

func faultIDList() string {
	var ids []string
	for _, f := range faults {
		ids = append(ids, f.id)
	}
	return strings.Join(ids, ", ")
}

// anyAlive returns a random live worker of role, nil if none lives.
func (r *run) anyAlive(role string) *proc {
	var ps []*proc
	for _, p := range r.procs {
		if p.role == role && p.cmd.ProcessState == nil {
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		return nil
	}
	return ps[rand.IntN(len(ps))]
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
