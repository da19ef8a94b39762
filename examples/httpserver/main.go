// Command httpserver is a small catalogue service with aside in front of a
// database: product pages, batches of products and category listings are
// cached (listings tagged by category, products by id); writes update the
// database in a transaction that also records their invalidations (the
// asidepg outbox), applied just after the commit — or by the outbox relay
// this process runs, if the writer died first; /metrics shows each cache's
// statistics; -trace prints each request's spans.
//
// It keeps its catalogue in PostgreSQL when one is reachable — DATABASE_URL
// or -db, by default the local server — and otherwise in an in-memory table,
// saying so at start.
//
//	cd examples/httpserver && go run . -trace   # in-process Redis unless ASIDE_REDIS_ADDR is set
//	curl localhost:8080/products/1
//	curl 'localhost:8080/products?ids=1,2,3'
//	curl -X PUT -d '{"name":"Laptop Pro","price":1299,"category":"phones"}' localhost:8080/products/1
//	curl localhost:8080/categories/laptops/products
//	curl localhost:8080/metrics
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asideotel"
	"github.com/asidecache/aside/asidepg"
)

// server holds the caches in front of the catalogue.
type server struct {
	db       catalogue
	outbox   *asidepg.Outbox // on PostgreSQL; nil on the in-memory table
	store    *aside.Store
	products *aside.Cache[Product]
	listings *aside.Cache[[]Product]
	tracer   trace.Tracer // the repository's own spans
}

