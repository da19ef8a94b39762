package aside

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"
)

// Calling the source: one loader call per group, bounded, counted, and
// safe from panics and loaders that ignore their ctx.

// source is where a group's values come from: the Loader of a Get, or the
// BatchLoader of a GetMany.
type source[T any] struct {
	one  Loader[T]
	many BatchLoader[T]
}

type outcome[T any] struct {
	v     T
	err   error
	until time.Time // set by the loader with ExpireAt: the value is not kept past it
}

// loadFrom calls the source once for keys, under the profile's LoadTimeout.
// A key a batch loader leaves out is ErrNotFound.
func (c *Cache[T]) loadFrom(ctx context.Context, src source[T], keys []string) []outcome[T] {
	var expiry expirySlot
	if src.many == nil {
		v, err := timed(ctx, c, src.one, &expiry)
		return []outcome[T]{{v, err, expiry.get()}}
	}
	m, err := timed(ctx, c, func(ctx context.Context) (map[string]T, error) { return src.many(ctx, keys) }, &expiry)
	outs := make([]outcome[T], len(keys))
	for i, k := range keys {
		v, ok := m[k]
		outs[i].until = expiry.get()
		switch {
		case err != nil:
			outs[i].err = err
		case !ok:
			outs[i].err = c.notFoundAnswer
		default:
			outs[i].v = v
		}
	}
	return outs
}

// timed runs one loader call — single or batch — under the profile's
// LoadTimeout, recovering panics, and counts it. ErrNotFound is an answer,
// not a failure. A loader's ExpireAt lands in expiry (nil: not stored).
func timed[T, V any](ctx context.Context, c *Cache[T], load Loader[V], expiry *expirySlot) (V, error) {
	lctx, cancel := context.WithTimeout(ctx, c.profile.LoadTimeout)
	defer cancel()
	if expiry != nil {
		lctx = context.WithValue(lctx, expiryKey{}, expiry)
	}
	start := time.Now()
	v, err := safeLoad(lctx, load)
	err = c.notFound(err)
	c.stats.observeLoad(time.Since(start))
	if err == nil || errors.Is(err, ErrNotFound) {
		c.stats.loads.Add(1)
	} else {
		c.stats.loadErrors.Add(1)
		c.store.emit(Event{Kind: EventLoadError, Cache: c.name, Err: err})
	}
	return v, err
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
		return zero, opErr("load", ctx.Err())
	}
}
