// Package asidepg makes aside's invalidations durable with PostgreSQL: the
// changes a transaction makes to cached data are recorded in an outbox table
// in that same transaction, so that once it commits they take effect even if
// the writer dies before applying them, Redis is down, or the write came
// from another service.
//
// A writer records its changes in its transaction ([Outbox.Write], or
// [Outbox.Record] with a pgx.Tx of its own), and applies them itself just
// after COMMIT — one round trip to Redis, as [aside.Store.Write] does — then
// deletes their rows. Relays ([Outbox.Relay], run by any number of
// processes) apply what is left: rows whose writer died or could not reach
// Redis (after a grace period), and rows that other writers recorded with the
// SQL function aside_invalidate. Invalidations are idempotent, so a crash
// anywhere costs a duplicate invalidation — one extra miss — never a lost
// one; a transaction that rolls back records nothing.
package asidepg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/asidecache/aside"
)

// Outbox records changes in PostgreSQL and applies them to one or more
// Stores. Create it with [New]; it is safe for concurrent use.
type Outbox struct {
	pool    *pgxpool.Pool
	targets []target // the Store Write applies to first, then WithTarget's
	grace   time.Duration
	poll    time.Duration
	batch   int
	log     *slog.Logger
	hooks   seams // nil outside tests

	fastApplied, relayed, rejected, applyErrors atomic.Uint64

	// Rows their writer applied, deleted in the background: a commit of
	// their own would cost the write path as much as the apply.
	mu       sync.Mutex // protects applied and deleting
	applied  []int64
	deleting bool
	deletes  sync.WaitGroup
}

// target is a Store a change must reach, by the name its rows record.
type target struct {
	name  string
	store *aside.Store
}

// Option configures an Outbox.
type Option func(*Outbox)

// WithName names the Store given to [New] among the outbox's targets (the
// name its rows record once it has applied them); "main" by default. Name
// it when several deployments share the outbox, each with its own Store.
func WithName(name string) Option { return func(o *Outbox) { o.targets[0].name = name } }

// WithTarget adds another Store every change must reach — another region's
// Redis, another deployment's — before its row is deleted. Relays apply
// changes to it; [Stats] reports how far behind it is.
func WithTarget(name string, store *aside.Store) Option {
	return func(o *Outbox) { o.targets = append(o.targets, target{name: name, store: store}) }
}

// WithGrace sets how long a relay leaves a writer's own rows to the writer
// (500 ms by default): a relay applies them after it, if they are still
// there. Rows recorded with aside_invalidate have no grace period.
func WithGrace(d time.Duration) Option { return func(o *Outbox) { o.grace = d } }

// WithPoll sets how often a relay looks for rows when no notification woke
// it (200 ms by default). A writer that dies after its commit has its
// changes applied within grace + poll + one apply.
func WithPoll(d time.Duration) Option { return func(o *Outbox) { o.poll = d } }

// WithBatch sets how many rows a relay claims at once (100 by default).
func WithBatch(n int) Option { return func(o *Outbox) { o.batch = n } }

// WithLogger logs what a relay could not do (an apply that failed, a row
// refused) at warning level.
func WithLogger(l *slog.Logger) Option { return func(o *Outbox) { o.log = l } }

