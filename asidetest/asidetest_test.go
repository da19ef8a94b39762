package asidetest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidetest"
)

func TestFaultsAndTime(t *testing.T) {
	store, redis := asidetest.New(t, aside.WithOpTimeout(50*time.Millisecond), aside.WithBreaker(1, 100*time.Millisecond))
	c, err := aside.New[string](store, "c")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var calls asidetest.Counter
	load := asidetest.Counting(&calls, func(context.Context) (string, error) { return "v", nil })
	get := func() {
		t.Helper()
		if v, err := c.Get(ctx, "k", load); err != nil || v != "v" {
			t.Fatalf("Get = %q, %v", v, err)
		}
	}
	get()
	get()
	if calls.Calls() != 1 {
		t.Fatalf("calls = %d, want 1 (a hit)", calls.Calls())
	}
	redis.Down()
	get() // served by the loader
	if c.Stats().RedisErrors == 0 || store.BreakerState() != aside.BreakerOpen {
		t.Errorf("Down did not cut Redis off: %+v", c.Stats())
	}
	redis.Up()
	time.Sleep(150 * time.Millisecond) // the breaker's cooldown
	get()
	get()
	if store.BreakerState() != aside.BreakerClosed {
		t.Errorf("breaker %v after Up", store.BreakerState())
	}
	redis.SetLatency(200 * time.Millisecond)
	start := time.Now()
	get()
	if d := time.Since(start); d > 150*time.Millisecond {
		t.Errorf("a slow Redis cost %v with a 50 ms op timeout", d)
	}
	redis.SetLatency(0)
	if _, err := c.Get(ctx, "x", asidetest.Failing[string](nil)); !errors.Is(err, asidetest.ErrInjected) {
		t.Errorf("Failing = %v", err)
	}
}
