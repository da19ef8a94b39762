package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asidecache/aside"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// The command is tested against redis-servers the tests start: one node,
// and a 3-master Cluster (scripts/redis-cluster.sh) under CI or ASIDE_LONG.
// Under CI=true a server that cannot be started fails the tests.
var (
	nodeAddr     string
	clusterAddrs []string
	nextPrefix   atomic.Int64
)

func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{})
	dir, err := os.MkdirTemp("", "aside-cmd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var node *exec.Cmd
	if port, err := freePort(); err == nil {
		node = exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
		if node.Start() == nil && waitUp(fmt.Sprint("127.0.0.1:", port)) {
			nodeAddr = fmt.Sprint("127.0.0.1:", port)
		}
	}
	var clusterDir string
	if os.Getenv("CI") == "true" || os.Getenv("ASIDE_LONG") != "" {
		clusterDir = filepath.Join(dir, "cluster")
		_ = os.Mkdir(clusterDir, 0o700)
		out, err := exec.Command("bash", "../../scripts/redis-cluster.sh", "start", clusterDir, "0").Output()
		if err == nil {
			clusterAddrs = strings.Split(strings.TrimSpace(string(out)), ",")
		} else {
			fmt.Fprintln(os.Stderr, "cmd/aside tests: no Redis Cluster:", err)
		}
	}
	code := m.Run()
	if clusterDir != "" {
		_ = exec.Command("bash", "../../scripts/redis-cluster.sh", "stop", clusterDir).Run()
	}
	if node != nil && node.Process != nil {
		_ = node.Process.Kill()
		_ = node.Wait()
	}
	_ = os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitUp(addr string) bool {
	for range 100 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// topology is one Redis the commands run against.
type topology struct {
	name string
	args []string // the command's connection flags
	rdb  func(t *testing.T) redis.UniversalClient
}

func topologies(t *testing.T) []topology {
	need := func(ok bool, what string) bool {
		if ok {
			return true
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s required under CI: install redis-server and redis-cli", what)
		}
		return false
	}
	var out []topology
	if need(nodeAddr != "", "a redis-server") {
		out = append(out, topology{"node", []string{"-u", "redis://" + nodeAddr}, func(t *testing.T) redis.UniversalClient {
			rdb := redis.NewClient(&redis.Options{Addr: nodeAddr, ContextTimeoutEnabled: true, DisableIdentity: true})
			t.Cleanup(func() { rdb.Close() })
			return rdb
		}})
	} else {
		t.Log("no redis-server: the node's cases did not run")
	}
	if len(clusterAddrs) > 0 || os.Getenv("CI") == "true" {
		if need(len(clusterAddrs) > 0, "a Redis Cluster") {
			out = append(out, topology{"cluster", []string{"-cluster", "-u", "redis://" + strings.Join(clusterAddrs, ",")}, func(t *testing.T) redis.UniversalClient {
				rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: clusterAddrs, ContextTimeoutEnabled: true, DisableIdentity: true})
				t.Cleanup(func() { rdb.Close() })
				return rdb
			}})
		}
	}
	return out
}

