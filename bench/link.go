package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/asidecache/aside/asidetest"
)

const missTitle = "Miss + fill (instant loader, a new key each time)"

// linkMisses runs the miss table again through a proxy that delays every
// request, as a network between a service and its Redis does. On loopback
// a round trip costs mostly the client's and the server's CPU; over a
// network it costs the wire, and what a miss costs is how many round trips
// it makes.
func linkMisses(ctx context.Context) {
	a, stop := startLink()
	defer stop()
	subs := []subject{
		cacheAside("floor (GET/SET + msgpack)", newClient(a), prefix+":linkfloor:"),
		asideSubject("aside, over the link", newClient(a), false),
		asideSubject("aside + 2 tags, over the link", newClient(a), true),
		goRedisCache("go-redis/cache, over the link", newClient(a), false),
	}
	rtt := dur(roundTrip(ctx, a))
	title := fmt.Sprintf("Miss + fill over a slower link (a proxy delays each request by %v: one round trip %s here)", *link, rtt)
	misses(ctx, title, subs)
	linkHits(ctx, subs, rtt)
	for _, s := range subs {
		if s.close != nil {
			s.close()
		}
	}
}

// roundTrip is the median time of a PING to a.
func roundTrip(ctx context.Context, a string) float64 {
	rdb := newClient(a)
	defer rdb.Close()
	var ns []float64
	for range 21 {
		start := time.Now()
		must(rdb.Ping(ctx).Err())
		ns = append(ns, float64(time.Since(start).Nanoseconds()))
	}
	slices.Sort(ns)
	return ns[len(ns)/2]
}

// linkHits measures hit throughput over the link: where the wire, not the
// client's CPU, bounds a round trip, coalesced reads must cost nothing.
func linkHits(ctx context.Context, subs []subject, rtt string) {
	fmt.Printf("## Hits over the slower link (%d goroutines, %d keys; one round trip %s)\n\n", hitGoroutines*runtime.GOMAXPROCS(0), hitKeys, rtt)
	fmt.Println("| subject | per hit | × floor |")
	fmt.Println("|---|---|---|")
	var fns []func(b *testing.B)
	for _, s := range subs {
		warm(ctx, s)
		fns = append(fns, parallelHits(ctx, s))
	}
	rs := measureAll(fns)
	for i, s := range subs {
		fmt.Printf("| %s | %s | %s |\n", s.name, dur(rs[i].nsPerOp), ratio(rs[i], rs[0]))
	}
	fmt.Println()
}

// startLink runs the delaying proxy in a process of its own and returns its
// address. In this process it would share the scheduler with the subjects:
// a subject whose goroutines wake together (readers of one coalesced batch)
// delays the proxy's timers, and the table measures the proxy, not the
// link — 1.4× the floor's time per hit where a separate process measures 1.0×.
func startLink() (a string, stop func()) {
	exe, err := os.Executable()
	must(err)
	cmd := exec.Command(exe, "-serve-link", "-addr", *addr, "-link", link.String())
	in, err := cmd.StdinPipe()
	must(err)
	out, err := cmd.StdoutPipe()
	must(err)
	cmd.Stderr = os.Stderr
	must(cmd.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	must(err)
	return strings.TrimSpace(line), func() {
		_ = in.Close() // the proxy exits when its stdin closes
		_ = cmd.Wait()
	}
}

// serveLink is the proxy process: it prints its address and serves until
// its stdin closes (the bench ended, or died).
func serveLink() {
	p, err := asidetest.ListenProxy(*addr)
	must(err)
	p.SetLatency(*link)
	fmt.Println(p.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	p.Close()
}
