package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// breakage is one protection taken out of a copy of the library.
type breakage struct {
	name, file, old, new string
	faults               string // the faults that expose it
	// full: run with the default workers and keys (the liveness of
	// leases shows where readers wait on each other's keys) instead of the
	// small, racy setup the safety breakages need.
	full bool
	// seen: aside's own consistency checker (aside.WithCheck, sampling 5 %
	// of hits and every invalidation here, 50 loads a second per cache)
	// must report inconsistencies too.
	seen bool
}

var breakages = []breakage{
	{"leases off: a fill ignores a revoked lease", "seams.go",
		variantOn, brokenVariantOn("vUnconditionalFill"), "kill-writer", false, true},
	{"leases outlive their loads: not renewed, not given back", "seams.go",
		variantOn, brokenVariantOn("vLongLeases", "vKeepOwedLeases"), "old-snapshot,blackhole", true, false},
	{"replay queue dropped", "replay.go",
		"func (q *replayQueue) add(ops []pendingOp) {", "func (q *replayQueue) add(ops []pendingOp) {\n\tops = nil", "stall", false, false},
	{"strict L1 off", "internal/bus/bus.go", "strict: !cfg.Relaxed,", "strict: false,", "stop-reader,pubsub", false, false},
}

// variantOn is the library's switch of its test variants (seams.go); a
// broken copy switches some on for good, as the library's own tests do.
const variantOn = "func variantOn(h seams, v variant) bool { return h != nil && h.on(v) }"

func brokenVariantOn(variants ...string) string {
	return "func variantOn(h seams, v variant) bool { return v == " + strings.Join(variants, " || v == ") + " || h != nil && h.on(v) }"
}

// TestBrokenLibraryFailsTheRun builds this command against copies of the
// library with one protection taken out each — leases, the liveness of
// leases, the replay queue, strict L1 — and runs it: the checker must fail every one (exit 1). A
// breakage shows in a race, so each gets a second run before the test
// says the checker missed it. Needs redis-server and PostgreSQL.
func TestBrokenLibraryFailsTheRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs processes for a minute")
	}
	db := needServices(t)
	for _, b := range breakages {
		t.Run(b.name, func(t *testing.T) {
			bin := buildBroken(t, b)
			for try := 1; ; try++ {
				var out bytes.Buffer
				args := []string{"-d", "15s", "-every", "2s", "-workers", "3", "-writers", "1", "-keys", "20", "-load-work", "3ms"}
				if b.full {
					// Loads that take 20 ms hold leases often enough that
					// the snapshots Redis is restored from carry some: with
					// loads of a query alone, the broken leases' run met
					// none in a third of its runs (0–4 slow reads in the others).
					args = []string{"-d", "20s", "-every", "2s", "-load-work", "20ms"}
				}
				args = append(args, "-check-hits", "0.05", "-check-invalidations", "1", "-check-budget", "50")
				cmd := exec.Command(bin, append(args, "-faults", b.faults, "-db", db)...)
				cmd.Stdout, cmd.Stderr = &out, os.Stderr
				err := cmd.Run()
				var exit *exec.ExitError
				if !errors.As(err, &exit) && err != nil {
					t.Fatal(err)
				}
				for _, line := range strings.Split(out.String(), "\n") {
					if strings.HasPrefix(line, "| **total**") || strings.HasPrefix(line, "aside's consistency checker") ||
						strings.HasPrefix(line, "Liveness:") || strings.HasPrefix(line, "Duplicate loads") {
						t.Logf("run %d: %s", try, line)
					}
				}
				switch {
				case err == nil && try == 2:
					t.Fatalf("every guarantee held twice with %q: the checker misses it", b.name)
				case err == nil:
					continue
				case exit.ExitCode() != 1:
					t.Fatalf("the run itself failed (exit %d):\n%s", exit.ExitCode(), out.String())
				}
				if found := checkerFound(out.String()); b.seen && found == 0 {
					t.Fatalf("the run's checker saw %q, aside's consistency checker found nothing:\n%s", b.name, out.String())
				} else {
					t.Logf("aside's consistency checker confirmed %d inconsistencies", found)
				}
				return // exit 1: a guarantee broke, as it must
			}
		})
	}
}

// buildBroken copies the library and this command to a temporary directory,
// makes b's change (which must match exactly once) and builds the command.
func buildBroken(t *testing.T, b breakage) string {
	t.Helper()
	dir := t.TempDir()
	// The library's package, its internal packages and module, the helper
	// package this command uses, and this command: "../x" lands in dir, "x" in dir/chaos.
	for _, pattern := range []string{"../*.go", "../go.mod", "../go.sum", "../internal/*/*.go", "../asidetest/*.go",
		"../asidepg/*.go", "../asidepg/go.mod", "../asidepg/go.sum", "*.go", "go.mod", "go.sum"} {
		files, _ := filepath.Glob(pattern)
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if f == filepath.Join("..", b.file) {
				if strings.Count(string(data), b.old) != 1 {
					t.Fatalf("%s: the change's text %q is not there once: update the breakage", b.file, b.old)
				}
				data = []byte(strings.Replace(string(data), b.old, b.new, 1))
			}
			to := filepath.Join(dir, "chaos", f)
			if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(to, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	bin := filepath.Join(dir, "chaos-broken")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = filepath.Join(dir, "chaos")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build with %q: %v\n%s", b.name, err, out)
	}
	return bin
}

var checkerRe = regexp.MustCompile(`hits checked \d+, inconsistent (\d+); invalidations checked after .*?, inconsistent (\d+) / (\d+) / (\d+);`)

// checkerFound sums the inconsistencies aside's checker reported in a run.
func checkerFound(report string) int {
	m := checkerRe.FindStringSubmatch(report)
	n := 0
	for _, s := range m[1:] {
		v, _ := strconv.Atoi(s)
		n += v
	}
	return n
}
