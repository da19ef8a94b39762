package aside_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/asidecache/aside"
)

// realAddr is the address of the real Redis that the behaviour suite runs
// on: ASIDE_REDIS_ADDR, or a redis-server that TestMain started on a free
// port. Empty when neither is available.
var realAddr string

// clusterAddrs are the masters of a 3-master Redis Cluster that TestMain
// started with scripts/redis-cluster.sh (or ASIDE_CLUSTER_ADDRS,
// comma-separated). Empty when neither is available.
var clusterAddrs []string

// quietLogger drops go-redis' own log lines (dial failures are expected in
// the fault tests and are asserted through Stats instead).
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{})
	flag.Parse()
	if fuzzing() {
		// Fuzz targets need no server, and every fuzz worker runs TestMain:
		// servers started here would outlive the workers the fuzzer kills.
		os.Exit(m.Run())
	}
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild()) // a reader process of TestT18PausedProcess
	}
	var srv *redisProc
	realAddr = os.Getenv("ASIDE_REDIS_ADDR")
	if realAddr == "" {
		if p, err := startRedis(0); err == nil {
			srv, realAddr = p, p.addr
			// On a server of our own, the suite runs as a user limited to
			// the documented ACL: a command aside needs but the README does
			// not list fails the tests that use it.
			if err := createACLUser(p.addr); err != nil {
				fmt.Fprintln(os.Stderr, "aside tests: ACL user:", err)
				os.Exit(1)
			}
		} else {
			fmt.Fprintln(os.Stderr, "aside tests: no real Redis:", err)
		}
	}
	var clusterDir string
	if env := os.Getenv("ASIDE_CLUSTER_ADDRS"); env != "" {
		clusterAddrs = strings.Split(env, ",")
	} else if longRun { // only the long suites use a Cluster: none is started for the minute-long run
		// Twice: on a loaded machine a node or the cluster's creation can
		// miss the script's wait once (the first attempt's processes are
		// stopped before the second).
		for attempt := 1; attempt <= 2 && clusterAddrs == nil; attempt++ {
			dir, err := os.MkdirTemp("", "aside-cluster-")
			if err != nil {
				break
			}
			out, err := exec.Command("bash", "scripts/redis-cluster.sh", "start", dir).Output()
			if err == nil {
				clusterDir, clusterAddrs = dir, strings.Split(strings.TrimSpace(string(out)), ",")
				break
			}
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			fmt.Fprintf(os.Stderr, "aside tests: no Redis Cluster (attempt %d): %v\n%s", attempt, err, stderr)
			_ = exec.Command("bash", "scripts/redis-cluster.sh", "stop", dir).Run()
			_ = os.RemoveAll(dir)
		}
	}
	code := m.Run()
	if srv != nil {
		srv.stop()
	}
	if clusterDir != "" {
		_ = exec.Command("bash", "scripts/redis-cluster.sh", "stop", clusterDir).Run()
		_ = os.RemoveAll(clusterDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// fuzzing reports whether this test binary is fuzzing, as coordinator or
// worker.
func fuzzing() bool {
	f, w := flag.Lookup("test.fuzz"), flag.Lookup("test.fuzzworker")
	return f != nil && f.Value.String() != "" || w != nil && w.Value.String() == "true"
}

// longRun is set by ASIDE_LONG=1: the long suites — stress runs, the
// Cluster, Sentinel and Ring, processes, eviction — run beside the rest.
// Without it `go test ./...` answers in about a minute; .ci/run runs both.
var longRun = os.Getenv("ASIDE_LONG") != ""

// requireLong skips a long test unless ASIDE_LONG is set.
func requireLong(t testing.TB) {
	t.Helper()
	if !longRun {
		t.Skip("long test: ASIDE_LONG=1 runs it (.ci/run does)")
	}
}

// requireReal skips a test that needs a real Redis — or fails it under CI,
// where a skipped real-Redis suite must not pass unnoticed.
func requireReal(t testing.TB) {
	t.Helper()
	if realAddr != "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("real Redis required under CI: install redis-server or set ASIDE_REDIS_ADDR")
	}
	t.Skip("no real Redis: install redis-server or set ASIDE_REDIS_ADDR")
}

// backend is one Redis the behaviour suite runs on.
type backend struct {
	name    string
	addr    string
	cluster []string             // the masters, for a Cluster
	mini    *miniredis.Miniredis // nil for a real Redis
}

// forEachBackend runs fn as a subtest on miniredis, on a real Redis and on
// a real 3-master Redis Cluster.
func forEachBackend(t *testing.T, fn func(t *testing.T, b *backend)) {
	t.Run("miniredis", func(t *testing.T) {
		srv := miniredis.RunT(t)
		fn(t, &backend{name: "miniredis", addr: srv.Addr(), mini: srv})
	})
	t.Run("redis", func(t *testing.T) {
		requireReal(t)
		fn(t, &backend{name: "redis", addr: realAddr})
	})
	t.Run("cluster", func(t *testing.T) {
		requireCluster(t)
		fn(t, &backend{name: "cluster", cluster: clusterAddrs})
	})
}

// requireCluster skips a test that needs a Redis Cluster — or fails it
// under CI.
func requireCluster(t testing.TB) {
	t.Helper()
	if len(clusterAddrs) > 0 {
		return
	}
	requireLong(t)
	if os.Getenv("CI") == "true" {
		t.Fatal("Redis Cluster required under CI: install redis-server and redis-cli, or set ASIDE_CLUSTER_ADDRS")
	}
	t.Skip("no Redis Cluster")
}

// client returns a new client closed at the end of the test. Timeouts are
// set explicitly, as aside requires.
func (b *backend) client(t testing.TB) redis.UniversalClient {
	if b.cluster != nil {
		rdb := redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                 b.cluster,
			DisableIdentity:       true,
			ContextTimeoutEnabled: true,
			MaxRetries:            -1,
			DialTimeout:           200 * time.Millisecond,
			ReadTimeout:           time.Second,
			WriteTimeout:          time.Second,
		})
		t.Cleanup(func() { _ = rdb.Close() })
		return rdb
	}
	return newClient(t, b.addr)
}

