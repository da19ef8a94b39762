package health

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestNodesQuietUntilAFailure: the nodes are quiet (reads skip looking up
// their keys' nodes) until a breaker records a failure, and quiet again only
// once every breaker is clean — also when failures and successes race.
func TestNodesQuietUntilAFailure(t *testing.T) {
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1", "b": "127.0.0.1:2"}, HeartbeatFrequency: time.Hour})
	defer ring.Close()
	nodes := NewNodes(ring, Config{Threshold: 3, Cooldown: time.Hour}, func(string, State) {})
	ctx := context.Background()
	if !nodes.Quiet() {
		t.Fatal("new nodes are not quiet")
	}
	n := nodes.Of(ctx, "k")
	if n == nil {
		t.Fatal("no node for k")
	}
	nodes.Failure(n)
	nodes.Settle()
	if nodes.Quiet() {
		t.Fatal("quiet with a failure counted")
	}
	n.Success()
	nodes.Settle()
	if !nodes.Quiet() {
		t.Fatal("not quiet once every breaker is clean")
	}
	for range 3 {
		nodes.Failure(n)
	}
	nodes.Settle()
	if n.State() != Open || nodes.Quiet() {
		t.Fatalf("state %v, quiet %v after 3 failures; want open, not quiet", n.State(), nodes.Quiet())
	}

	// Racing: one goroutine records failures, another successes and
	// settles; whenever both stop, quiet must mean clean. (The order that
	// makes this hold — the breaker's count, then unrest — is argued at
	// Failure; these rounds run it under the race detector, they cannot
	// force its narrowest interleaving.)
	for round := range 2000 {
		nodes := NewNodes(ring, Config{Threshold: 1 << 30, Cooldown: time.Hour}, func(string, State) {})
		n := nodes.Of(ctx, "k")
		var wg sync.WaitGroup
		wg.Go(func() {
			for range round % 7 {
				nodes.Failure(n)
			}
		})
		wg.Go(func() {
			for range round % 5 {
				n.Success()
				nodes.Settle()
			}
		})
		wg.Wait()
		if nodes.Quiet() && !n.Clean() {
			t.Fatalf("round %d: quiet with %v, clean %v", round, n.State(), n.Clean())
		}
	}
}