// New returns the outbox in pool whose changes reach store (the Store of
// this process, which Write applies them to at once) and the Stores of
// [WithTarget]. The table must exist: see [Migrate].
func New(pool *pgxpool.Pool, store *aside.Store, opts ...Option) (*Outbox, error) {
	if pool == nil || store == nil {
		return nil, errors.New("asidepg: nil pool or store")
	}
	o := &Outbox{pool: pool, targets: []target{{name: "main", store: store}}, grace: 500 * time.Millisecond,
		poll: 200 * time.Millisecond, batch: 100}
	for _, opt := range opts {
		opt(o)
	}
	switch {
	case o.grace < 0:
		return nil, fmt.Errorf("asidepg: grace must be >= 0, got %v", o.grace)
	case o.poll <= 0:
		return nil, fmt.Errorf("asidepg: poll interval must be > 0, got %v", o.poll)
	case o.batch < 1:
		return nil, fmt.Errorf("asidepg: batch must be >= 1, got %d", o.batch)
	}
	seen := map[string]bool{}
	for _, t := range o.targets {
		switch {
		case t.name == "":
			return nil, errors.New("asidepg: empty target name")
		case t.store == nil:
			return nil, fmt.Errorf("asidepg: target %q has a nil store", t.name)
		case seen[t.name]:
			return nil, fmt.Errorf("asidepg: target %q named twice", t.name)
		}
		seen[t.name] = true
	}
	return o, nil
}

// Write runs fn in a transaction, records changes in it (after fn, so that
// [aside.Later] sees fn's result) and commits; then it applies the changes
// to this process's Store and deletes their rows. If fn fails, the
// transaction rolls back and nothing is applied: fn's error is returned
// unchanged.
//
// Once the transaction has committed, the changes take effect: at once
// when Write returns nil — no Get that starts afterwards, in any process,
// returns an old value — or, when Redis could not be reached, within a
// relay's grace + poll of Redis answering again, and then Write's error
// matches [aside.ErrQueued]: the write committed, answer it as a success. A
// commit that fails is returned as it is (it may have committed: a relay
// then applies the changes).
func (o *Outbox) Write(ctx context.Context, fn func(ctx context.Context, tx pgx.Tx) error, changes ...aside.Change) error {
	var rec Recorded
	err := pgx.BeginFunc(ctx, o.pool, func(tx pgx.Tx) error {
		if err := fn(ctx, tx); err != nil {
			return err
		}
		var err error
		rec, err = o.Record(ctx, tx, changes...)
		return err
	})
	if err != nil {
		return err
	}
	return rec.Apply(ctx)
}

// Recorded is changes recorded in a transaction, to apply once it commits.
type Recorded struct {
	o       *Outbox
	changes []aside.Change
	ids     []int64
}

// Record records changes in tx, a transaction of the caller's, with one
// INSERT; call Apply on the result once tx has committed. If the caller
// never does (it died, it forgot), a relay applies them after the grace
// period; if tx rolls back, nothing is recorded. A change that could never
// be applied is refused here (see [aside.Resolve]), failing the
// transaction rather than a relay.
func (o *Outbox) Record(ctx context.Context, tx pgx.Tx, changes ...aside.Change) (Recorded, error) {
	flat, err := aside.Resolve(changes...)
	if err != nil || len(flat) == 0 {
		return Recorded{o: o}, err
	}
	if recordsAfterCommit(o.hooks) {
		return Recorded{o: o, changes: flat}, nil // the broken variant: Apply records them, after the commit
	}
	ids, err := insertChanges(ctx, tx, flat, true)
	if err != nil {
		return Recorded{o: o}, err
	}
	return Recorded{o: o, changes: flat, ids: ids}, nil
}

