package asidepg

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Schema is the SQL that Migrate runs: the outbox table and the function
// aside_invalidate, in the schema first on the search_path. It is safe to
// run again. Apply it with your own migration tool if you have one.
//
// A row is a change: keys of a cache, tags, hard or soft (stale). fast marks
// a row whose writer applies it itself just after its commit (Outbox.Write,
// Recorded.Apply): a relay leaves it a grace period first. applied names the
// Stores (targets) that have applied it when there are several.
//
// aside_invalidate is how anything else records a change — another
// service, a trigger, an operator in psql — inside its own transaction:
//
//	SELECT aside_invalidate('products', ARRAY['42']);            -- keys of a cache
//	SELECT aside_invalidate(tags => ARRAY['category:7']);         -- tags
//	SELECT aside_invalidate('products', ARRAY['42'], stale => true); -- mark stale
//
// It wakes the relays with NOTIFY (a hint: they poll anyway).
const Schema = `
CREATE TABLE IF NOT EXISTS aside_outbox (
	id         bigserial PRIMARY KEY,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	cache      text NOT NULL DEFAULT '' CHECK (cache = '' OR cache ~ '^[A-Za-z0-9_.-]{1,64}$'),
	keys       text[] NOT NULL DEFAULT '{}' CHECK (array_position(keys, NULL) IS NULL AND array_position(keys, '') IS NULL
	                                              AND (cardinality(keys) = 0 OR cache <> '')),
	tags       text[] NOT NULL DEFAULT '{}' CHECK (array_position(tags, NULL) IS NULL AND array_position(tags, '') IS NULL),
	stale      boolean NOT NULL DEFAULT false,
	fast       boolean NOT NULL DEFAULT false,
	applied    text[] NOT NULL DEFAULT '{}'
);

CREATE OR REPLACE FUNCTION aside_invalidate(cache text DEFAULT '', keys text[] DEFAULT '{}', tags text[] DEFAULT '{}',
                                            stale boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	row_id bigint;
BEGIN
	INSERT INTO aside_outbox (cache, keys, tags, stale) VALUES ($1, $2, $3, $4) RETURNING id INTO row_id;
	PERFORM pg_notify('aside_outbox', '');
	RETURN row_id;
END
$$;
`

// Execer runs SQL: a *pgxpool.Pool, a *pgx.Conn or a pgx.Tx.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Migrate creates the outbox table and the function aside_invalidate if
// they do not exist (see [Schema]).
func Migrate(ctx context.Context, db Execer) error {
	if _, err := db.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("asidepg: migrate: %w", err)
	}
	return nil
}

// querier is what recording a change needs of a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}
