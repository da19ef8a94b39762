package asidepg

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/asidecache/aside"
)

// notifyChannel is the channel aside_invalidate notifies: a hint that wakes
// the relays early; they poll anyway (a notification is lost when no relay
// listens, and PostgreSQL replays none).
const notifyChannel = "aside_outbox"

// Relay applies the rows left in the outbox — a writer's after the grace
// period, aside_invalidate's at once — to every target, and deletes each row
// once every target has applied it. Run it in any number of processes: each
// claims rows the others have not (FOR UPDATE SKIP LOCKED), and a relay
// that dies mid-way leaves its rows to the others (its transaction aborts).
// A target that cannot be reached keeps its rows waiting in PostgreSQL,
// not in memory, and does not hold back the others. Relay returns nil when
// ctx ends.
func (o *Outbox) Relay(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Go(func() { o.listen(ctx, wake) })
	defer wg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-wake:
		}
		n, allDone, err := o.relayOnce(ctx)
		if err != nil && ctx.Err() == nil {
			o.warn("asidepg: relay: claiming rows failed", "error", err)
		}
		next := o.poll
		if n == o.batch && allDone && err == nil {
			next = 0 // a full batch done: more rows may wait
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// listen holds a connection that LISTENs on the outbox's channel and wakes
// the relay on each notification, until ctx ends; it reconnects after a
// poll interval when the connection fails.
func (o *Outbox) listen(ctx context.Context, wake chan<- struct{}) {
	for ctx.Err() == nil {
		err := func() error {
			conn, err := o.pool.Acquire(ctx)
			if err != nil {
				return err
			}
			// Hijacked, not released: a connection that listened must not go
			// back to the pool's other users.
			c := conn.Hijack()
			defer c.Close(context.WithoutCancel(ctx))
			if _, err := c.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
				return err
			}
			for {
				if _, err := c.WaitForNotification(ctx); err != nil {
					return err
				}
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}()
		if err != nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(o.poll):
			}
		}
	}
}

// row is one outbox row as a relay claims it.
type row struct {
	id      int64
	change  aside.Change
	applied []string
}

// relayOnce claims up to a batch of rows, applies them to each target that
// has not applied them, and deletes (or updates) them, in one transaction.
// It returns how many rows it claimed, and whether every one of them is
// done (applied by every target, or refused): only then may more wait at
// once — a target that cannot be reached must not make the relay spin.
func (o *Outbox) relayOnce(ctx context.Context) (int, bool, error) {
	tx, err := o.pool.Begin(ctx)
	if err != nil {
		return 0, false, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// Its deletions need not wait for the disk: one lost in a crash of
	// PostgreSQL is applied again, a duplicate.
	if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
		return 0, false, err
	}
	rs, err := tx.Query(ctx, `SELECT id, cache, keys, tags, stale, applied FROM aside_outbox
		WHERE NOT fast OR created_at < clock_timestamp() - make_interval(secs => $1)
		ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED`, o.grace.Seconds(), o.batch)
	if err != nil {
		return 0, false, err
	}
	rows, err := pgx.CollectRows(rs, func(r pgx.CollectableRow) (row, error) {
		var w row
		err := r.Scan(&w.id, &w.change.Cache, &w.change.Keys, &w.change.Tags, &w.change.Stale, &w.applied)
		return w, err
	})
	if err != nil || len(rows) == 0 {
		return 0, false, err
	}
	reach(o.hooks, pointAfterClaim)

	var refused []int64
	rows = slices.DeleteFunc(rows, func(w row) bool {
		if _, err := aside.Resolve(w.change); err != nil {
			o.warn("asidepg: relay: a row holds a change that cannot be applied; deleted", "id", w.id, "error", err)
			refused = append(refused, w.id)
			return true
		}
		return false
	})
	o.rejected.Add(uint64(len(refused)))
	applied := make(map[int64][]string, len(rows)) // the targets that applied each row now
	for _, t := range o.targets {
		var ids []int64
		var changes []aside.Change
		for _, w := range rows {
			if !slices.Contains(w.applied, t.name) {
				ids, changes = append(ids, w.id), append(changes, w.change)
			}
		}
		if len(changes) == 0 {
			continue
		}
		if err := t.store.ApplyRecorded(ctx, changes...); err != nil {
			o.applyErrors.Add(1)
			o.warn("asidepg: relay: a target could not apply changes; they wait in the outbox", "target", t.name, "rows", len(ids), "error", err)
			continue
		}
		for _, id := range ids {
			applied[id] = append(applied[id], t.name)
		}
	}
	reach(o.hooks, pointAfterRelayApply)

	done := refused
	var partial []row
	for _, w := range rows {
		now := applied[w.id]
		if len(now) == 0 {
			continue
		}
		o.relayed.Add(1)
		if len(w.applied)+len(now) >= len(o.targets) {
			done = append(done, w.id)
		} else {
			w.applied = append(w.applied, now...)
			partial = append(partial, w)
		}
	}
	claimed := len(rows) + len(refused)
	if len(done) > 0 {
		if _, err := tx.Exec(ctx, "DELETE FROM aside_outbox WHERE id = ANY($1)", done); err != nil {
			return claimed, false, err
		}
	}
	for _, w := range partial {
		if _, err := tx.Exec(ctx, "UPDATE aside_outbox SET applied = $2 WHERE id = $1", w.id, w.applied); err != nil {
			return claimed, false, err
		}
	}
	return claimed, len(done) == claimed, tx.Commit(ctx)
}

