package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterServer is a 3-master Cluster with a replica each, started (and
// restarted, node by node) by the project's scripts/redis-cluster.sh.
type clusterServer struct {
	dir, script string
	addrs       []string // the masters' at start
}

// startCluster runs the script in dir (found by walking up from here).
func startCluster(dir string) (*clusterServer, error) {
	script, err := findScript("scripts/redis-cluster.sh")
	if err != nil {
		return nil, err
	}
	c := &clusterServer{dir: dir, script: script}
	out, err := exec.Command("bash", script, "start", dir, "1").Output()
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("%s start: %w", script, err)
	}
	c.addrs = strings.Split(strings.TrimSpace(string(out)), ",")
	return c, nil
}

func findScript(rel string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if p := filepath.Join(dir, rel); fileExists(p) {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no %s above the working directory (run from the repository)", rel)
		}
		dir = parent
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func (c *clusterServer) stop() { _ = exec.Command("bash", c.script, "stop", c.dir).Run() }

// pid is the process of the node on port, from the script's pidfile.
func (c *clusterServer) pid(port string) (int, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, "redis-"+port+".pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func (c *clusterServer) signal(port string, sig syscall.Signal) error {
	pid, err := c.pid(port)
	if err != nil {
		return err
	}
	return syscall.Kill(pid, sig)
}

// restart starts the node of port again, with the cluster state it saved:
// it rejoins, as a replica if its slots moved on.
func (c *clusterServer) restart(port string) error {
	if out, err := exec.Command("bash", c.script, "restart", c.dir, port).CombinedOutput(); err != nil {
		return fmt.Errorf("restart node %s: %v: %s", port, err, out)
	}
	return nil
}

// node is one line of CLUSTER NODES.
type node struct {
	id, port, master string // master: the id a replica replicates
	isMaster, failed bool
}

func clusterNodes(ctx context.Context, admin redis.UniversalClient) ([]node, error) {
	s, err := admin.ClusterNodes(ctx).Result()
	if err != nil {
		return nil, err
	}
	var out []node
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		_, port, _ := strings.Cut(addr, ":")
		out = append(out, node{id: f[0], port: port, master: f[3],
			isMaster: strings.Contains(f[2], "master"), failed: strings.Contains(f[2], "fail")})
	}
	return out, nil
}

// aMaster picks a live master that has a live replica, and that replica.
func aMaster(ctx context.Context, admin redis.UniversalClient) (master, replica node, err error) {
	ns, err := clusterNodes(ctx, admin)
	if err != nil {
		return node{}, node{}, err
	}
	rand.Shuffle(len(ns), func(i, j int) { ns[i], ns[j] = ns[j], ns[i] })
	for _, m := range ns {
		if !m.isMaster || m.failed {
			continue
		}
		for _, r := range ns {
			if !r.isMaster && !r.failed && r.master == m.id {
				return m, r, nil
			}
		}
	}
	return node{}, node{}, errors.New("no master with a live replica")
}

// nodeClient is a client of the one node on port (close it after use).
func nodeClient(port string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + port, DisableIdentity: true, MaxRetries: -1})
}

// waitMaster waits until the node of port reports itself master.
func waitMaster(ctx context.Context, port string, within time.Duration) error {
	c := nodeClient(port)
	defer c.Close()
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if info, err := c.Info(ctx, "replication").Result(); err == nil && strings.Contains(info, "role:master") {
			return nil
		}
	}
	return fmt.Errorf("node %s not master after %v", port, within)
}

// waitHealthy waits until every node agrees the cluster is ok and no node
// is marked failed.
func waitHealthy(ctx context.Context, admin redis.UniversalClient, within time.Duration) error {
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ns, err := clusterNodes(ctx, admin)
		if err != nil {
			continue
		}
		ok := true
		for _, n := range ns {
			c := nodeClient(n.port)
			info, err := c.ClusterInfo(ctx).Result()
			_ = c.Close()
			ok = ok && !n.failed && err == nil && strings.Contains(info, "cluster_state:ok")
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("cluster not healthy after %v", within)
}
