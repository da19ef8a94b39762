package health

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Nodes holds the breakers of a Cluster's masters or a Ring's shards.
type Nodes struct {
	clientFor func(ctx context.Context, key string) (*redis.Client, error) // from the client's slot table or hash ring: no round trip
	like      Config                                                       // the Store's breaker's: node breakers take its threshold, cooldown and clock
	onChange  func(addr string, st State)

	mu     sync.Mutex                       // serialises additions to byAddr
	byAddr atomic.Pointer[map[string]*Node] // copied on write: read on every read of a key

	// unrest counts the failures recorded in the nodes' breakers; settled
	// is its value when every breaker was last seen clean. While the two
	// are equal no node is down and a success changes nothing, so reads
	// skip looking up their keys' nodes (Quiet): on a Cluster that look-up
	// was 8 % of a GetMany of 100 keys.
	unrest, settled atomic.Uint64
}

// Quiet reports whether every node's breaker was clean (closed, no failure
// counted) when last looked at, and none has recorded a failure since.
func (h *Nodes) Quiet() bool { return h.unrest.Load() == h.settled.Load() }

// Failure records an outage of n's node — through the nodes, not n's own
// breaker, so that Quiet learns of it.
func (h *Nodes) Failure(n *Node) {
	n.Breaker.Failure(false)
	// After the breaker's own count: a Settle that loaded unrest before
	// this sees the failure in its scan or leaves unrest ahead of settled.
	h.unrest.Add(1)
}

// Settle marks the nodes quiet when every breaker is clean; a caller
// calls it after recording successes while they are not.
func (h *Nodes) Settle() {
	u := h.unrest.Load()
	if u == h.settled.Load() {
		return
	}
	for _, n := range *h.byAddr.Load() {
		if !n.Clean() {
			return
		}
	}
	h.settled.Store(u) // if another Settle stored a later count, Quiet is false until the next: only slower
}

// Node is the breaker of one node, and the client that probes it.
type Node struct {
	*Breaker
	Client *redis.Client
}

// NewNodes returns the node breakers of a Cluster or a Ring client,
// nil for a client of one Redis.
func NewNodes(rdb redis.UniversalClient, like Config, onChange func(addr string, st State)) *Nodes {
	h := &Nodes{like: like, onChange: onChange}
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		h.clientFor = c.MasterForKey
	case *redis.Ring:
		h.clientFor = func(_ context.Context, key string) (*redis.Client, error) { return c.GetShardClientForKey(key) }
	default:
		return nil
	}
	h.byAddr.Store(&map[string]*Node{})
	return h
}

// Of returns the breaker of the node serving key, nil when the client
// cannot tell (no slot table yet).
func (h *Nodes) Of(ctx context.Context, key string) *Node {
	c, err := h.clientFor(ctx, key)
	if err != nil || c == nil {
		return nil
	}
	addr := c.Options().Addr
	if b := (*h.byAddr.Load())[addr]; b != nil {
		return b
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old := *h.byAddr.Load()
	if b := old[addr]; b != nil {
		return b
	}
	b := &Node{Breaker: NewBreaker(Config{Threshold: h.like.Threshold, Cooldown: h.like.Cooldown, Now: h.like.Now,
		OnChange: func(st State) { h.onChange(addr, st) }}), Client: c}
	m := make(map[string]*Node, len(old)+1)
	for a, nb := range old {
		m[a] = nb
	}
	m[addr] = b
	h.byAddr.Store(&m)
	return b
}