// Stats is what an outbox holds and what this process did with it.
type Stats struct {
	Pending int           // rows not yet applied to every target
	Oldest  time.Duration // the age of the oldest of them (0: none)
	// Lag is, per target, the age of the oldest row it has not applied,
	// and Behind how many rows it has not applied.
	Lag    map[string]time.Duration
	Behind map[string]int

	// This process's counts since New.
	FastApplied uint64 // rows applied by their writer just after its commit
	// Relayed counts rows applied by this process's relay, each to the
	// targets that had not applied it: a writer's that died or could not
	// reach Redis, aside_invalidate's, and duplicates (a writer that
	// applied its rows and died before deleting them, a relay that died
	// before its commit) — which cannot be told apart without a write on
	// the writer's path, and cost one miss each.
	Relayed     uint64
	Rejected    uint64 // rows deleted because their change could never be applied
	ApplyErrors uint64 // applies that failed (the rows stayed)
}

// Stats reads the outbox's backlog (one query) and this process's counts.
func (o *Outbox) Stats(ctx context.Context) (Stats, error) {
	st := Stats{Lag: map[string]time.Duration{}, Behind: map[string]int{},
		FastApplied: o.fastApplied.Load(), Relayed: o.relayed.Load(), Rejected: o.rejected.Load(), ApplyErrors: o.applyErrors.Load()}
	names := make([]string, len(o.targets))
	for i, t := range o.targets {
		names[i] = t.name
	}
	var oldest float64
	if err := o.pool.QueryRow(ctx, `SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)
		FROM aside_outbox`).Scan(&st.Pending, &oldest); err != nil {
		return st, fmt.Errorf("asidepg: stats: %w", err)
	}
	st.Oldest = time.Duration(oldest * float64(time.Second))
	rs, err := o.pool.Query(ctx, `SELECT t.name,
			count(r.id), coalesce(extract(epoch FROM clock_timestamp() - min(r.created_at)), 0)
		FROM unnest($1::text[]) AS t(name)
		LEFT JOIN aside_outbox r ON NOT (t.name = ANY(r.applied))
		GROUP BY t.name`, names)
	if err != nil {
		return st, fmt.Errorf("asidepg: stats: %w", err)
	}
	var name string
	var n int
	var age float64
	_, err = pgx.ForEachRow(rs, []any{&name, &n, &age}, func() error {
		st.Lag[name], st.Behind[name] = time.Duration(age*float64(time.Second)), n
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("asidepg: stats: %w", err)
	}
	return st, nil
}

// point is where a test watches a writer or a relay (to kill it there).
type point uint8

const (
	pointBeforeRecord    point = iota // the broken variant: committed, changes not yet recorded
	pointBeforeFastApply              // committed and recorded, before the writer applies
	pointAfterClaim                   // a relay holds its rows, before it applies them
	pointAfterRelayApply              // a relay applied its rows, before it deletes them
)

// seams are where the tests watch a writer or a relay (to kill it at a
// point) and switch on a broken variant; nil outside tests, whose side is
// hooks_test.go.
type seams interface {
	reached(p point)
	recordsAfterCommit() bool // the broken variant: changes recorded after the commit, not in the transaction
}

func reach(h seams, p point) {
	if h != nil {
		h.reached(p)
	}
}

func recordsAfterCommit(h seams) bool { return h != nil && h.recordsAfterCommit() }
