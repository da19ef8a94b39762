package main

// The cost of a durable invalidation on the write path: a write followed by
// Store.Write's invalidation, against the same write with its changes
// recorded in the transaction (asidepg) and applied after the commit.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidepg"
)

const writeRows = 1000

func writes(ctx context.Context) {
	fmt.Println("## Writes: durable invalidation")
	fmt.Println()
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		url = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		fmt.Printf("Skipped: no PostgreSQL at %s (%v).\n\n", url, err)
		return
	}
	defer admin.Close(ctx)
	schema := prefix + "_writes"
	must2(admin.Exec(ctx, "CREATE SCHEMA "+schema))
	defer func() { _, _ = admin.Exec(context.WithoutCancel(ctx), "DROP SCHEMA "+schema+" CASCADE") }()
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	pool, err := pgxpool.New(ctx, url+sep+"search_path="+schema)
	must(err)
	defer pool.Close()
	must(asidepg.Migrate(ctx, pool))
	must2(pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE rows (id int PRIMARY KEY, v bigint NOT NULL);
		INSERT INTO rows SELECT g, 1 FROM generate_series(0, %d) g`, writeRows-1)))

	rdb := newClient(*addr)
	defer rdb.Close()
	store, err := aside.NewStore(rdb, aside.WithPrefix(prefix+"w"))
	must(err)
	defer store.Close()
	items, err := aside.New[int64](store, "items")
	must(err)
	outbox, err := asidepg.New(pool, store)
	must(err)
	defer outbox.Close()
	update := func(ctx context.Context, tx pgx.Tx, id int) error {
		_, err := tx.Exec(ctx, "UPDATE rows SET v = v + 1 WHERE id = $1", id)
		return err
	}
	// Each op writes a random row, whose entry was cached (so that the
	// invalidation deletes something, as a write to a read row does).
	op := func(b *testing.B, write func(id int) error) {
		r := rand.New(rand.NewPCG(1, 2))
		for b.Loop() {
			id := r.IntN(writeRows)
			b.StopTimer()
			_, _ = items.Get(ctx, strconv.Itoa(id), func(context.Context) (int64, error) { return 1, nil })
			b.StartTimer()
			if err := write(id); err != nil {
				b.Fatal(err)
			}
		}
	}
	subjects := []struct {
		name string
		fn   func(b *testing.B)
	}{
		{"the write alone (a transaction updating one row)", func(b *testing.B) {
			op(b, func(id int) error {
				return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return update(ctx, tx, id) })
			})
		}},
		{"the write, then its invalidation (`Store.Write`)", func(b *testing.B) {
			op(b, func(id int) error {
				return store.Write(ctx, func(ctx context.Context) error {
					return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return update(ctx, tx, id) })
				}, items.Changed(strconv.Itoa(id)))
			})
		}},
		{"the write + an outbox row, applied after the commit (`asidepg.Outbox.Write`)", func(b *testing.B) {
			op(b, func(id int) error {
				return outbox.Write(ctx, func(ctx context.Context, tx pgx.Tx) error { return update(ctx, tx, id) }, items.Changed(strconv.Itoa(id)))
			})
		}},
	}
	fns := make([]func(b *testing.B), len(subjects))
	for i, s := range subjects {
		fns[i] = s.fn
	}
	rs := measureAll(fns)
	fmt.Println("| subject | per write | × the write alone | × `Store.Write` |")
	fmt.Println("|---|---|---|---|")
	for i, s := range subjects {
		fmt.Printf("| %s | %s | %s | %s |\n", s.name, dur(rs[i].nsPerOp), ratio(rs[i], rs[0]), ratio(rs[i], rs[1]))
	}
	fmt.Println()
	fmt.Println("One goroutine, PostgreSQL and Redis on loopback. The outbox adds one INSERT to the transaction and one DELETE after the apply; " +
		"in exchange a writer that dies after its commit, or cannot reach Redis, leaves its invalidation to a relay instead of to the TTL.")
	fmt.Println()
}

func must2[T any](_ T, err error) { must(err) }
