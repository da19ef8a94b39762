package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterAddrs returns -cluster's masters: the addresses given, or those of
// a Cluster it starts (scripts/redis-cluster.sh, 3 masters without
// replicas), with the function that stops it.
func clusterAddrs() (addrs []string, stop func(), err error) {
	if *cluster != "start" {
		return strings.Split(*cluster, ","), func() {}, nil
	}
	dir, err := os.MkdirTemp("", "aside-bench-cluster-")
	if err != nil {
		return nil, nil, err
	}
	script := "../scripts/redis-cluster.sh"
	out, err := exec.Command("bash", script, "start", dir, "0").Output()
	stop = func() {
		_ = exec.Command("bash", script, "stop", dir).Run()
		_ = os.RemoveAll(dir)
	}
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("starting a Cluster with %s: %w", script, err)
	}
	return strings.Split(strings.TrimSpace(string(out)), ","), stop, nil
}

// clusterPaths is the paths again on a 3-master Cluster (-cluster).
func clusterPaths(ctx context.Context) {
	if *cluster == "" {
		return
	}
	addrs, stop, err := clusterAddrs()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	defer stop()
	shardedPaths(ctx, "a 3-master Cluster", func() redis.UniversalClient { return newClusterClient(addrs) })
}

// ringPaths is the paths again on a 3-shard Ring (-ring).
func ringPaths(ctx context.Context) {
	if *ring == "" {
		return
	}
	shards, stop, err := ringShards()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	defer stop()
	shardedPaths(ctx, "a 3-shard Ring", func() redis.UniversalClient { return newRing(shards) })
}

// shardedPaths runs the hit, miss and batch tables on a Cluster or a Ring:
// the Redis subjects only, each on a client of its own.
func shardedPaths(ctx context.Context, on string, newClient func() redis.UniversalClient) {
	subs := shardedSubjects(newClient)
	defer func() {
		for _, s := range subs {
			if s.close != nil {
				s.close()
			}
		}
	}()
	hitTable(ctx, "Hit, on "+on, subs)
	misses(ctx, "Miss + fill, on "+on+" (instant loader, a new key each time)", subs)
	rdb := newClient()
	defer rdb.Close()
	batch(ctx, "100 keys across nodes, all cached, on "+on, rdb)
}

// ringShards returns -ring's shards: the addresses given (named s1, s2,
// ...), or those of three redis-servers it starts on free loopback ports,
// with the function that stops them.
func ringShards() (shards map[string]string, stop func(), err error) {
	shards = map[string]string{}
	if *ring != "start" {
		for i, a := range strings.Split(*ring, ",") {
			shards["s"+strconv.Itoa(i+1)] = a
		}
		return shards, func() {}, nil
	}
	var procs []*exec.Cmd
	stop = func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}
	for i := range 3 {
		addr, p, err := startRedis()
		if err != nil {
			stop()
			return nil, nil, err
		}
		procs = append(procs, p)
		shards["s"+strconv.Itoa(i+1)] = addr
	}
	return shards, stop, nil
}

// startRedis starts a redis-server that keeps nothing on disk on a free
// loopback port, and waits until it answers.
func startRedis() (string, *exec.Cmd, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := ln.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	_ = ln.Close()
	p := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := p.Start(); err != nil {
		return "", nil, fmt.Errorf("starting redis-server: %w", err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	defer rdb.Close()
	for range 100 {
		if rdb.Ping(context.Background()).Err() == nil {
			return addr, p, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = p.Process.Kill()
	_ = p.Wait()
	return "", nil, fmt.Errorf("redis-server on %s did not answer", addr)
}