// The restricted user the real-Redis suite runs as (see createACLUser).
var realUser, realPassword string

func createACLUser(addr string) error {
	admin := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	defer admin.Close()
	prefixes := "t" + runID + "-*"
	rule := strings.ReplaceAll(aclRule(prefixes), prefixes+":", prefixes) // every test prefix, not one
	rule += " +incr"                                                      // only the broken counter-token variant of T5 uses it
	args := append([]any{"ACL", "SETUSER", "suite", "on", ">suite-" + runID, "resetkeys", "resetchannels", "-@all"},
		stringsToAny(strings.Fields(rule))...)
	if err := admin.Do(context.Background(), args...).Err(); err != nil {
		return err
	}
	realUser, realPassword = "suite", "suite-"+runID
	return nil
}

// adminClient reaches the real Redis as its default user, for what the
// suite does behind aside's back (CLIENT KILL, INFO).
func adminClient(t testing.TB) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: realAddr, DisableIdentity: true})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

func newClient(t testing.TB, addr string) *redis.Client {
	var user, password string
	if addr == realAddr {
		user, password = realUser, realPassword
	}
	rdb := redis.NewClient(&redis.Options{
		Username:              user,
		Password:              password,
		Addr:                  addr,
		DisableIdentity:       true,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		DialTimeout:           200 * time.Millisecond,
		ReadTimeout:           time.Second,
		WriteTimeout:          time.Second,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

var (
	runID   = randomHex(4)
	nextNS  atomic.Int64
	bgCtx   = context.Background()
	waitFor = 5 * time.Second // bound on every wait in a concurrency test
)

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// uniquePrefix isolates a test's keys on a shared Redis; tests never FLUSHDB.
func uniquePrefix() string { return "t" + runID + "-" + strconv.FormatInt(nextNS.Add(1), 10) }

// newStore returns a Store with a prefix of its own on b.
func (b *backend) newStore(t testing.TB, opts ...aside.StoreOption) (*aside.Store, redis.UniversalClient) {
	t.Helper()
	rdb := b.client(t)
	store, err := aside.NewStore(rdb, append([]aside.StoreOption{aside.WithPrefix(uniquePrefix()), aside.WithOpTimeout(time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() }) // runs before the client's Close (cleanups are LIFO)
	return store, rdb
}

func newCache[T any](t testing.TB, store *aside.Store, opts ...aside.Option) *aside.Cache[T] {
	t.Helper()
	c, err := aside.New[T](store, "items", opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// redisProc is a redis-server started by the tests on a loopback port, so
// that they can kill and restart it. Only processes started here are ever
// stopped, by PID.
type redisProc struct {
	cmd  *exec.Cmd
	addr string
	port int
	dir  string
}

func startRedis(port int, extra ...string) (*redisProc, error) {
	dir, err := os.MkdirTemp("", "aside-redis-")
	if err != nil {
		return nil, err
	}
	return startRedisIn(dir, port, extra...)
}

// startRedisIn starts a redis-server whose working directory (and RDB
// file, dump.rdb) is dir: a restart in the same dir loads the last SAVE.
func startRedisIn(dir string, port int, extra ...string) (*redisProc, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, err
	}
	if port == 0 {
		if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	args := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"), "--protected-mode", "no"}, extra...)
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &redisProc{cmd: cmd, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), port: port, dir: dir}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", p.addr, 100*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return p, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.stop()
	return nil, fmt.Errorf("redis-server on %s did not start", p.addr)
}

// kill stops the server abruptly, as a crash would.
func (p *redisProc) kill() {
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

func (p *redisProc) stop() {
	p.kill()
	_ = os.RemoveAll(p.dir)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// realAddrOrMini returns the real Redis, or a miniredis for this test.
func realAddrOrMini(t *testing.T) string {
	if realAddr != "" {
		return realAddr
	}
	return miniredis.RunT(t).Addr()
}

// loopUntil runs fn(0), fn(1), … on a goroutine counted in wg until stop is
// closed or fn returns false: the writers and readers of the races.
func loopUntil(stop <-chan struct{}, wg *sync.WaitGroup, fn func(i int) bool) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if !fn(i) {
				return
			}
		}
	}()
}

// raise sets floor to v unless it is already higher: the version that an
// invalidation which has returned protects.
func raise(floor *atomic.Int64, v int64) {
	for cur := floor.Load(); cur < v && !floor.CompareAndSwap(cur, v); cur = floor.Load() {
	}
}

// noScript reports whether a script command was answered NOSCRIPT: the
// server had not seen it, it did not run, and it is sent again (EVAL).
func noScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }

// settled waits for the fills the Store has in flight (see Store.Wait):
// for the tests that look at Redis, or read again, right after a Get that
// loaded.
func settled(t testing.TB, store *aside.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := store.Wait(ctx); err != nil {
		t.Fatalf("background writes still running after 3s (held by the test? then read with getOK): %v", err)
	}
}

// entryKeys returns the keys srv holds but the sets of the versions in use
// (versions.go): the entries, leases and tag keys.
func entryKeys(srv *miniredis.Miniredis) []string {
	var out []string
	for _, k := range srv.Keys() {
		if !strings.Contains(k, ":#v:{") {
			out = append(out, k)
		}
	}
	return out
}
