package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
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

// clusterPaths is the paths again on a 3-master Cluster (-cluster): the
// hit, miss and batch tables, the Redis subjects only, each on a
// ClusterClient of its own.
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
	subs := clusterSubjects(addrs)
	defer func() {
		for _, s := range subs {
			if s.close != nil {
				s.close()
			}
		}
	}()
	hitTable(ctx, "Hit, on a 3-master Cluster", subs)
	misses(ctx, "Miss + fill, on a 3-master Cluster (instant loader, a new key each time)", subs)
	cc := newClusterClient(addrs)
	defer cc.Close()
	batch(ctx, "100 keys across slots, all cached, on a 3-master Cluster", cc)
}
