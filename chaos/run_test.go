package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestBrokenWritesFailTheRun runs the whole thing — worker processes, a
// Redis of its own, PostgreSQL, faults — twice for a few seconds: as
// shipped, every guarantee holds; with writers that forget to invalidate
// one cache, the checker finds stale reads. Needs redis-server and
// PostgreSQL: under CI their absence fails the test, elsewhere it skips.
func TestBrokenWritesFailTheRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes for seconds")
	}
	url := needServices(t)
	for _, broken := range []bool{false, true} {
		res, err := orchestrate(config{dur: 8 * time.Second, every: 2 * time.Second, readers: 3, writers: 1, keys: 20, dbURL: url, broken: broken, loadWork: 3 * time.Millisecond}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("broken=%v: %d reads, %d stale, %d failed, %d left stale, %d duplicate loads outside faults, %d workers grew, %d undrained",
			broken, res.total.Reads, res.total.Stale, res.total.Failed, res.left, res.total.Unleased, res.grew, res.undrained)
		if res.total.Reads < 1000 {
			t.Fatalf("broken=%v: only %d reads: the run did not exercise the caches", broken, res.total.Reads)
		}
		if res.held() == broken {
			t.Errorf("broken=%v: guarantees held = %v", broken, res.held())
		}
	}
}

// needServices returns the source's -db once redis-server is there: the
// PostgreSQL URL, or "memory" where none answers. Under CI both are
// required (their absence fails the test); elsewhere no redis-server skips.
func needServices(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		need(t, "redis-server on PATH")
	}
	url := envOr("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	src, err := openSource(context.Background(), url, "x")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL at %s is needed under CI: %v", url, err)
		}
		t.Logf("no PostgreSQL at %s: the source is -db memory", url)
		return "memory"
	}
	src.close()
	return url
}

func need(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is needed under CI", what)
	}
	t.Skipf("no %s", what)
}

// TestMain lets the test binary serve as a worker process when orchestrate
// re-executes it with -role.
func TestMain(m *testing.M) {
	for _, a := range os.Args[1:] {
		if a == "-role" {
			main()
			return
		}
	}
	os.Exit(m.Run())
}
