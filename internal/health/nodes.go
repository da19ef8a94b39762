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
