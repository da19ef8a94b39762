package main

// The liveness run's service: a catalogue as a user writes it — a
// PostgreSQL table (or an in-memory one), net/http handlers that read
// through the cache and write then invalidate — once per subject.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asidecache/aside"
	rcache "github.com/go-redis/cache/v9"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// product is a row; Version goes up by one with every write, so a read that
// returns a lower version than a write that had answered before the read
// began is a stale read.
type product struct {
	ID      int    `json:"id" msgpack:"i"`
	Version int64  `json:"version" msgpack:"v"`
	Payload string `json:"payload" msgpack:"p"`
}

// source is the database: PostgreSQL where reachable, else rows in memory
// that take as long as the database's reads.
type source struct {
	pool  *pgxpool.Pool
	mu    sync.Mutex
	rows  map[int]int64
	reads atomic.Int64
	table string
}

func openSource(ctx context.Context) (*source, string) {
	s := &source{table: prefix + "_products", rows: map[int]int64{}}
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		url = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	pool, err := pgxpool.New(ctx, url+"&pool_max_conns=32")
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		return s, "rows in memory, 2.5 ms a read (no PostgreSQL: " + err.Error() + ")"
	}
	for _, q := range []string{
		fmt.Sprintf("CREATE TABLE %s (id int PRIMARY KEY, version bigint NOT NULL, payload text NOT NULL)", s.table),
		fmt.Sprintf("INSERT INTO %s SELECT i, 1, repeat('x', 400) FROM generate_series(1, %d) i", s.table, liveRows),
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			pool.Close()
			return s, "rows in memory (PostgreSQL: " + err.Error() + ")"
		}
	}
	s.pool = pool
	return s, "PostgreSQL 127.0.0.1:5432, a read ~2.5 ms (pg_sleep 2 ms)"
}

func (s *source) close() {
	if s.pool != nil {
		_, _ = s.pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+s.table)
		s.pool.Close()
	}
}

func (s *source) read(ctx context.Context, id int) (product, error) {
	s.reads.Add(1)
	p := product{ID: id}
	if s.pool == nil {
		time.Sleep(2500 * time.Microsecond)
		s.mu.Lock()
		p.Version = max(s.rows[id], 1)
		s.mu.Unlock()
		p.Payload = strings.Repeat("x", 400)
		return p, nil
	}
	var sleep string
	err := s.pool.QueryRow(ctx, fmt.Sprintf(pgRead, s.table), id).Scan(&p.Version, &p.Payload, &sleep)
	return p, err
}

// write bumps the row's version in one transaction and returns it.
func (s *source) write(ctx context.Context, id int) (int64, error) {
	if s.pool == nil {
		time.Sleep(2500 * time.Microsecond)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.rows[id] = max(s.rows[id], 1) + 1
		return s.rows[id], nil
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var v int64
	if err := tx.QueryRow(ctx, fmt.Sprintf("UPDATE %s SET version = version + 1 WHERE id = $1 RETURNING version", s.table), id).Scan(&v); err != nil {
		return 0, err
	}
	return v, tx.Commit(ctx)
}

// service is one variant's way to read and to write a product.
type service struct {
	name  string
	read  func(ctx context.Context, id int) (product, error)
	write func(ctx context.Context, id int) (int64, error) // the version committed
	close func()
}

func liveClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true, ContextTimeoutEnabled: true, MaxRetries: -1})
}

