package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/asidecache/aside"
)

// row is what every cache holds: a row of the source and the version it
// was read at.
type row struct {
	ID      int
	Version int64
}

// source is the versioned table of the run: the source of truth that
// loaders query and writers update.
type source interface {
	load(ctx context.Context, id int) (row, error)
	loadMany(ctx context.Context, ids []int) (map[int]row, error)
	bump(ctx context.Context, id int) (int64, error) // commits a new version of id and returns it
	versions(ctx context.Context) (map[int]int64, error)
	create(ctx context.Context, keys int) error // the table, keys rows at version 1
	drop(ctx context.Context) error
	close()
}

// openSource opens the run's table: in PostgreSQL for a postgres:// URL,
// or in the orchestrator's memory (-db memory) for its http:// address.
func openSource(ctx context.Context, url, table string) (source, error) {
	if strings.HasPrefix(url, "http://") {
		return &memSource{base: url, client: &http.Client{Timeout: 5 * time.Second}}, nil
	}
	return openPostgres(ctx, url, table)
}

// pgSource is the table in PostgreSQL.
type pgSource struct {
	pool  *pgxpool.Pool
	table string
}

func openPostgres(ctx context.Context, url, table string) (*pgSource, error) {
	// Generous: a worker respawned while the machine's 2 cores run the
	// others waits for its first connection.
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	// A reader's 4 goroutines, its refreshes and its batches load at once:
	// with pgx's default of 4 connections on 2 cores, loads waited up to
	// 0.9 s for a connection, and a few ran past the 2 s load timeout.
	cfg.MaxConns = max(cfg.MaxConns, 8)
	// The run's table is thrown away and PostgreSQL is never killed: its
	// commits need not wait for the disk. With them waiting, the writers'
	// transactions and their outbox rows kept the disk busy enough that
	// loads on this 2-core machine ran past their 2 s timeout (a run in two
	// failed; none did without the outbox).
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	pool, err := pgxpool.NewWithConfig(cctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(cctx); err != nil {
		pool.Close()
		return nil, err
	}
	return &pgSource{pool: pool, table: pgx.Identifier{table}.Sanitize()}, nil
}

// create makes the table with keys rows at version 1.
func (s *pgSource) create(ctx context.Context, keys int) error {
	_, err := s.pool.Exec(ctx, fmt.Sprintf(`DROP TABLE IF EXISTS %[1]s;
		CREATE TABLE %[1]s (id integer PRIMARY KEY, version bigint NOT NULL);
		INSERT INTO %[1]s SELECT g, 1 FROM generate_series(0, %[2]d) g`, s.table, keys-1))
	return err
}

func (s *pgSource) close() { s.pool.Close() }

func (s *pgSource) drop(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, "DROP TABLE IF EXISTS "+s.table)
	return err
}

// load is a loader's query.
func (s *pgSource) load(ctx context.Context, id int) (row, error) {
	r := row{ID: id}
	err := s.pool.QueryRow(ctx, fmt.Sprintf(`SELECT version FROM %s WHERE id = $1`, s.table), id).Scan(&r.Version)
	if errors.Is(err, pgx.ErrNoRows) {
		return row{}, aside.ErrNotFound
	}
	return r, err
}

func (s *pgSource) loadMany(ctx context.Context, ids []int) (map[int]row, error) {
	rows, err := s.pool.Query(ctx, fmt.Sprintf(`SELECT id, version FROM %s WHERE id = ANY($1)`, s.table), ids)
	if err != nil {
		return nil, err
	}
	rs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	out := make(map[int]row, len(rs))
	for _, r := range rs {
		out[r.ID] = r
	}
	return out, err
}

// bump commits a new version of id and returns it.
func (s *pgSource) bump(ctx context.Context, id int) (v int64, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		v, err = s.bumpIn(ctx, tx, id)
		return err
	})
	return v, err
}

// bumpIn writes a new version of id in tx and returns it.
func (s *pgSource) bumpIn(ctx context.Context, tx pgx.Tx, id int) (int64, error) {
	var v int64
	err := tx.QueryRow(ctx, fmt.Sprintf(`UPDATE %s SET version = version + 1 WHERE id = $1 RETURNING version`, s.table), id).Scan(&v)
	return v, err
}

func (s *pgSource) versions(ctx context.Context) (map[int]int64, error) {
	rows, err := s.pool.Query(ctx, fmt.Sprintf(`SELECT id, version FROM %s`, s.table))
	if err != nil {
		return nil, err
	}
	rs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	out := make(map[int]int64, len(rs))
	for _, r := range rs {
		out[r.ID] = r.Version
	}
	return out, err
}
