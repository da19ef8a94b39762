package asidepg

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/asidecache/aside"
)

// TestMain runs the tests (checking that nothing they start is left
// running), or, in a child process a test started, one role: a writer or a
// relay that stops at a point of its work and waits there to be killed.
func TestMain(m *testing.M) {
	if role := os.Getenv("ASIDEPG_CHILD"); role != "" {
		runChild(role)
		return
	}
	goleak.VerifyTestMain(m)
}

// The roles. Their parent passes the database (ASIDEPG_DB), the Redis
// (ASIDEPG_REDIS), the Store's prefix (ASIDEPG_PREFIX) and the source row
// to write (ASIDEPG_ID).
const (
	roleWriter          = "writer"            // commits a write, stops before applying its changes
	roleWriterBroken    = "writer-broken"     // the same, recording its changes after the commit
	roleRelayAfterClaim = "relay-after-claim" // claims rows, stops before applying them
	roleRelayAfterApply = "relay-after-apply" // applies rows, stops before deleting them
)

func childEnv(d *database, r *redisProc, prefix, id string) []string {
	return []string{"ASIDEPG_DB=" + d.url, "ASIDEPG_REDIS=" + r.addr, "ASIDEPG_PREFIX=" + prefix, "ASIDEPG_ID=" + id}
}

func runChild(role string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "asidepg child:", role, err)
		os.Exit(2)
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("ASIDEPG_DB"))
	if err != nil {
		fail(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv("ASIDEPG_REDIS"), ContextTimeoutEnabled: true, MaxRetries: -1, DisableIdentity: true})
	store, err := aside.NewStore(rdb, aside.WithPrefix(os.Getenv("ASIDEPG_PREFIX")), aside.WithOpTimeout(200*time.Millisecond))
	if err != nil {
		fail(err)
	}
	id := os.Getenv("ASIDEPG_ID")
	stopAt := func(at point, line string) *hooks {
		return &hooks{at: func(p point) {
			if p == at {
				say(os.Stdout, line)
			}
		}}
	}
	switch role {
	case roleWriter, roleWriterBroken:
		o, err := New(pool, store)
		if err != nil {
			fail(err)
		}
		o.hooks = stopAt(pointBeforeFastApply, "committed")
		if role == roleWriterBroken {
			h := stopAt(pointBeforeRecord, "committed")
			h.recordAfterCommit = true
			o.hooks = h
		}
		err = o.Write(ctx, func(ctx context.Context, tx pgx.Tx) error { return bump(ctx, tx, id) },
			aside.Change{Cache: "items", Keys: []string{id}})
		fail(fmt.Errorf("the write returned (%v) instead of stopping", err))
	case roleRelayAfterClaim, roleRelayAfterApply:
		o, err := New(pool, store, WithGrace(0))
		if err != nil {
			fail(err)
		}
		o.hooks = stopAt(pointAfterClaim, "stopped")
		if role == roleRelayAfterApply {
			o.hooks = stopAt(pointAfterRelayApply, "stopped")
		}
		fail(fmt.Errorf("the relay returned (%v) instead of stopping", o.Relay(ctx)))
	}
	fail(fmt.Errorf("unknown role"))
}
