package asidepg

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// The tests run against real processes: PostgreSQL ($DATABASE_URL, or the
// local server) and redis-servers they start, kill and restart. Without
// either they skip — and fail under CI=true, where a green run must mean
// they ran.

var bgCtx = context.Background()

func databaseURL() string {
	if u := os.Getenv("DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

func unavailable(t *testing.T, what string, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required under CI: %v", what, err)
	}
	t.Skipf("%s not available: %v", what, err)
}

// database is a schema of its own on the test PostgreSQL, with the outbox
// migrated and a source table (id → v) for the tests' loaders.
type database struct {
	url    string // with the schema on its search_path
	schema string
	pool   *pgxpool.Pool
}

func newDatabase(t *testing.T) *database {
	t.Helper()
	ctx, cancel := context.WithTimeout(bgCtx, 5*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, databaseURL())
	if err != nil {
		unavailable(t, "PostgreSQL", err)
	}
	defer admin.Close(bgCtx)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "asidepg_" + hex.EncodeToString(b)
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(bgCtx, databaseURL())
		if err == nil {
			_, _ = c.Exec(bgCtx, "DROP SCHEMA "+schema+" CASCADE")
			_ = c.Close(bgCtx)
		}
	})
	sep := "?"
	if strings.Contains(databaseURL(), "?") {
		sep = "&"
	}
	url := databaseURL() + sep + "search_path=" + schema
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "CREATE TABLE source (id text PRIMARY KEY, v bigint NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	return &database{url: url, schema: schema, pool: pool}
}

// value reads the source's value of id.
func (d *database) value(ctx context.Context, id string) (int64, error) {
	var v int64
	err := d.pool.QueryRow(ctx, "SELECT v FROM source WHERE id = $1", id).Scan(&v)
	return v, err
}

func (d *database) rows(t *testing.T) int {
	t.Helper()
	var n int
	if err := d.pool.QueryRow(bgCtx, "SELECT count(*) FROM aside_outbox").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// bump is a write of the source: id's value + 1.
func bump(ctx context.Context, tx pgx.Tx, id string) error {
	_, err := tx.Exec(ctx, "INSERT INTO source (id, v) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET v = source.v + 1", id)
	return err
}

// redisProc is a redis-server of the test's, on a free loopback port; only
// processes started here are stopped, by PID. With appendonly, a restart
// in the same dir keeps every acknowledged write.
type redisProc struct {
	cmd  *exec.Cmd
	addr string
	dir  string
}

func startRedis(t *testing.T) *redisProc {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		unavailable(t, "redis-server", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	p := &redisProc{addr: addr, dir: t.TempDir()}
	p.start(t)
	t.Cleanup(p.kill)
	return p
}

func (p *redisProc) start(t *testing.T) {
	t.Helper()
	_, port, _ := net.SplitHostPort(p.addr)
	p.cmd = exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
		"--appendfsync", "always", "--dir", p.dir, "--logfile", filepath.Join(p.dir, "redis.log"), "--protected-mode", "no")
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", p.addr, 100*time.Millisecond); err == nil {
			_ = c.Close()
			return
		}
	}
	t.Fatalf("redis-server on %s did not start", p.addr)
}

// kill stops the server as a crash would.
func (p *redisProc) kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		p.cmd = nil
	}
}

func newClient(t testing.TB, addr string) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true, ContextTimeoutEnabled: true, MaxRetries: -1,
		DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

var nextPrefix atomic.Int64

// newStore returns a Store on addr with a prefix of its own.
func newStore(t testing.TB, addr, prefix string) *aside.Store {
	t.Helper()
	store, err := aside.NewStore(newClient(t, addr), aside.WithPrefix(prefix), aside.WithOpTimeout(200*time.Millisecond),
		aside.WithBreaker(3, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return store
}

func uniquePrefix() string { return "p" + strconv.FormatInt(nextPrefix.Add(1), 10) }

// newItems returns the cache "items" of store, whose loader reads the
// source, and counts its loads in loads.
func newItems(t testing.TB, store *aside.Store, d *database) (*aside.Cache[int64], func(id string) aside.Loader[int64]) {
	t.Helper()
	c, err := aside.New[int64](store, "items")
	if err != nil {
		t.Fatal(err)
	}
	return c, func(id string) aside.Loader[int64] {
		return func(ctx context.Context) (int64, error) { return d.value(ctx, id) }
	}
}

// runRelay runs o's relay until the test ends.
func runRelay(t *testing.T, o *Outbox) {
	ctx, cancel := context.WithCancel(bgCtx)
	done := make(chan struct{})
	go func() { defer close(done); _ = o.Relay(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Relay did not return after its context ended")
		}
	})
}

// within polls cond every 10 ms until it holds or d has passed, and
// returns how long it took, or false.
func within(d time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < d {
		if cond() {
			return time.Since(start), true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start), cond()
}

// child is a process of this test binary in one of the roles of
// TestMain (child.go), stopped by PID when the test ends.
type child struct {
	cmd   *exec.Cmd
	lines *bufio.Scanner
}

func startChild(t *testing.T, role string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), append([]string{"ASIDEPG_CHILD=" + role}, env...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: bufio.NewScanner(out)}
	t.Cleanup(c.kill)
	return c
}

// await reads the child's output until it prints want (or fails).
func (c *child) await(t *testing.T, want string) {
	t.Helper()
	got := make(chan bool, 1)
	go func() {
		for c.lines.Scan() {
			if c.lines.Text() == want {
				got <- true
				return
			}
		}
		got <- false
	}()
	select {
	case ok := <-got:
		if !ok {
			t.Fatalf("the child ended before printing %q", want)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the child did not print %q within 20 s", want)
	}
}

// kill SIGKILLs the child: it dies as a crashed process does, with no
// deferred function run and its connections cut by the kernel.
func (c *child) kill() {
	if c.cmd.Process != nil {
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
	}
}

// say prints a line the parent awaits, and blocks for ever (until killed).
func say(w io.Writer, line string) {
	fmt.Fprintln(w, line)
	select {}
}

// newOutbox returns New's outbox, closed when the test ends.
func newOutbox(t *testing.T, pool *pgxpool.Pool, store *aside.Store, opts ...Option) (*Outbox, error) {
	o, err := New(pool, store, opts...)
	if err == nil {
		t.Cleanup(o.Close)
	}
	return o, err
}