func newServer(store *aside.Store, db catalogue, tp trace.TracerProvider) (*server, error) {
	products, err := aside.New[Product](store, "product", aside.WithProfile(aside.Master))
	if err != nil {
		return nil, err
	}
	listings, err := aside.New[[]Product](store, "listing", aside.WithProfile(aside.Analytical))
	if err != nil {
		return nil, err
	}
	s := &server{db: db, store: store, products: products, listings: listings, tracer: tp.Tracer("catalogue")}
	if pg, ok := db.(*postgres); ok {
		if s.outbox, err = asidepg.New(pg.pool, store); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// close waits for the outbox's background work (the deletion of applied
// rows).
func (s *server) close() {
	if s.outbox != nil {
		s.outbox.Close()
	}
}

// relay applies the outbox rows that writers left — one that died after its
// commit, one that could not reach Redis — until ctx ends. Every instance
// of the service may run it.
func (s *server) relay(ctx context.Context) {
	if s.outbox != nil {
		_ = s.outbox.Relay(ctx)
	}
}

func categoryTag(cat string) string { return "category:" + cat }
func productTag(id string) string   { return "product:" + id }

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /products/{id}", s.getProduct)
	mux.HandleFunc("GET /products", s.getProducts)
	mux.HandleFunc("PUT /products/{id}", s.putProduct)
	mux.HandleFunc("GET /categories/{cat}/products", s.getCategory)
	mux.HandleFunc("GET /metrics", s.metrics)
	return mux
}

// query runs one database call in a span of its own: under a miss's span,
// it shows as the cause of the miss.
func query[V any](ctx context.Context, s *server, name string, run func(ctx context.Context) (V, error)) (V, error) {
	ctx, span := s.tracer.Start(ctx, name)
	defer span.End()
	return run(ctx)
}

func (s *server) getProduct(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	p, err := s.products.Get(r.Context(), aside.Key(id), func(ctx context.Context) (Product, error) {
		return query(ctx, s, "db.product", func(ctx context.Context) (Product, error) { return s.db.Product(ctx, id) })
	}, aside.Tags(productTag(id)))
	reply(w, p, err)
}

// getProducts serves ?ids=1,2,3 from one batch: the loader gets the ids of
// the misses, each entry carries its own product tag.
func (s *server) getProducts(w http.ResponseWriter, r *http.Request) {
	ids := strings.Split(r.URL.Query().Get("ids"), ",")
	byID, err := aside.GetBatch(r.Context(), s.products, ids, aside.Batch[string, Product]{
		Key: func(id string) string { return aside.Key(id) },
		Load: func(ctx context.Context, ids []string) (map[string]Product, error) {
			return query(ctx, s, "db.products", func(ctx context.Context) (map[string]Product, error) { return s.db.Products(ctx, ids) })
		},
		Tags: func(id string) []string { return []string{productTag(id)} },
	})
	reply(w, byID, err)
}

func (s *server) getCategory(w http.ResponseWriter, r *http.Request) {
	cat := r.PathValue("cat")
	ps, err := s.listings.Get(r.Context(), aside.Key(cat), func(ctx context.Context) ([]Product, error) {
		return query(ctx, s, "db.in_category", func(ctx context.Context) ([]Product, error) { return s.db.InCategory(ctx, cat) })
	}, aside.Tags(categoryTag(cat)))
	reply(w, ps, err)
}

func (s *server) putProduct(w http.ResponseWriter, r *http.Request) {
	var p Product
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil || p.Name == "" || p.Category == "" {
		http.Error(w, "want a JSON product with name, price and category", http.StatusBadRequest)
		return
	}
	p.ID = r.PathValue("id")
	// The invalidations: the product page and the listings of its new and
	// its old category — the old one known only from the write's result,
	// hence Later.
	var old string
	changes := []aside.Change{s.products.Changed(aside.Key(p.ID)), s.store.TagsChanged(categoryTag(p.Category)),
		aside.Later(func() []aside.Change {
			if old == "" || old == p.Category {
				return nil
			}
			return []aside.Change{s.store.TagsChanged(categoryTag(old))}
		})}
	var err error
	if s.outbox != nil {
		// On PostgreSQL they are recorded in the write's transaction and
		// applied just after its commit: once it commits they take effect,
		// even if this process dies the next instant (the relay applies them).
		err = s.outbox.Write(r.Context(), func(ctx context.Context, tx pgx.Tx) (err error) {
			old, err = query(ctx, s, "db.save", func(ctx context.Context) (string, error) { return s.db.(*postgres).saveIn(ctx, tx, p) })
			return err
		}, changes...)
	} else {
		// The write, then the invalidations; Store.Write runs them even when
		// the write reports an error: it may have committed.
		err = s.store.Write(r.Context(), func(ctx context.Context) (err error) {
			old, err = query(ctx, s, "db.save", func(ctx context.Context) (string, error) { return s.db.Save(ctx, p) })
			return err
		}, changes...)
	}
	if errors.Is(err, aside.ErrQueued) {
		// Committed: Redis could not be reached, and the invalidations wait
		// (in the outbox, or queued in this process) to be applied; other
		// processes may serve the old row until then. Not a failure to
		// report to the client, who would retry.
		err = nil
	}
	reply(w, p, err)
}

func (s *server) metrics(w http.ResponseWriter, _ *http.Request) {
	reply(w, []aside.Stats{s.products.Stats(), s.listings.Stats()}, nil)
}

func reply(w http.ResponseWriter, v any, err error) {
	switch {
	case errors.Is(err, aside.ErrNotFound):
		http.Error(w, "not found", http.StatusNotFound)
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	default:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
}

// defaultDatabase is the machine's local PostgreSQL.
const defaultDatabase = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// openCatalogue returns PostgreSQL when url answers, else the in-memory
// table.
func openCatalogue(ctx context.Context, url string) (catalogue, func()) {
	pg, err := openPostgres(ctx, url, "catalogue_products")
	if err != nil {
		log.Printf("no PostgreSQL at %s (%v): using an in-memory table", url, err)
		return newMemory(), func() {}
	}
	return pg, pg.Close
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	dbURL := flag.String("db", os.Getenv("DATABASE_URL"), "PostgreSQL URL (default: $DATABASE_URL, else the local server)")
	traced := flag.Bool("trace", false, "print each request's spans")
	flag.Parse()
	if *dbURL == "" {
		*dbURL = defaultDatabase
	}
	ctx := context.Background()
	redisAddr := os.Getenv("ASIDE_REDIS_ADDR")
	if redisAddr == "" {
		mini := miniredis.NewMiniRedis()
		if err := mini.Start(); err != nil {
			log.Fatal(err)
		}
		defer mini.Close()
		redisAddr = mini.Addr()
	}
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, ContextTimeoutEnabled: true, DisableIdentity: true})
	defer rdb.Close()
	var tp trace.TracerProvider = noop.NewTracerProvider()
	opts := []aside.StoreOption{aside.WithPrefix("catalogue")}
	if *traced {
		sdk := newLineTracing(os.Stdout)
		defer func() { _ = sdk.Shutdown(ctx) }()
		tp = sdk
		opts = append(opts, aside.WithTracer(asideotel.NewTracer(tp)))
	}
	store, err := aside.NewStore(rdb, opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	db, closeDB := openCatalogue(ctx, *dbURL)
	defer closeDB()
	s, err := newServer(store, db, tp)
	if err != nil {
		log.Fatal(err)
	}
	defer s.close()
	go s.relay(ctx)
	log.Printf("catalogue on http://%s (Redis %s, %s)", *addr, redisAddr, db.Name())
	srv := &http.Server{Addr: *addr, Handler: s.routes(), ReadHeaderTimeout: 5 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
