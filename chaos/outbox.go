package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/asidecache/aside/asidepg"
)

// outboxWatch is the run's outbox (asidepg), seen from the orchestrator: it
// makes the run's schema, samples how many rows wait and for how long, and
// after the run waits for them to drain.
type outboxWatch struct {
	base, url, schema string
	pool              *pgxpool.Pool
	stop, done        chan struct{}

	mu      sync.Mutex // protects the samples' maxima
	maxRows int
	maxAge  time.Duration
}

func newOutboxWatch(ctx context.Context, base string) (*outboxWatch, error) {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, base)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	b := &outboxWatch{base: base, schema: fmt.Sprintf("chaos_%d_%d", os.Getpid(), time.Now().UnixNano()%1e6),
		stop: make(chan struct{}), done: make(chan struct{})}
	if _, err := conn.Exec(cctx, "CREATE SCHEMA "+b.schema); err != nil {
		return nil, err
	}
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	b.url = base + sep + "search_path=" + b.schema
	if b.pool, err = pgxpool.New(cctx, b.url); err == nil {
		err = asidepg.Migrate(cctx, b.pool)
	}
	if err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

// watch samples the outbox every 200 ms until close (more often costs
// PostgreSQL a scan of a churning table that the run's loads feel).
func (b *outboxWatch) watch() {
	if b == nil {
		return
	}
	go func() {
		defer close(b.done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-b.stop:
				return
			case <-t.C:
			}
			if n, age, err := b.sample(context.Background()); err == nil {
				b.mu.Lock()
				b.maxRows, b.maxAge = max(b.maxRows, n), max(b.maxAge, age)
				b.mu.Unlock()
			}
		}
	}()
}

// sample returns how many rows wait and the oldest one's age.
func (b *outboxWatch) sample(ctx context.Context) (int, time.Duration, error) {
	var n int
	var age float64
	err := b.pool.QueryRow(ctx, `SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)
		FROM aside_outbox`).Scan(&n, &age)
	return n, time.Duration(age * float64(time.Second)), err
}

// drain runs a relay of its own (the writers are stopped) until the
// outbox is empty or d has passed, and returns the rows left.
func (b *outboxWatch) drain(ctx context.Context, r *run, d time.Duration) (int, error) {
	if b == nil {
		return 0, nil
	}
	c, err := openCaches(r.addr(0), r.cluster != nil, nil)
	if err != nil {
		return 0, err
	}
	defer c.store.Close()
	o, err := asidepg.New(b.pool, c.store)
	if err != nil {
		return 0, err
	}
	defer o.Close()
	rctx, cancel := context.WithTimeout(ctx, d)
	relayed := make(chan struct{})
	go func() { defer close(relayed); _ = o.Relay(rctx) }()
	defer func() { cancel(); <-relayed }()
	for {
		n, _, err := b.sample(ctx)
		switch {
		case err != nil:
			return 0, err
		case n == 0 || rctx.Err() != nil:
			return n, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *outboxWatch) report(w io.Writer, left int) {
	if b == nil {
		fmt.Fprintf(w, "\nOutbox: off — writers invalidate after their commit (Store.Write); a writer killed in between leaves its keys stale until their TTL.\n")
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	fmt.Fprintf(w, "\nOutbox (asidepg; writers record their invalidations in the write's transaction, and run the relay): "+
		"at most %d rows waiting, the oldest %.0f ms old (grace 2 s, poll 200 ms); %d rows left after the run.\n",
		b.maxRows, float64(b.maxAge)/float64(time.Millisecond), left)
}

// close stops the sampling and drops the run's schema.
func (b *outboxWatch) close() {
	select {
	case <-b.stop:
	default:
		close(b.stop)
		select {
		case <-b.done:
		case <-time.After(time.Second): // watch never started
		}
	}
	if b.pool != nil {
		b.pool.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if conn, err := pgx.Connect(ctx, b.base); err == nil {
		_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+b.schema+" CASCADE")
		_ = conn.Close(ctx)
	}
}
