package aside

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"
)

// loadShared runs at most one load of rk at a time in this process and lets
// every caller wait for it on its own ctx. The load itself runs on a context
// detached from the first caller's cancellation, so one impatient caller
// cannot fail the others, and bounded by the profile's LoadTimeout.
func (c *Cache[T]) loadShared(ctx context.Context, rk string, load Loader[T], write bool) (T, error) {
	ch := c.flights.DoChan(rk, func() (any, error) {
		return c.loadAndFill(context.WithoutCancel(ctx), rk, load, write)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			var zero T
			return zero, r.Err
		}
		v, _ := r.Val.(T) // comma-ok: a nil interface value is a valid T
		return v, nil
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

func (c *Cache[T]) loadAndFill(ctx context.Context, rk string, load Loader[T], write bool) (T, error) {
	lctx, cancel := context.WithTimeout(ctx, c.profile.LoadTimeout)
	defer cancel()
	start := time.Now()
	v, err := safeLoad(lctx, load)
	took := time.Since(start)
	c.stats.loadNanos.Add(uint64(took))
	if err != nil {
		c.stats.loadErrors.Add(1)
		c.store.emit(Event{Kind: EventLoadError, Cache: c.name, Err: err})
		return v, err
	}
	c.stats.loads.Add(1)
	if write {
		c.fill(ctx, rk, v, start, took)
	}
	return v, nil
}

// fill stores a loaded value. Its failures are counted, never returned: the
// caller already has its value.
func (c *Cache[T]) fill(ctx context.Context, rk string, v T, created time.Time, took time.Duration) {
	b, err := c.encode(v, created, took)
	if err != nil {
		c.stats.encodeErrors.Add(1)
		c.store.emit(Event{Kind: EventEncodeError, Cache: c.name, Err: err})
		return
	}
	if max := c.profile.MaxEntryBytes; max > 0 && len(b) > max {
		c.stats.oversize.Add(1)
		c.store.emit(Event{Kind: EventOversize, Cache: c.name, Err: fmt.Errorf("aside: entry of %d bytes exceeds MaxEntryBytes %d", len(b), max)})
		return
	}
	_ = c.write(ctx, rk, b) // counted and reported by write
}

// safeLoad calls load, turning a panic into ErrLoaderPanic and a loader that
// outlives ctx into an error, so that no waiter crashes or hangs. A loader
// that ignores ctx keeps its goroutine until it returns; its result is
// dropped.
func safeLoad[T any](ctx context.Context, load Loader[T]) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{err: fmt.Errorf("%w: %v\n%s", ErrLoaderPanic, p, debug.Stack())}
			}
		}()
		v, err := load(ctx)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("aside: load: %w", ctx.Err())
	}
}
