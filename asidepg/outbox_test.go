package asidepg

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/asidecache/aside"
)

// bound is how long a test waits for an invalidation that must come: far
// above what it takes (grace + poll + one apply, ~0.7 s), so that a slow
// machine does not fail it, and a lost invalidation does.
const bound = 5 * time.Second

// setup is one test's world: a database schema, a redis-server, a Store
// and its cache "items" reading the source table.
type setup struct {
	db     *database
	redis  *redisProc
	prefix string
	store  *aside.Store
	items  *aside.Cache[int64]
	load   func(id string) aside.Loader[int64]
}

func newSetup(t *testing.T) *setup {
	s := &setup{db: newDatabase(t), redis: startRedis(t), prefix: uniquePrefix()}
	s.store = newStore(t, s.redis.addr, s.prefix)
	s.items, s.load = newItems(t, s.store, s.db)
	return s
}

// cached reads id through the cache and says whether it returned the
// source's current value.
func (s *setup) current(t *testing.T, id string) bool {
	t.Helper()
	got, err := s.items.Get(bgCtx, id, s.load(id))
	want, werr := s.db.value(bgCtx, id)
	if err != nil || werr != nil {
		t.Logf("read %s: %v, %v", id, err, werr)
		return false
	}
	return got == want
}

// seed writes id's first value and caches it.
func (s *setup) seed(t *testing.T, id string) {
	t.Helper()
	if err := pgx.BeginFunc(bgCtx, s.db.pool, func(tx pgx.Tx) error { return bump(bgCtx, tx, id) }); err != nil {
		t.Fatal(err)
	}
	if !s.current(t, id) {
		t.Fatal("the first read does not return the source's value")
	}
}

