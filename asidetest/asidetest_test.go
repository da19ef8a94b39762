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
	store, fake := asidetest.New(t, aside.WithOpTimeout(50*time.Millisecond), aside.WithBreaker(1, time.Hour))
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
	fake.Down()
	get() // served by the loader
	if c.Stats().RedisErrors == 0 || store.BreakerState() != aside.BreakerOpen {
		t.Errorf("Down did not cut Redis off: %+v", c.Stats())
	}
	fake.Up()
	get() // the breaker is still open: no call to Redis, no sleep to wait it out either
	if store.BreakerState() != aside.BreakerOpen {
		t.Fatalf("breaker = %v before its cooldown, want open", store.BreakerState())
	}
	fake.Advance(time.Hour) // moves the cooldown with the Store's clock
	get()
	get()
	if store.BreakerState() != aside.BreakerClosed {
		t.Errorf("breaker %v after Up", store.BreakerState())
	}
	fake.SetLatency(200 * time.Millisecond)
	start := time.Now()
	get()
	// The read waits out what may be a stall — the op timeout and the
	// stall tolerance (4 op timeouts): 250 ms — and Redis answers it after
	// 200 ms.
	if d := time.Since(start); d > 350*time.Millisecond {
		t.Errorf("a slow Redis cost %v with a 50 ms op timeout and a 200 ms stall tolerance", d)
	}
	fake.SetLatency(0)
	if _, err := c.Get(ctx, "x", asidetest.Failing[string](nil)); !errors.Is(err, asidetest.ErrInjected) {
		t.Errorf("Failing = %v", err)
	}
}
