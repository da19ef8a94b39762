package aside

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/asidecache/aside/internal/envelope"
	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

// The consistency checker's goroutine and its checks (check.go holds its
// configuration, its sampling and its counts): each check reads Redis and
// the source as they are, and counts only what it has confirmed.

// run checks what is due, one check at a time, until the Store closes.
func (k *checker[T]) run() {
	var waiting []checkTask[T] // by due time, at most checkPending
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := time.Hour
		if len(waiting) > 0 {
			next = time.Until(waiting[0].due)
		}
		timer.Reset(max(next, 0))
		select {
		case <-k.c.store.stopping:
			return
		case t := <-k.tasks:
			waiting = k.schedule(waiting, t)
		case <-timer.C:
		}
		for len(waiting) > 0 && !time.Now().Before(waiting[0].due) {
			t := waiting[0]
			waiting = waiting[1:]
			if more, ok := k.check(t); ok {
				waiting = k.schedule(waiting, more)
			}
		}
	}
}

// schedule inserts t in due order (a hit's first check is due at once).
func (k *checker[T]) schedule(waiting []checkTask[T], t checkTask[T]) []checkTask[T] {
	if len(waiting) >= checkPending {
		k.skipped.Add(1)
		return waiting
	}
	i := len(waiting)
	for i > 0 && waiting[i-1].due.After(t.due) {
		i--
	}
	return append(waiting[:i], append([]checkTask[T]{t}, waiting[i:]...)...)
}

// check runs one check, and returns the one that follows it, if any.
func (k *checker[T]) check(t checkTask[T]) (next checkTask[T], more bool) {
	if t.hit {
		return k.checkHit(t)
	}
	return k.checkInvalidation(t)
}

// checkHit compares a served value with the source; a difference is checked
// again after Recheck, and counted only if the cache still serves the same
// value then while the source, read first, still differs.
func (k *checker[T]) checkHit(t checkTask[T]) (checkTask[T], bool) {
	served := t.value
	if !t.decoded {
		if err := k.c.codec.Unmarshal(t.payload, &served); err != nil {
			k.skipped.Add(1)
			return t, false
		}
	}
	src, found, ok := k.reload(t.key)
	if !ok {
		return t, false
	}
	if found && k.same(served, src) {
		k.hits.checked.Add(1)
		return t, false
	}
	if !t.again {
		t.again, t.due, t.value, t.decoded, t.payload = true, time.Now().Add(k.cfg.Recheck), served, true, nil
		return t, true
	}
	now, cached, err := k.served(t.key)
	if err != nil {
		k.skipped.Add(1)
		return t, false
	}
	if cached && k.same(now, served) {
		k.inconsistent(&k.hits, t.key, fmt.Errorf("aside: check: a hit served a value the source no longer holds, and still serves it %v later", k.cfg.Recheck))
		return t, false
	}
	k.hits.checked.Add(1)
	return t, false
}

// checkInvalidation looks at an entry one window after its invalidation:
// an entry whose load began before it is a suspect, counted if a reload
// differs from it.
func (k *checker[T]) checkInvalidation(t checkTask[T]) (checkTask[T], bool) {
	next := t
	if next.window++; next.window < len(k.cfg.Windows) {
		next.due = t.changedAt.Add(k.cfg.Windows[next.window])
	}
	counts := &k.windows[t.window]
	e, raw, err := k.entry(t.key)
	switch {
	case err != nil:
		k.skipped.Add(1)
		return next, next.window < len(k.cfg.Windows)
	case raw == nil || e.Stale() || e.CreatedMs > t.changedMs: // the same millisecond: a suspect
		counts.checked.Add(1)
		return next, next.window < len(k.cfg.Windows)
	}
	if current, err := k.tagsCurrent(e); err != nil {
		k.skipped.Add(1)
		return next, next.window < len(k.cfg.Windows)
	} else if !current { // a tag invalidated or marked stale since: not served as it is
		counts.checked.Add(1)
		return next, next.window < len(k.cfg.Windows)
	}
	src, found, ok := k.reload(t.key)
	if !ok {
		return next, next.window < len(k.cfg.Windows)
	}
	consistent := !found && e.Negative()
	if found && !e.Negative() {
		var cached T
		consistent = k.c.codec.Unmarshal(e.Payload, &cached) == nil && k.same(cached, src)
	}
	if consistent {
		counts.checked.Add(1)
	} else {
		k.inconsistent(counts, t.key, fmt.Errorf("aside: check: an entry loaded %v before an invalidation is still cached %v after it, and differs from the source",
			time.Duration(t.changedMs-e.CreatedMs)*time.Millisecond, k.cfg.Windows[t.window]))
	}
	return next, next.window < len(k.cfg.Windows)
}