// Write records its changes in the transaction, applies them at once and
// deletes their rows; a write that fails rolls back and applies nothing;
// Record + Apply do the same with the caller's transaction.
func TestWriteAppliesItsChangesAtOnce(t *testing.T) {
	s := newSetup(t)
	o, err := newOutbox(t, s.db.pool, s.store)
	if err != nil {
		t.Fatal(err)
	}
	s.seed(t, "a")
	s.seed(t, "b")
	err = o.Write(bgCtx, func(ctx context.Context, tx pgx.Tx) error { return bump(ctx, tx, "a") }, s.items.Changed("a"))
	if err != nil {
		t.Fatal(err)
	}
	if !s.current(t, "a") {
		t.Error("a read after Write returned the old value")
	}
	o.Close() // the rows' deletion, in the background
	if n := s.db.rows(t); n != 0 {
		t.Errorf("%d outbox rows after Write, want its rows deleted", n)
	}

	failed := errors.New("constraint violated")
	err = o.Write(bgCtx, func(ctx context.Context, tx pgx.Tx) error {
		if err := bump(ctx, tx, "b"); err != nil {
			return err
		}
		return failed
	}, s.items.Changed("b"))
	if err != failed {
		t.Errorf("Write of a failing write = %v, want its error unchanged", err)
	}
	if got, _ := s.items.Peek(bgCtx, "b"); got != 1 {
		t.Errorf("a rolled-back write invalidated the entry (Peek = %d)", got)
	}
	if n := s.db.rows(t); n != 0 {
		t.Errorf("%d outbox rows after a rolled-back write, want none", n)
	}

	tx, err := s.db.pool.Begin(bgCtx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bump(bgCtx, tx, "b"); err != nil {
		t.Fatal(err)
	}
	rec, err := o.Record(bgCtx, tx, s.items.Changed("b"), s.store.TagsChanged("t"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Record(bgCtx, tx, aside.Change{Cache: "no such:name", Keys: []string{"x"}}); err == nil || !strings.HasPrefix(err.Error(), "aside: ") {
		t.Errorf("Record of an invalid change = %v, want aside's error", err)
	}
	if err := tx.Commit(bgCtx); err != nil {
		t.Fatal(err)
	}
	if err := rec.Apply(bgCtx); err != nil {
		t.Fatal(err)
	}
	o.Close()
	if !s.current(t, "b") || s.db.rows(t) != 0 {
		t.Error("Record + Apply: the entry is old or the rows are left")
	}
	if st, err := o.Stats(bgCtx); err != nil || st.FastApplied != 3 || st.Pending != 0 {
		t.Errorf("Stats = %+v, %v; want 3 rows applied by their writer, none pending", st, err)
	}
}

// A writer SIGKILLed right after its COMMIT, before it applied its changes:
// a relay applies them within grace + poll + one apply, with no other write
// to help. Broken: a writer that records its changes after the commit loses
// them, and the entry stays old.
func TestWriterKilledAfterCommit(t *testing.T) {
	for _, broken := range []bool{false, true} {
		t.Run(fmt.Sprintf("broken=%v", broken), func(t *testing.T) {
			s := newSetup(t)
			relay, err := newOutbox(t, s.db.pool, newStore(t, s.redis.addr, s.prefix))
			if err != nil {
				t.Fatal(err)
			}
			runRelay(t, relay)
			s.seed(t, "k")
			role := roleWriter
			if broken {
				role = roleWriterBroken
			}
			w := startChild(t, role, childEnv(s.db, s.redis, s.prefix, "k")...)
			w.await(t, "committed")
			w.kill()
			took, ok := within(bound, func() bool { return s.current(t, "k") })
			switch {
			case broken && ok:
				t.Errorf("the broken writer's change was applied (in %v): the test cannot fail", took)
			case !broken && !ok:
				t.Errorf("the killed writer's change was not applied within %v", bound)
			case !broken:
				t.Logf("the killed writer's change took effect %v after its death (grace 500 ms, poll 200 ms)", took.Round(time.Millisecond))
				if _, ok := within(bound, func() bool { return s.db.rows(t) == 0 }); !ok {
					t.Error("the relay left the row")
				}
			}
		})
	}
}

// A relay killed after claiming rows and before applying them: another
// relay applies them. A relay killed after applying them and before
// deleting them: another applies them again (a duplicate) and deletes
// them.
func TestRelayKilled(t *testing.T) {
	for _, role := range []string{roleRelayAfterClaim, roleRelayAfterApply} {
		t.Run(role, func(t *testing.T) {
			s := newSetup(t)
			s.seed(t, "k")
			r := startChild(t, role, childEnv(s.db, s.redis, s.prefix, "k")...)
			// Another service's write, through the SQL function.
			_, err := s.db.pool.Exec(bgCtx, "BEGIN; UPDATE source SET v = v + 1 WHERE id = 'k'; SELECT aside_invalidate('items', ARRAY['k']); COMMIT")
			if err != nil {
				t.Fatal(err)
			}
			r.await(t, "stopped")
			applied := s.current(t, "k")
			if applied != (role == roleRelayAfterApply) {
				t.Fatalf("before the kill, current = %v", applied)
			}
			r.kill()
			relay, err := newOutbox(t, s.db.pool, newStore(t, s.redis.addr, s.prefix))
			if err != nil {
				t.Fatal(err)
			}
			runRelay(t, relay)
			if _, ok := within(bound, func() bool { return s.db.rows(t) == 0 }); !ok {
				t.Fatal("the other relay did not drain the row")
			}
			if !s.current(t, "k") {
				t.Error("the entry is old after the other relay drained the row")
			}
			if st, _ := relay.Stats(bgCtx); st.Relayed != 1 {
				t.Errorf("the other relay relayed %d rows, want 1", st.Relayed)
			}
		})
	}
}

// An INSERT through aside_invalidate on another connection — another
// service, an operator in psql — is applied, keys and tags, woken by its
// notification (well before a poll interval of 10 s).
func TestFunctionFromAnotherConnection(t *testing.T) {
	s := newSetup(t)
	relay, err := newOutbox(t, s.db.pool, s.store, WithPoll(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, relay)
	s.seed(t, "k")
	s.seed(t, "tagged")
	if _, err := s.items.Get(bgCtx, "tagged", s.load("tagged"), aside.Tags("cat:1")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the relay's first look is over: only the notification can wake it
	_, err = s.db.pool.Exec(bgCtx, `BEGIN; UPDATE source SET v = v + 1;
		SELECT aside_invalidate('items', ARRAY['k']); SELECT aside_invalidate(tags => ARRAY['cat:1']); COMMIT`)
	if err != nil {
		t.Fatal(err)
	}
	took, ok := within(bound, func() bool { return s.current(t, "k") && s.current(t, "tagged") })
	if !ok {
		t.Fatal("the function's changes were not applied")
	}
	t.Logf("applied %v after the commit", took.Round(time.Millisecond))
	// A change that could never be applied is refused by the table.
	if _, err := s.db.pool.Exec(bgCtx, "SELECT aside_invalidate('bad name', ARRAY['k'])"); err == nil {
		t.Error("aside_invalidate accepted an invalid cache name")
	}
	if _, err := s.db.pool.Exec(bgCtx, "SELECT aside_invalidate(keys => ARRAY['k'])"); err == nil {
		t.Error("aside_invalidate accepted keys without a cache")
	}
}

// Redis killed and restarted while writers commit: the writes never fail,
// every row drains, and no key is left stale.
func TestRedisRestartedWhileWritersCommit(t *testing.T) {
	s := newSetup(t)
	o, err := newOutbox(t, s.db.pool, s.store, WithGrace(100*time.Millisecond), WithPoll(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, o)
	ids := make([]string, 8)
	for i := range ids {
		ids[i] = fmt.Sprint("k", i)
		s.seed(t, ids[i])
	}
	ctx, cancel := context.WithCancel(bgCtx)
	var wg sync.WaitGroup
	var writes, queued, failed atomic.Int64
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				id := ids[(w+i)%len(ids)]
				err := o.Write(bgCtx, func(ctx context.Context, tx pgx.Tx) error { return bump(ctx, tx, id) }, s.items.Changed(id))
				switch {
				case err == nil:
				case errors.Is(err, aside.ErrQueued):
					queued.Add(1)
				default:
					failed.Add(1)
					t.Errorf("a write failed: %v", err)
				}
				writes.Add(1)
				_, _ = s.items.Get(bgCtx, ids[(w+i+3)%len(ids)], s.load(ids[(w+i+3)%len(ids)])) // readers fill entries throughout
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	s.redis.kill()
	// Down until writes have met the outage, then up until more commit.
	if _, ok := within(bound, func() bool { return queued.Load() >= 20 }); !ok {
		cancel()
		wg.Wait()
		t.Fatalf("no write met the outage (%d writes): the test did not test it", writes.Load())
	}
	s.redis.start(t)
	after := writes.Load()
	within(bound, func() bool { return writes.Load() > after+50 })
	cancel()
	wg.Wait()
	if _, ok := within(bound, func() bool { return s.db.rows(t) == 0 }); !ok {
		t.Fatalf("%d rows left in the outbox", s.db.rows(t))
	}
	for _, id := range ids {
		want, _ := s.db.value(bgCtx, id)
		if got, err := s.items.Peek(bgCtx, id); err == nil && got != want {
			t.Errorf("%s: cached %d, source %d: stale", id, got, want)
		}
	}
	t.Logf("%d writes, %d met the outage and were left to the relay, %d failed", writes.Load(), queued.Load(), failed.Load())
}

// Two Stores (two redis-servers): a change reaches both; while one is down
// its rows wait (its lag grows, the other's does not) until it returns.
func TestTwoStores(t *testing.T) {
	s := newSetup(t)
	other := startRedis(t)
	otherStore := newStore(t, other.addr, s.prefix)
	otherItems, _ := newItems(t, otherStore, s.db)
	o, err := newOutbox(t, s.db.pool, s.store, WithName("eu"), WithTarget("us", otherStore), WithGrace(100*time.Millisecond), WithPoll(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, o)
	s.seed(t, "k")
	read := func(c *aside.Cache[int64]) int64 {
		v, _ := c.Get(bgCtx, "k", s.load("k"))
		return v
	}
	read(otherItems)
	write := func() {
		if err := o.Write(bgCtx, func(ctx context.Context, tx pgx.Tx) error { return bump(ctx, tx, "k") }, s.items.Changed("k")); err != nil {
			t.Fatal(err)
		}
	}
	write()
	want, _ := s.db.value(bgCtx, "k")
	if read(s.items) != want {
		t.Error("the writer's Store is old after Write")
	}
	if _, ok := within(bound, func() bool { return read(otherItems) == want && s.db.rows(t) == 0 }); !ok {
		t.Fatal("the other Store did not get the change")
	}

	other.kill()
	write()
	time.Sleep(500 * time.Millisecond)
	st, err := o.Stats(bgCtx)
	if err != nil || st.Pending != 1 || st.Behind["us"] != 1 || st.Behind["eu"] != 0 || st.Lag["us"] < 300*time.Millisecond {
		t.Errorf("Stats with one Store down = %+v, %v; want its row pending, behind on us only", st, err)
	}
	other.start(t)
	want, _ = s.db.value(bgCtx, "k")
	if _, ok := within(bound, func() bool { return s.db.rows(t) == 0 && read(otherItems) == want }); !ok {
		t.Fatal("the row did not drain once the Store returned")
	}
}

func TestOptions(t *testing.T) {
	d := newDatabase(t)
	store := newStore(t, "127.0.0.1:1", "p")
	for _, tc := range []struct {
		opts []Option
		want string
	}{
		{[]Option{WithPoll(0)}, "poll interval"},
		{[]Option{WithGrace(-1)}, "grace"},
		{[]Option{WithBatch(0)}, "batch"},
		{[]Option{WithTarget("main", store)}, "named twice"},
		{[]Option{WithTarget("x", nil)}, "nil store"},
		{[]Option{WithName("")}, "empty target name"},
	} {
		if _, err := newOutbox(t, d.pool, store, tc.opts...); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "asidepg: ") {
			t.Errorf("New = %v, want an asidepg error about %q", err, tc.want)
		}
	}
}

// A relay whose target cannot be reached does not spin on full batches it
// cannot finish: it looks again after its poll interval, and drains once
// the target returns.
func TestRelayWaitsForAnUnreachableTarget(t *testing.T) {
	s := newSetup(t)
	// A target whose breaker, once open, stays open: every apply fails at
	// once, the case in which a relay would spin.
	down, err := aside.NewStore(newClient(t, s.redis.addr), aside.WithPrefix(s.prefix), aside.WithOpTimeout(100*time.Millisecond),
		aside.WithBreaker(1, 2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = down.Close() })
	o, err := newOutbox(t, s.db.pool, down, WithBatch(2), WithPoll(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	var claims atomic.Int64
	o.hooks = &hooks{at: func(p point) {
		if p == pointAfterClaim {
			claims.Add(1)
		}
	}}
	s.redis.kill()
	for range 5 {
		if _, err := s.db.pool.Exec(bgCtx, "SELECT aside_invalidate('items', ARRAY['k'])"); err != nil {
			t.Fatal(err)
		}
	}
	_ = down.ApplyRecorded(bgCtx, aside.Change{Tags: []string{"t"}}) // opens the breaker
	runRelay(t, o)
	time.Sleep(time.Second)
	if n := claims.Load(); n > 20 {
		t.Errorf("%d claims in 1 s with the target down and a poll of 100 ms: the relay spins", n)
	}
	s.redis.start(t)
	if _, ok := within(bound, func() bool { return s.db.rows(t) == 0 }); !ok {
		t.Errorf("%d rows left once the target returned", s.db.rows(t))
	}
}