// aside runs the command in-process.
func aside_(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

type product struct {
	Name  string
	Price int
	Blob  string
}

// TestCommands runs each subcommand against an application's data, on a
// node and on a Cluster, and parses its -json output back.
func TestCommands(t *testing.T) {
	for _, topo := range topologies(t) {
		t.Run(topo.name, func(t *testing.T) { runCommands(t, topo) })
	}
}

func runCommands(t *testing.T, topo topology) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := fmt.Sprintf("cmd%d-%d", os.Getpid(), nextPrefix.Add(1))
	rdb := topo.rdb(t)
	// The application: a Store whose products cache keeps an L1.
	app, err := aside.NewStore(rdb, aside.WithPrefix(prefix), aside.WithOpTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	products, err := aside.New[product](app, "products", aside.WithL1(100, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	users, err := aside.New[string](app, "users", aside.WithVersion(2))
	if err != nil {
		t.Fatal(err)
	}
	version := map[string]int{}
	load := func(key string) aside.Loader[product] {
		return func(context.Context) (product, error) {
			blob := ""
			if key == "big" {
				blob = strings.Repeat("x", 5000)
			}
			return product{Name: key, Price: version[key], Blob: blob}, nil
		}
	}
	for _, k := range []string{"p1", "p2", "p3", "big"} {
		if _, err := products.Get(ctx, k, load(k), aside.Tags("catalog")); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if _, err := users.Get(ctx, fmt.Sprint("u", i), func(context.Context) (string, error) { return "someone", nil }); err != nil {
			t.Fatal(err)
		}
	}
	if err := app.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	cmd := func(args ...string) (int, string, string) {
		return aside_(append(append(append([]string{}, topo.args...), "-prefix", prefix), args...)...)
	}

	// inspect, as text and as JSON.
	code, out, errOut := cmd("inspect", "products", "p1")
	if code != 0 || !strings.Contains(out, "tag       catalog: current") || !strings.Contains(out, "Name:p1") {
		t.Fatalf("inspect: %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = cmd("-json", "inspect", "products", "big")
	var entry struct {
		Found   bool     `json:"found"`
		Version int      `json:"version"`
		Flags   []string `json:"flags"`
		Size    int      `json:"size"`
		Payload int      `json:"payload_size"`
		TTL     int64    `json:"ttl_ms"`
		Value   struct{ Name string }
		Tags    []struct{ Name, State string }
	}
	if err := json.Unmarshal([]byte(out), &entry); code != 0 || err != nil {
		t.Fatalf("inspect -json: %d %v\n%s%s", code, err, out, errOut)
	}
	if !entry.Found || entry.Version != 1 || entry.Value.Name != "big" || len(entry.Flags) != 1 || entry.Flags[0] != "s2" ||
		entry.Size >= entry.Payload || entry.TTL <= 0 || len(entry.Tags) != 1 || entry.Tags[0].State != "current" {
		t.Errorf("inspect -json big: %+v", entry)
	}
	if code, out, _ = cmd("-json", "inspect", "users", "u1"); code != 0 || !strings.Contains(out, `"version": 2`) || !strings.Contains(out, `"value": "someone"`) {
		t.Errorf("inspect users u1 (version 2, found by itself): %d\n%s", code, out)
	}
	if code, out, _ = cmd("inspect", "products", "nope"); code != 0 || !strings.Contains(out, "entry     none") {
		t.Errorf("inspect of a missing key: %d\n%s", code, out)
	}

	// stats: every entry, its bytes, the histogram, the biggest.
	code, out, errOut = cmd("-json", "stats")
	var report statsReport
	if err := json.Unmarshal([]byte(out), &report); code != 0 || err != nil {
		t.Fatalf("stats -json: %d %v\n%s%s", code, err, out, errOut)
	}
	got := map[string]*cacheStats{}
	for _, c := range report.Caches {
		got[c.Cache] = c
	}
	p, u := got["products"], got["users"]
	if p == nil || u == nil || len(report.Caches) != 2 {
		t.Fatalf("stats: caches %+v", report.Caches)
	}
	if p.Entries != 4 || p.Versions["v1"] != 4 || p.Bytes <= 0 || p.Memory < p.Bytes || p.Sampled != 4 || len(p.Biggest) != 4 || p.Biggest[0].Key != "big" {
		t.Errorf("stats products: %+v", p)
	}
	var inHist int64
	for _, b := range p.Sizes {
		inHist += b.Count
	}
	if inHist != p.Entries || u.Entries != 5 || u.Versions["v2"] != 5 || report.Tags != 1 {
		t.Errorf("stats: histogram holds %d of %d products, users %+v, %d tag keys", inHist, p.Entries, u, report.Tags)
	}
	if code, out, _ = cmd("stats", "users"); code != 0 || !strings.Contains(out, "users") || strings.Contains(out, "products") {
		t.Errorf("stats users: %d\n%s", code, out)
	}

	// invalidate a key: the running application's L1 hears it.
	version["p1"] = 2
	if v, _ := products.Get(ctx, "p1", load("p1")); v.Price != 0 {
		t.Fatalf("before: %+v (from L1)", v)
	}
	if code, out, errOut = cmd("invalidate", "products", "p1"); code != 0 || !strings.Contains(out, "1 key(s) invalidated") {
		t.Fatalf("invalidate: %d\n%s%s", code, out, errOut)
	}
	if v, err := products.Get(ctx, "p1", load("p1")); err != nil || v.Price != 2 {
		t.Errorf("after invalidate: %+v %v: the application still serves the old value", v, err)
	}
	// Tags, soft and hard.
	if code, _, errOut = cmd("invalidate", "-stale", "-tags", "catalog"); code != 0 {
		t.Fatalf("invalidate -stale -tags: %d %s", code, errOut)
	}
	if info, err := app.Inspect(ctx, "products", "p2", 0); err != nil || info.Tags[0].State != "soft-stale" {
		t.Errorf("after -stale -tags catalog: %+v %v", info.Tags, err)
	}
	if code, out, _ = cmd("-json", "invalidate", "-tags", "catalog"); code != 0 || !strings.Contains(out, `"invalidated": 1`) {
		t.Fatalf("invalidate -tags -json: %d %s", code, out)
	}
	if info, err := app.Inspect(ctx, "products", "p2", 0); err != nil || info.Tags[0].State != "invalidated" {
		t.Errorf("after -tags catalog: %+v %v", info.Tags, err)
	}

	// purge: refused without -yes, then every entry of the cache.
	if code, _, errOut = cmd("purge", "products"); code != 2 || !strings.Contains(errOut, "pass -yes") {
		t.Errorf("purge without -yes: %d %s", code, errOut)
	}
	code, out, errOut = cmd("-json", "purge", "-yes", "products")
	var purged struct{ Deleted int }
	if err := json.Unmarshal([]byte(out), &purged); code != 0 || err != nil || purged.Deleted < 3 {
		t.Fatalf("purge: %d %v %+v %s", code, err, purged, errOut)
	}
	if code, out, _ = cmd("-json", "stats"); code != 0 || strings.Contains(out, `"products"`) || !strings.Contains(out, `"users"`) {
		t.Errorf("stats after purge: %d\n%s", code, out)
	}
}

// TestBadInput: every mistake gets a clear "aside: " error and exit status 2
// (the command line) or 1 (what it asked failed), never a panic.
func TestBadInput(t *testing.T) {
	closed, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	node := []string{"-u", "redis://127.0.0.1:1"}
	if nodeAddr != "" {
		node = []string{"-u", "redis://" + nodeAddr}
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage: aside"},
		{[]string{"frob"}, 2, `aside: unknown command "frob"`},
		{[]string{"-u", "http://127.0.0.1:6379", "stats"}, 2, `scheme "http"`},
		{[]string{"-u", "redis://127.0.0.1:1,127.0.0.1:2", "stats"}, 2, "pass -cluster"},
		{[]string{"-u", "redis://127.0.0.1:6379/abc", "stats"}, 2, `database "abc" is not a number`},
		{[]string{"-cluster", "-sentinel", "m", "stats"}, 2, "exclude each other"},
		{[]string{"-cluster", "-u", "redis://127.0.0.1:1/3", "stats"}, 2, "database 0 only"},
		{[]string{"-timeout", "0s", "stats"}, 2, "-timeout must be positive"},
		{[]string{"-prefix", "a:b", "stats"}, 2, "aside: prefix"},
		{append(node, "inspect", "products"), 2, "want CACHE KEY"},
		{append(node, "inspect", "bad:name", "k"), 1, "aside: inspect: cache name"},
		{append(node, "inspect", "-version", "-1", "products", "k"), 1, "version must be >= 0"},
		{append(node, "invalidate", "products"), 2, "want CACHE KEY"},
		{append(node, "invalidate", "-tags"), 2, "at least one TAG"},
		{append(node, "invalidate", "bad:name", "k"), 1, "aside: invalidate:"},
		{append(node, "purge"), 2, "want CACHE"},
		{append(node, "purge", "-yes", "bad:name"), 1, "aside: purge: cache name"},
		{append(node, "stats", "a", "b"), 2, "at most one CACHE"},
		{append(node, "stats", "bad:name"), 2, "not a cache name"},
		{append(node, "stats", "-top", "-1"), 2, "must not be negative"},
		{append(node, "inspect", "-nope", "products", "k"), 2, "aside: inspect: flag provided but not defined"},
		{[]string{"-u", fmt.Sprint("redis://127.0.0.1:", closed), "-timeout", "300ms", "stats"}, 1, "aside: stats:"},
		{[]string{"-u", fmt.Sprint("redis://127.0.0.1:", closed), "-timeout", "300ms", "invalidate", "products", "k"}, 1, "aside: invalidate:"},
	} {
		code, out, errOut := aside_(c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) || out != "" {
			t.Errorf("aside %s: exit %d, stderr %q, stdout %q; want exit %d and %q", strings.Join(c.args, " "), code, errOut, out, c.code, c.want)
		}
		if lines := strings.Split(strings.TrimSpace(errOut), "\n"); c.code == 1 && !strings.HasPrefix(lines[len(lines)-1], "aside: ") {
			t.Errorf("aside %s: %q does not say it is aside's", strings.Join(c.args, " "), errOut)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		key                   string
		cache, version, inner string
		lease, ok             bool
	}{
		{"app:items:v1:{k1}", "items", "v1", "k1", false, true},
		{"app:items:v12:{a:b}:l", "items", "v12", "a:b", true, true},
		{"app:#tag:{t}", "", "", "", false, false},
		{"app:#v:{items}", "", "", "", false, false},
		{"other:items:v1:{k}", "", "", "", false, false},
		{"app:items:vx:{k}", "", "", "", false, false},
		{"app:items:v1:k", "", "", "", false, false},
	} {
		cache, version, inner, lease, ok := classify("app", c.key)
		if cache != c.cache || version != c.version || inner != c.inner || lease != c.lease || ok != c.ok {
			t.Errorf("classify(%q) = %q %q %q %v %v", c.key, cache, version, inner, lease, ok)
		}
	}
}