// insertChanges inserts one row per change with one INSERT and returns
// their ids.
func insertChanges(ctx context.Context, q querier, changes []aside.Change, fast bool) ([]int64, error) {
	var sql strings.Builder
	sql.WriteString("INSERT INTO aside_outbox (cache, keys, tags, stale, fast) VALUES ")
	args := make([]any, 0, 5*len(changes))
	for i, ch := range changes {
		if i > 0 {
			sql.WriteString(", ")
		}
		n := len(args)
		fmt.Fprintf(&sql, "($%d, $%d, $%d, $%d, $%d)", n+1, n+2, n+3, n+4, n+5)
		args = append(args, ch.Cache, nonNil(ch.Keys), nonNil(ch.Tags), ch.Stale, fast)
	}
	sql.WriteString(" RETURNING id")
	rows, err := q.Query(ctx, sql.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("asidepg: record: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("asidepg: record: %w", err)
	}
	return ids, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Apply applies the recorded changes to the outbox's Store, then has
// their rows deleted in the background (or, with other targets, marked as
// applied by this Store). Call it once the transaction has committed. An
// error matches [aside.ErrQueued]: as with [aside.Store.Apply], the
// changes are queued in this process and replayed before its next
// invalidation (so that its invalidations take effect in order), and their
// rows stay for a relay, should this process die first.
func (r Recorded) Apply(ctx context.Context) error {
	o := r.o
	if o == nil || len(r.changes) == 0 {
		return nil
	}
	if recordsAfterCommit(o.hooks) {
		// The broken variant records after the commit, in a transaction of
		// its own: a writer that dies first loses the changes.
		reach(o.hooks, pointBeforeRecord)
		ids, err := insertChanges(ctx, o.pool, r.changes, true)
		if err != nil {
			return err
		}
		r.ids = ids
	}
	reach(o.hooks, pointBeforeFastApply)
	// Apply, not ApplyRecorded: what cannot reach Redis is also queued in
	// this process, so that its invalidations keep taking effect in the
	// order they were made (the queue is replayed before the next one);
	// the rows stay for a relay should the process die first.
	if err := o.targets[0].store.Apply(ctx, r.changes...); err != nil {
		o.applyErrors.Add(1)
		return &leftError{cause: err}
	}
	o.fastApplied.Add(uint64(len(r.ids)))
	o.forget(r.ids)
	return nil
}

// forget deletes the rows of ids in the background (or, with other
// targets, records that this Store applied them): the rows of the writes
// of the next moment go in one statement, by one goroutine that ends once
// none wait.
// A row not deleted — the process died first — is applied again by a
// relay: a duplicate, which costs one miss.
func (o *Outbox) forget(ids []int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.applied = append(o.applied, ids...)
	if o.deleting {
		return
	}
	o.deleting = true
	o.deletes.Go(func() {
		for {
			// A moment for the rows of the writes that follow, so that a busy
			// writer pays one deletion per batch, not per write: far less
			// than the grace period, after which a relay would take them.
			time.Sleep(min(o.grace/10, 50*time.Millisecond))
			o.mu.Lock()
			ids := o.applied
			o.applied = nil
			if len(ids) == 0 {
				o.deleting = false
				o.mu.Unlock()
				return
			}
			o.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := pgx.BeginFunc(ctx, o.pool, func(tx pgx.Tx) error {
				b := &pgx.Batch{}
				// A deletion lost in a crash of PostgreSQL costs a duplicate
				// invalidation: its commit need not wait for the disk, and
				// then costs the writes beside it next to nothing.
				b.Queue("SET LOCAL synchronous_commit = off")
				if len(o.targets) == 1 {
					b.Queue("DELETE FROM aside_outbox WHERE id = ANY($1)", ids)
				} else {
					b.Queue(`UPDATE aside_outbox SET applied = array_append(applied, $2)
						WHERE id = ANY($1) AND NOT ($2 = ANY(applied))`, ids, o.targets[0].name)
				}
				return tx.SendBatch(ctx, b).Close()
			})
			cancel()
			if err != nil {
				o.warn("asidepg: applied changes whose rows could not be deleted: a relay will apply them again", "rows", len(ids), "error", err)
			}
		}
	})
}

// Close waits for the deletions of applied rows still running (at most a
// few seconds); call it before closing the pool. The Outbox stays usable.
func (o *Outbox) Close() { o.deletes.Wait() }

// leftError is a committed write whose changes could not be applied at
// once: they wait in the outbox for a relay.
type leftError struct{ cause error }

func (e *leftError) Error() string {
	return "asidepg: committed; changes left to the relay: " + e.cause.Error()
}

func (e *leftError) Unwrap() []error { return []error{aside.ErrQueued, e.cause} }

func (o *Outbox) warn(msg string, args ...any) {
	if o.log != nil {
		o.log.Warn(msg, args...)
	}
}
