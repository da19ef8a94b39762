package aside

import (
	"context"
	"fmt"
)

// Peek returns what is cached under key without loading it: the answer Get
// would give from L1 or Redis right now — a fresh value, or one inside the
// profile's stale window — but it takes no lease and starts no refresh.
// A negative entry answers the cache's not-found ([ErrNotFound], and the
// error of [WithNotFound]); nothing usable cached answers [ErrMiss]; a Redis
// that cannot be read answers [ErrUnavailable] (Peek has no loader to fall
// back on). Tags name the tags the value was cached with, as in Get: an
// entry one of them invalidated is a miss. For go-redis/cache's Get with
// ErrCacheMiss and sturdyc's Get.
func (c *Cache[T]) Peek(ctx context.Context, key string, opts ...CallOption) (T, error) {
	if c.store.tracer == nil {
		v, _, err := c.peek(ctx, key, opts)
		return v, err
	}
	ctx, span := c.store.tracer.Start(ctx, "peek", c.name)
	v, o, err := c.peek(ctx, key, opts)
	span.End(one(o), err)
	return v, err
}

func (c *Cache[T]) peek(ctx context.Context, key string, opts []CallOption) (T, Outcome, error) {
	cl, v, err := c.start(key, opts)
	if cl == nil {
		if err != nil {
			return v, OutcomeNone, err
		}
		return v, OutcomeL1Hit, nil
	}
	var zero T
	if !c.store.usable(ctx, &c.stats, c.name) || c.onDownNode(ctx, cl) {
		c.stats.skipped.Add(1)
		return zero, OutcomeNone, ErrUnavailable
	}
	if err := c.readAll(ctx, cl.alone()); err != nil {
		if ctx.Err() != nil {
			return zero, OutcomeNone, ctx.Err()
		}
		return zero, OutcomeNone, opErr("peek", fmt.Errorf("%w: %w", ErrUnavailable, err))
	}
	if cl.raw == nil || !c.serve(ctx, cl, cl.raw, source[T]{}) {
		return zero, OutcomeMiss, ErrMiss
	}
	c.fillL1(cl)
	return cl.v, cl.outcome, cl.err
}
