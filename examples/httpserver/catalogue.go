package main

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/asidecache/aside"
)

// Product is a row of the catalogue.
type Product struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Price    int    `json:"price"`
	Category string `json:"category"`
}

// catalogue is the source of truth the caches stand in front of:
// PostgreSQL (postgres.go), or an in-memory table where none is reachable.
type catalogue interface {
	// Product returns one row, or aside.ErrNotFound.
	Product(ctx context.Context, id string) (Product, error)
	// Products returns the rows of ids that exist, by id.
	Products(ctx context.Context, ids []string) (map[string]Product, error)
	// InCategory returns a category's rows, by id.
	InCategory(ctx context.Context, cat string) ([]Product, error)
	// Save writes p in one transaction and returns the category it had
	// before ("" for a new row).
	Save(ctx context.Context, p Product) (old string, err error)
	// Name says which it is, for the log.
	Name() string
}

func seedRows() []Product {
	return []Product{
		{ID: "1", Name: "Laptop", Price: 999, Category: "laptops"},
		{ID: "2", Name: "Ultrabook", Price: 1499, Category: "laptops"},
		{ID: "3", Name: "Phone", Price: 599, Category: "phones"},
	}
}

// memory is the fallback: a table in process, each query taking 30 ms as a
// database round trip would.
type memory struct {
	mu   sync.Mutex
	rows map[string]Product
}

func newMemory() *memory {
	m := &memory{rows: map[string]Product{}}
	for _, p := range seedRows() {
		m.rows[p.ID] = p
	}
	return m
}

func (m *memory) Name() string { return "in-memory table (no PostgreSQL reachable)" }

func (m *memory) slow(ctx context.Context) error {
	select {
	case <-time.After(30 * time.Millisecond):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *memory) Product(ctx context.Context, id string) (Product, error) {
	if err := m.slow(ctx); err != nil {
		return Product{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.rows[id]
	if !ok {
		return Product{}, aside.ErrNotFound
	}
	return p, nil
}

func (m *memory) Products(ctx context.Context, ids []string) (map[string]Product, error) {
	if err := m.slow(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]Product{}
	for _, id := range ids {
		if p, ok := m.rows[id]; ok {
			out[id] = p
		}
	}
	return out, nil
}

func (m *memory) InCategory(ctx context.Context, cat string) ([]Product, error) {
	if err := m.slow(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Product
	for _, p := range m.rows {
		if p.Category == cat {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b Product) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func (m *memory) Save(ctx context.Context, p Product) (string, error) {
	if err := m.slow(ctx); err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.rows[p.ID].Category
	m.rows[p.ID] = p
	return old, nil
}
