// Package asidetest helps test code that uses aside: an in-process Redis
// (miniredis) behind a Store in one call, time under the test's control,
// and faults on demand — Redis down, Redis slow, loaders that fail.
//
//	store, redis := asidetest.New(t)
//	products, _ := aside.New[Product](store, "product")
//	// ... exercise your code ...
//	redis.Advance(10 * time.Minute) // entries expire, freshness moves on
//	redis.Down()                    // your code must still serve, from its loaders
package asidetest

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// Redis is the in-process Redis behind a test's Store, reached through a
// proxy that can slow it down or cut it off.
type Redis struct {
	t      testing.TB
	mini   *miniredis.Miniredis
	client *redis.Client
	proxy  *Proxy
	store  *aside.Store
	offset atomic.Int64 // the Store's clock: real time plus this
}

// settleTimeout bounds how long Advance waits for the Store's background
// writes: each is bounded by the Store's call timeout already.
const settleTimeout = 5 * time.Second

// New starts an in-process Redis and returns a Store on it, built with opts
// (the test clock comes first, so opts may override it; keys have the
// default prefix, "aside", as in production: each test has a Redis of its
// own). Everything is closed when the test ends.
func New(t testing.TB, opts ...aside.StoreOption) (*aside.Store, *Redis) {
	t.Helper()
	r := &Redis{t: t, mini: miniredis.RunT(t)}
	r.proxy = NewProxy(t, r.mini.Addr())
	r.client = redis.NewClient(&redis.Options{
		Addr:                  r.proxy.Addr(),
		DisableIdentity:       true,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
	})
	t.Cleanup(func() { _ = r.client.Close() })
	store, err := aside.NewStore(r.client, append([]aside.StoreOption{aside.WithClock(r.Now)}, opts...)...)
	if err != nil {
		t.Fatalf("asidetest: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() }) // before the client's Close: cleanups run last-in first-out
	r.store = store
	return store, r
}

// Now is the Store's clock: real time, moved on by Advance.
func (r *Redis) Now() time.Time { return time.Now().Add(time.Duration(r.offset.Load())) }

// Advance moves time forward by d for every clock of the Store — freshness,
// early refresh, L1 expiry, the circuit breaker's cooldown — and for Redis'
// TTLs together, so entries go stale and expire, and an open breaker probes
// again, as they would after d. It first waits for the Store's background
// writes (the fill of a value a Get has just returned, a refresh, a lease
// given back): in real time they land within milliseconds, long before d
// has passed, and a fill that landed after the jump would find its lease
// expired and be refused — the next Get would load again.
func (r *Redis) Advance(d time.Duration) {
	if !advanceWithoutSettling {
		r.settle()
	}
	r.offset.Add(int64(d))
	r.mini.FastForward(d)
}

// advanceWithoutSettling is the broken variant of Advance, for this
// package's tests: the clock jumps while fills are on their way.
var advanceWithoutSettling = false

// settle waits for the Store's background writes to reach Redis or fail.
func (r *Redis) settle() {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	if err := r.store.Wait(ctx); err != nil {
		r.t.Errorf("asidetest: Advance: the Store's background writes did not end within %v: %v", settleTimeout, err)
	}
}

// Down cuts Redis off: open connections are closed and new ones dropped,
// as when a server dies. Up restores it, with its data.
func (r *Redis) Down() { r.proxy.SetDown(true) }

// Up ends Down.
func (r *Redis) Up() { r.proxy.SetDown(false) }

// SetLatency delays every request to Redis by d (0: none).
func (r *Redis) SetLatency(d time.Duration) { r.proxy.SetLatency(d) }

// Client returns the go-redis client of the Store, to look at or plant
// data.
func (r *Redis) Client() *redis.Client { return r.client }

// Miniredis returns the server itself, for what this package does not
// cover.
func (r *Redis) Miniredis() *miniredis.Miniredis { return r.mini }

// ErrInjected is what [Failing] loaders return by default.
var ErrInjected = errors.New("asidetest: injected loader failure")

// Failing returns a loader that always fails with err (ErrInjected when
// nil), to test what your code does when the source of truth fails.
func Failing[T any](err error) aside.Loader[T] {
	if err == nil {
		err = ErrInjected
	}
	return func(_ context.Context) (T, error) {
		var zero T
		return zero, err
	}
}

// Counter counts the calls of a loader it wraps.
type Counter struct{ n atomic.Int64 }

// Calls returns how many calls were made.
func (c *Counter) Calls() int { return int(c.n.Load()) }

// Counting wraps load so that counter counts its calls.
func Counting[T any](counter *Counter, load aside.Loader[T]) aside.Loader[T] {
	return func(ctx context.Context) (T, error) {
		counter.n.Add(1)
		return load(ctx)
	}
}

// Proxy is a TCP proxy in front of a server that can add latency to every
// request, or drop all traffic.
type Proxy struct {
	ln        net.Listener
	target    string
	latency   atomic.Int64
	down      atomic.Bool
	blackhole atomic.Bool
	wg        sync.WaitGroup
	mu        sync.Mutex
	conns     map[net.Conn]bool
}

// NewProxy listens on a free loopback port and forwards to target until
// the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := ListenProxy(target)
	if err != nil {
		t.Fatalf("asidetest: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// ListenProxy is NewProxy for a program rather than a test (a soak or chaos
// run): it listens on a free loopback port and forwards to target until
// Close.
func ListenProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's address: give it to the client instead of the
// server's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLatency delays each request by d.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// SetBlackhole swallows all traffic without closing anything (true), as a
// network partition or a frozen server does: requests wait for their
// timeouts. false restores forwarding on the connections opened since.
func (p *Proxy) SetBlackhole(on bool) { p.blackhole.Store(on) }

// SetDown cuts every connection and refuses new ones (true), or restores
// service (false).
func (p *Proxy) SetDown(down bool) {
	p.down.Store(down)
	if down {
		p.mu.Lock()
		for c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
	}
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.down.Load() {
			_ = c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[s] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(s, c, true)
		go p.pipe(c, s, false)
	}
}

func (p *Proxy) pipe(dst, src net.Conn, requests bool) {
	defer p.wg.Done()
	defer func() {
		_ = dst.Close()
		p.mu.Lock()
		delete(p.conns, dst)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if d := time.Duration(p.latency.Load()); requests && d > 0 {
				time.Sleep(d)
			}
			if p.blackhole.Load() {
				continue // swallowed; the connection stays open and silent
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil { // io.EOF or a closed connection: either way, done
			return
		}
	}
}

// Close stops the proxy and its connections.
func (p *Proxy) Close() {
	_ = p.ln.Close()
	p.SetDown(true)
	p.wg.Wait()
}
