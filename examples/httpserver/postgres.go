package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidepg"
)

// postgres is the catalogue in a PostgreSQL table: real queries in the
// loaders, writes in transactions.
type postgres struct {
	pool  *pgxpool.Pool
	table string
}

// openPostgres connects to url and makes sure the table exists and holds
// the seed rows. It fails fast (2 s) when no server answers, so that the
// caller can fall back.
func openPostgres(ctx context.Context, url, table string) (*postgres, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	pg := &postgres{pool: pool, table: pgx.Identifier{table}.Sanitize()}
	_, err = pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
		id text PRIMARY KEY, name text NOT NULL, price integer NOT NULL, category text NOT NULL)`, pg.table))
	if err == nil {
		for _, p := range seedRows() {
			_, err = pool.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (id, name, price, category) VALUES ($1, $2, $3, $4)
				ON CONFLICT (id) DO NOTHING`, pg.table), p.ID, p.Name, p.Price, p.Category)
			if err != nil {
				break
			}
		}
	}
	if err == nil {
		err = asidepg.Migrate(ctx, pool) // the outbox of the writes' invalidations
	}
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("preparing table %s: %w", pg.table, err)
	}
	return pg, nil
}

func (pg *postgres) Name() string { return "PostgreSQL table " + pg.table }

func (pg *postgres) Close() { pg.pool.Close() }

func (pg *postgres) Product(ctx context.Context, id string) (Product, error) {
	var p Product
	err := pg.pool.QueryRow(ctx, fmt.Sprintf(`SELECT id, name, price, category FROM %s WHERE id = $1`, pg.table), id).
		Scan(&p.ID, &p.Name, &p.Price, &p.Category)
	if errors.Is(err, pgx.ErrNoRows) {
		return Product{}, aside.ErrNotFound
	}
	return p, err
}

func (pg *postgres) Products(ctx context.Context, ids []string) (map[string]Product, error) {
	rows, err := pg.pool.Query(ctx, fmt.Sprintf(`SELECT id, name, price, category FROM %s WHERE id = ANY($1)`, pg.table), ids)
	if err != nil {
		return nil, err
	}
	ps, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Product])
	out := make(map[string]Product, len(ps))
	for _, p := range ps {
		out[p.ID] = p
	}
	return out, err
}

func (pg *postgres) InCategory(ctx context.Context, cat string) ([]Product, error) {
	rows, err := pg.pool.Query(ctx, fmt.Sprintf(`SELECT id, name, price, category FROM %s WHERE category = $1 ORDER BY id`, pg.table), cat)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[Product])
}

// Save upserts p in a transaction of its own (see saveIn).
func (pg *postgres) Save(ctx context.Context, p Product) (old string, err error) {
	err = pgx.BeginFunc(ctx, pg.pool, func(tx pgx.Tx) error {
		old, err = pg.saveIn(ctx, tx, p)
		return err
	})
	return old, err
}

// saveIn upserts p in tx, first locking the row, so the category it
// returns is the one p replaced.
func (pg *postgres) saveIn(ctx context.Context, tx pgx.Tx, p Product) (old string, err error) {
	err = tx.QueryRow(ctx, fmt.Sprintf(`SELECT category FROM %s WHERE id = $1 FOR UPDATE`, pg.table), p.ID).Scan(&old)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return "", err
	}
	_, err = tx.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (id, name, price, category) VALUES ($1, $2, $3, $4)
		ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price, category = EXCLUDED.category`, pg.table),
		p.ID, p.Name, p.Price, p.Category)
	return old, err
}

// drop removes the table (tests use a table of their own).
func (pg *postgres) drop(ctx context.Context) error {
	_, err := pg.pool.Exec(ctx, "DROP TABLE IF EXISTS "+pg.table)
	return err
}