// inconsistent reports and counts a confirmed inconsistency: the event
// first, then the counts, checked last — a reader that sees a check counted
// sees its event and its verdict.
func (k *checker[T]) inconsistent(counts *checkCounts, key string, err error) {
	k.c.store.emit(Event{Kind: EventInconsistent, Cache: k.c.name, Key: key, Err: err})
	counts.inconsistent.Add(1)
	counts.checked.Add(1)
}

// reload reads key from the source within the budget; ok is false when it
// could not (counted as skipped).
func (k *checker[T]) reload(key string) (v T, found, ok bool) {
	now := time.Now()
	if !k.budgetAt.IsZero() {
		k.budget = min(k.budget+now.Sub(k.budgetAt).Seconds()*k.cfg.LoadsPerSecond, max(k.cfg.LoadsPerSecond, 1))
	}
	k.budgetAt = now
	if k.budget < 1 {
		k.skipped.Add(1)
		return v, false, false
	}
	k.budget--
	k.loads.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), k.c.profile.LoadTimeout)
	defer cancel()
	v, err := func() (v T, err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("aside: check: Load panicked: %v", p)
			}
		}()
		return k.cfg.Load(ctx, key)
	}()
	switch {
	case err == nil:
		return v, true, true
	case errors.Is(err, ErrNotFound) || k.c.ownNotFound != nil && errors.Is(err, k.c.ownNotFound):
		return v, false, true
	}
	k.skipped.Add(1)
	return v, false, false
}

// tagsCurrent reports whether every tag the entry recorded still has the
// token it recorded: only then is the entry served as it is.
func (k *checker[T]) tagsCurrent(e envelope.Envelope) (bool, error) {
	if len(e.Tags) == 0 {
		return true, nil
	}
	names := make([]string, len(e.Tags))
	for i, t := range e.Tags {
		names[i] = t.Name
	}
	current, err := k.c.store.fetchTokens(context.Background(), names)
	if err != nil {
		return false, err
	}
	for i, t := range e.Tags {
		if current[i] != t.Token {
			return false, nil
		}
	}
	return true, nil
}

// entry reads key's entry from Redis as it is, without loading or leasing;
// raw is nil when there is none. While the Store's breaker is open it does
// not try: the check is skipped (a backlog of checks, each waiting out the
// op timeout, would otherwise outlast the outage).
func (k *checker[T]) entry(key string) (envelope.Envelope, []byte, error) {
	if st := k.c.store.BreakerState(); st != BreakerClosed {
		return envelope.Envelope{}, nil, fmt.Errorf("aside: check: Redis not in use (breaker %v)", st)
	}
	ctx, cancel := k.c.store.opContext(context.Background())
	defer cancel()
	s, err := k.c.store.rdb.Get(ctx, k.c.keys.entry(key)).Result()
	if errors.Is(err, redis.Nil) {
		return envelope.Envelope{}, nil, nil
	}
	if err != nil {
		return envelope.Envelope{}, nil, err
	}
	raw := []byte(s)
	e, err := envelope.Decode(raw, nil, nil)
	if err != nil || e.TypeID != k.c.typeID {
		return envelope.Envelope{}, nil, nil // not servable: nothing cached
	}
	return e, raw, nil
}

// served returns what the cache serves for key now, L1 first, without
// loading: the value and whether there is one; err when Redis could not
// tell.
func (k *checker[T]) served(key string) (v T, ok bool, err error) {
	if k.c.l1 != nil {
		if v, ok := k.c.l1.Get(key); ok {
			return v, true, nil
		}
	}
	e, raw, err := k.entry(key)
	if err != nil || raw == nil || e.Negative() {
		return v, false, err
	}
	current, err := k.tagsCurrent(e)
	if err != nil || !current {
		return v, false, err
	}
	return v, k.c.codec.Unmarshal(e.Payload, &v) == nil, nil
}

// same compares two values as the checker's configuration says.
func (k *checker[T]) same(a, b T) bool {
	if k.cfg.Equal != nil {
		return k.cfg.Equal(a, b)
	}
	ea, erra := k.canonical(a)
	eb, errb := k.canonical(b)
	return erra == nil && errb == nil && bytes.Equal(ea, eb)
}

// canonical encodes v so that equal values encode alike: with the default
// codec, map keys sorted (Go randomises map order).
func (k *checker[T]) canonical(v T) ([]byte, error) {
	if _, ok := k.c.codec.(msgpackCodec); !ok {
		return k.c.codec.Marshal(v)
	}
	var b bytes.Buffer
	enc := msgpack.NewEncoder(&b)
	enc.SetSortMapKeys(true)
	err := enc.Encode(v)
	return b.Bytes(), err
}
