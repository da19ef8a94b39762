package asidepg_test

import (
	"context"
	"errors"
	"log"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidepg"
)

type Product struct {
	ID    string
	Cents int64
}

// A service whose writes record their invalidations in the write's
// transaction, and which runs the relay for writers that die after their
// commit. (Compiled, not run: it needs PostgreSQL and Redis.)
func Example() {
	ctx := context.Background()
	var pool *pgxpool.Pool // pgxpool.New(ctx, databaseURL)
	var store *aside.Store // aside.NewStore(rdb)
	products, err := aside.New[Product](store, "product")
	if err != nil {
		log.Fatal(err)
	}
	if err := asidepg.Migrate(ctx, pool); err != nil {
		log.Fatal(err)
	}
	outbox, err := asidepg.New(pool, store)
	if err != nil {
		log.Fatal(err)
	}
	defer outbox.Close()
	go func() { _ = outbox.Relay(ctx) }()

	err = outbox.Write(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "UPDATE products SET cents = $2 WHERE id = $1", "42", 1999)
		return err
	}, products.Changed("42"))
	if err != nil && !errors.Is(err, aside.ErrQueued) {
		log.Print(err) // the write failed: nothing was committed or applied
	}
}

// A transaction of the caller's: Record in it, Apply after its commit.
func ExampleOutbox_Record() {
	ctx := context.Background()
	var pool *pgxpool.Pool
	var outbox *asidepg.Outbox
	var products *aside.Cache[Product]

	tx, err := pool.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "DELETE FROM products WHERE id = $1", "42"); err != nil {
		log.Fatal(err)
	}
	recorded, err := outbox.Record(ctx, tx, products.Changed("42"))
	if err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}
	// If this process died here, a relay would apply the change.
	if err := recorded.Apply(ctx); err != nil && !errors.Is(err, aside.ErrQueued) {
		log.Print(err)
	}
}
