package aside_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// TestRedisCallsEndAtTheOpTimeout: when no connection can be made — Redis
// refuses them (go-redis then dials five times, 100 ms apart), or a dial
// hangs as against a black-holed host — a read costs the op timeout, not
// go-redis's dial budget, on every read path and whatever the caller's
// context. Broken variant: the op context's Done is the caller's, so the
// dial waits outlast the op timeout.
func TestRedisCallsEndAtTheOpTimeout(t *testing.T) {
	const opTimeout = 50 * time.Millisecond
	const bound = 250 * time.Millisecond // the op timeout, then the loader; what is left is scheduling
	refused := func(t *testing.T) *redis.Options {
		port, err := freePort() // nothing listens there: every dial is refused at once
		if err != nil {
			t.Fatal(err)
		}
		return &redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	}
	hung := func(t *testing.T) *redis.Options {
		release := make(chan struct{})
		t.Cleanup(func() { close(release) })
		return &redis.Options{Addr: "127.0.0.1:1", DialTimeout: 300 * time.Millisecond, Dialer: func(ctx context.Context, _, _ string) (net.Conn, error) {
			select { // a SYN that is never answered: only the dial's own timeout ends it
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-release:
				return nil, net.ErrClosed
			}
		}}
	}
	cancelled, cancel := context.WithCancel(bgCtx)
	defer cancel()
	callers := map[string]context.Context{"background": bgCtx, "cancellable": cancelled}
	paths := map[string]func(c *aside.Cache[int], ctx context.Context) error{
		"Get": func(c *aside.Cache[int], ctx context.Context) error {
			_, err := c.Get(ctx, "k", func(context.Context) (int, error) { return 1, nil })
			return err
		},
		"GetMany": func(c *aside.Cache[int], ctx context.Context) error {
			_, err := c.GetMany(ctx, []string{"a", "b"}, func(_ context.Context, keys []string) (map[string]int, error) {
				return map[string]int{"a": 1, "b": 2}, nil
			})
			return err
		},
	}
	// slowest makes two reads (the first dials, the second finds the
	// dial failed before) and returns the longer; the broken variant makes
	// one.
	slowest := func(t *testing.T, opts *redis.Options, ctx context.Context, path func(*aside.Cache[int], context.Context) error, broken bool) time.Duration {
		opts.ContextTimeoutEnabled, opts.MaxRetries, opts.DisableIdentity = true, -1, true
		rdb := redis.NewClient(opts)
		defer rdb.Close()
		store, err := aside.NewStore(rdb, aside.WithPrefix(uniquePrefix()), aside.WithOpTimeout(opTimeout), aside.WithBreaker(1000, time.Hour),
			aside.WithStallTolerance(0)) // one call's bound; the stall tolerance adds its own (liveness_test.go)
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		aside.SetStoreHooks(store, &aside.TestHooks{CallerDone: broken})
		c := newCache[int](t, store)
		var worst time.Duration
		reads := 2
		if broken {
			reads = 1
		}
		for range reads {
			start := time.Now()
			if err := path(c, ctx); err != nil {
				t.Fatalf("read with no connection to Redis: %v", err)
			}
			worst = max(worst, time.Since(start))
		}
		return worst
	}
	for outage, opts := range map[string]func(*testing.T) *redis.Options{"refused": refused, "hung-dial": hung} {
		for caller, ctx := range callers {
			for name, path := range paths {
				t.Run(outage+"/"+caller+"/"+name, func(t *testing.T) {
					if d := slowest(t, opts(t), ctx, path, false); d > bound {
						t.Errorf("a read took %v with a %v op timeout", d, opTimeout)
					}
				})
			}
		}
		t.Run(outage+"/broken", func(t *testing.T) {
			if d := slowest(t, opts(t), bgCtx, paths["Get"], true); d <= bound {
				t.Errorf("broken variant: a read took %v, within the bound: the test cannot tell", d)
			}
		})
	}
}
