package aside_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// A paused process is the case the L1 lease exists for: SIGSTOP stops every
// goroutine, the one that would notice missed heartbeats included, so on
// SIGCONT a read can run before the process learns anything. This test runs
// a real reader process (this test binary, in child mode) and pauses it.

const childEnv = "ASIDE_TEST_CHILD" // "addr,user,password,prefix,broken"

// TestT18PausedProcess: a reader process holds k = 1 in its L1. It is
// SIGSTOPped; the test Sets k = 2, which waits for the paused reader's lease
// to end (it cannot acknowledge) and returns; then SIGCONT, and the reader,
// asked at once, must answer 2. The reader applies what it hears 200 ms
// late (a hook), so that only its lease check can keep it from the old
// value. Broken variant: the L1 hit skips the lease check. In about one run
// in ten the broken reader still answers 2 — on waking, something other
// than the lease (its stream in doubt) took L1 out first — so the broken
// variant gets three runs, and must serve the old value in one of them.
func TestT18PausedProcess(t *testing.T) {
	requireLong(t)
	requireReal(t)
	expectBroken(t, "a paused process serves nothing older than an invalidation that returned while it was stopped", func(broken bool) bool {
		tries := 1
		if broken {
			tries = 3
		}
		for range tries {
			if !pausedReaderAnswersNew(t, broken) {
				return false
			}
		}
		return true
	})
}

// pausedReaderAnswersNew runs TestT18PausedProcess's scenario once and
// reports whether the reader, resumed, answered the new value.
func pausedReaderAnswersNew(t *testing.T, broken bool) bool {
	prefix := uniquePrefix()
	store, _ := (&backend{addr: realAddr}).newStore(t, aside.WithPrefix(prefix))
	c := newCache[int](t, store)
	if err := c.Set(bgCtx, "k", 1); err != nil {
		t.Fatal(err)
	}
	child := startChild(t, prefix, broken)
	child.get(t) // fills its L1
	if got := child.get(t); got != "1 l1" {
		t.Fatalf("the reader answered %q, want 1 from L1", got)
	}
	if err := child.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	err := c.Set(bgCtx, "k", 2)
	waited := time.Since(t0)
	if cerr := child.cmd.Process.Signal(syscall.SIGCONT); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	got := child.get(t)
	t.Logf("broken=%v: Set waited %v for the stopped reader; after SIGCONT the reader answered %q", broken, waited, got)
	if waited > 1300*time.Millisecond {
		t.Errorf("Set waited %v for a stopped reader; its lease bounds the wait to about 1.05 s", waited)
	}
	return strings.HasPrefix(got, "2 ")
}

type childProc struct {
	cmd *exec.Cmd
	in  *bufio.Writer
	out *bufio.Scanner
}

// startChild runs the reader process and waits until its L1 serves.
func startChild(t *testing.T, prefix string, broken bool) *childProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), childEnv+"="+strings.Join([]string{realAddr, realUser, realPassword, prefix, strconv.FormatBool(broken)}, ","))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = stdin.Close() // the child exits at the end of its input
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(waitFor):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	p := &childProc{cmd: cmd, in: bufio.NewWriter(stdin), out: bufio.NewScanner(stdout)}
	if line := p.read(t); line != "ready" {
		t.Fatalf("the reader said %q", line)
	}
	return p
}

// get asks the reader for k and returns its answer: "<value> l1" or
// "<value> redis".
func (p *childProc) get(t *testing.T) string {
	t.Helper()
	_, _ = p.in.WriteString("get\n")
	if err := p.in.Flush(); err != nil {
		t.Fatal(err)
	}
	return p.read(t)
}

func (p *childProc) read(t *testing.T) string {
	t.Helper()
	line := make(chan string, 1)
	go func() {
		if p.out.Scan() {
			line <- p.out.Text()
		}
		close(line)
	}()
	select {
	case l := <-line:
		return l
	case <-time.After(waitFor):
		t.Fatal("the reader did not answer")
		return ""
	}
}

// runChild is the reader process: a Store with L1 on prefix, answering
// "get" lines on stdin with the value of k and the tier that answered it.
func runChild() int {
	f := strings.Split(os.Getenv(childEnv), ",")
	if len(f) != 5 {
		fmt.Fprintln(os.Stderr, "child: bad", childEnv)
		return 2
	}
	rdb := redis.NewClient(&redis.Options{Addr: f[0], Username: f[1], Password: f[2], DisableIdentity: true,
		ContextTimeoutEnabled: true, MaxRetries: -1, ReadTimeout: time.Second, WriteTimeout: time.Second})
	defer rdb.Close()
	// An op timeout of 1 s: the reader doubts its stream only 2.25 s
	// after a heartbeat, later than the lease ends.
	store, err := aside.NewStore(rdb, aside.WithPrefix(f[3]), aside.WithOpTimeout(time.Second))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	defer store.Close()
	aside.SetStoreHooks(store, &aside.TestHooks{NoLeaseCheck: f[4] == "true", BeforeApply: func() { time.Sleep(200 * time.Millisecond) }})
	c, err := aside.New[int](store, "items", aside.WithL1(10, time.Minute))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	for deadline := time.Now().Add(waitFor); !store.Coherence().L1Serving; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "child: L1 never served")
			return 1
		}
	}
	fmt.Println("ready")
	load := func(context.Context) (int, error) { return 0, nil } // never needed: Redis holds k
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		hits := c.Stats().L1Hits
		v, err := c.Get(bgCtx, "k", load)
		if err != nil {
			fmt.Println("error", err)
			continue
		}
		tier := "redis"
		if c.Stats().L1Hits > hits {
			tier = "l1"
		}
		fmt.Println(v, tier)
	}
	return 0
}
