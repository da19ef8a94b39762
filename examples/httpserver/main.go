// Command httpserver is a small catalogue service with aside in front of a
// slow database: product pages and category listings are cached and tagged
// by category; writes update the database and then invalidate; /metrics
// shows each cache's statistics.
//
//	go run ./examples/httpserver                 # in-process Redis, on 127.0.0.1:8080
//	curl localhost:8080/products/1
//	curl -X PUT -d '{"name":"Laptop Pro","price":1299,"category":"laptops"}' localhost:8080/products/1
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
	"slices"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/asidecache/aside"
)

// Product is a row of the catalogue.
type Product struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Price    int    `json:"price"`
	Category string `json:"category"`
}

// db stands for the database: every query takes 30 ms.
type db struct {
	mu       sync.Mutex
	products map[string]Product
}

func (d *db) slow(ctx context.Context) error {
	select {
	case <-time.After(30 * time.Millisecond):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *db) product(ctx context.Context, id string) (Product, error) {
	if err := d.slow(ctx); err != nil {
		return Product{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.products[id]
	if !ok {
		return Product{}, aside.ErrNotFound
	}
	return p, nil
}

func (d *db) inCategory(ctx context.Context, cat string) ([]Product, error) {
	if err := d.slow(ctx); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Product
	for _, p := range d.products {
		if p.Category == cat {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b Product) int { return cmpStrings(a.ID, b.ID) })
	return out, nil
}

func cmpStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// save writes p and returns the category it had before.
func (d *db) save(ctx context.Context, p Product) (old string, err error) {
	if err := d.slow(ctx); err != nil {
		return "", err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	old = d.products[p.ID].Category
	d.products[p.ID] = p
	return old, nil
}

// server holds the caches in front of the database.
type server struct {
	db       *db
	store    *aside.Store
	products *aside.Cache[Product]
	listings *aside.Cache[[]Product]
}

func newServer(store *aside.Store, d *db) (*server, error) {
	products, err := aside.New[Product](store, "product", aside.WithProfile(aside.Master))
	if err != nil {
		return nil, err
	}
	listings, err := aside.New[[]Product](store, "listing", aside.WithProfile(aside.Analytical))
	if err != nil {
		return nil, err
	}
	return &server{db: d, store: store, products: products, listings: listings}, nil
}

func categoryTag(cat string) string { return "category:" + cat }

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /products/{id}", s.getProduct)
	mux.HandleFunc("PUT /products/{id}", s.putProduct)
	mux.HandleFunc("GET /categories/{cat}/products", s.getCategory)
	mux.HandleFunc("GET /metrics", s.metrics)
	return mux
}

func (s *server) getProduct(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	// The product's category is only known after the load, so the entry is
	// tagged by id; category changes invalidate the key directly on write.
	p, err := s.products.Get(r.Context(), aside.Key(id), func(ctx context.Context) (Product, error) {
		return s.db.product(ctx, id)
	})
	reply(w, p, err)
}

func (s *server) getCategory(w http.ResponseWriter, r *http.Request) {
	cat := r.PathValue("cat")
	ps, err := s.listings.Get(r.Context(), aside.Key(cat), func(ctx context.Context) ([]Product, error) {
		return s.db.inCategory(ctx, cat)
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
	ctx := r.Context()
	// The write first, then the invalidations: the product page, and the
	// listings of its old and new category. Which old category is known only
	// from the write, so this handler invalidates by hand rather than with
	// Store.Write, whose changes are fixed before the write runs — and, like
	// Store.Write, it invalidates even when the write reports an error.
	old, err := s.db.save(ctx, p)
	err = errors.Join(err,
		s.products.Invalidate(ctx, aside.Key(p.ID)),
		s.store.InvalidateTags(ctx, categoryTag(p.Category), categoryTag(old)))
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

func seed() *db {
	return &db{products: map[string]Product{
		"1": {ID: "1", Name: "Laptop", Price: 999, Category: "laptops"},
		"2": {ID: "2", Name: "Ultrabook", Price: 1499, Category: "laptops"},
		"3": {ID: "3", Name: "Phone", Price: 599, Category: "phones"},
	}}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	flag.Parse()
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
	store, err := aside.NewStore(rdb, aside.WithPrefix("catalogue"))
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	s, err := newServer(store, seed())
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("catalogue on http://%s (Redis %s)", *addr, redisAddr)
	srv := &http.Server{Addr: *addr, Handler: s.routes(), ReadHeaderTimeout: 5 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