// newService returns the variant name over the Redis at addr.
func newService(name, addr string, db *source) service {
	key := func(id int) string { return strconv.Itoa(id) }
	switch name {
	case "go-redis/cache":
		{
			// As its README shows it: a client with go-redis' defaults.
			rdb := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
			c := rcache.New(&rcache.Options{Redis: rdb})
			return service{name: "go-redis/cache", close: func() { _ = rdb.Close() },
				read: func(ctx context.Context, id int) (product, error) {
					var p product
					err := c.Once(&rcache.Item{Ctx: ctx, Key: prefix + ":grc:" + key(id), Value: &p, TTL: time.Hour,
						Do: func(*rcache.Item) (any, error) { return db.read(ctx, id) }})
					return p, err
				},
				write: func(ctx context.Context, id int) (int64, error) {
					v, err := db.write(ctx, id)
					if err != nil {
						return 0, err
					}
					return v, c.Delete(ctx, prefix+":grc:"+key(id))
				}}
		}
	case "aside":
		return asideService(name, addr, db)
	case "aside + L1":
		return asideService(name, addr, db, aside.WithL1(10_000, time.Minute))
	case "aside + L1 ×2":
		// Two replicas of the service, each with its Store and its L1, the
		// requests spread between them: a strict L1's invalidation waits
		// for the other instance's acknowledgement.
		a := asideService(name, addr, db, aside.WithL1(10_000, time.Minute))
		b := asideService(name, addr, db, aside.WithL1(10_000, time.Minute))
		var n atomic.Uint64
		pick := func() service {
			if n.Add(1)%2 == 0 {
				return a
			}
			return b
		}
		return service{name: name, close: func() { a.close(); b.close() },
			read:  func(ctx context.Context, id int) (product, error) { return pick().read(ctx, id) },
			write: func(ctx context.Context, id int) (int64, error) { return pick().write(ctx, id) }}
	}
	return service{name: "no cache", read: db.read, write: db.write, close: func() {}}
}

func asideService(name, addr string, db *source, opts ...aside.Option) service {
	rdb := liveClient(addr)
	t0 := time.Now()
	debug := os.Getenv("LIVE_DEBUG") != ""
	sopts := []aside.StoreOption{aside.WithObserver(func(e aside.Event) {
		if e.Kind == aside.EventBreakerOpen {
			breakerOpened.Add(1)
		}
		if debug && (e.Kind == aside.EventBreakerOpen || e.Kind == aside.EventBreakerClosed || e.Err != nil && !strings.Contains(e.Err.Error(), "timeout")) {
			fmt.Fprintln(os.Stderr, time.Since(t0).Round(time.Millisecond), e.Kind, e.Err)
		}
	})}
	store, err := aside.NewStore(rdb, append(sopts, aside.WithPrefix(prefix+"live"))...)
	must(err)
	products, err := aside.New[product](store, "product", append(opts, aside.WithProfile(aside.Master))...)
	must(err)
	return service{name: name, close: func() { _ = store.Close(); _ = rdb.Close() },
		read: func(ctx context.Context, id int) (product, error) {
			return products.Get(ctx, aside.Key(strconv.Itoa(id)), func(ctx context.Context) (product, error) { return db.read(ctx, id) })
		},
		write: func(ctx context.Context, id int) (int64, error) {
			var v int64
			err := store.Write(ctx, func(ctx context.Context) (err error) {
				v, err = db.write(ctx, id)
				return err
			}, products.Changed(aside.Key(strconv.Itoa(id))))
			if errors.Is(err, aside.ErrQueued) {
				err = nil // committed; the invalidation is replayed (the README's handler)
			}
			return v, err
		}}
}

// handler serves GET /p/{id} and PUT /p/{id}: the product, or the version a
// write committed.
func (s service) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /p/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.Atoi(r.PathValue("id"))
		p, err := s.read(r.Context(), id)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = fmt.Fprintf(w, "%d", p.Version)
	})
	mux.HandleFunc("PUT /p/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.Atoi(r.PathValue("id"))
		v, err := s.write(r.Context(), id)
		if err != nil {
			// The version is there when the transaction committed: a
			// committed write answered as a failure.
			http.Error(w, strconv.FormatInt(v, 10)+" "+err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = fmt.Fprintf(w, "%d", v)
	})
	return mux
}

func pathID(url string) int {
	id, _ := strconv.Atoi(filepath.Base(url))
	return id
}
