package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asideotel"
	"github.com/asidecache/aside/asidetest"
)

// TestCatalogueOverHTTP drives the service over HTTP on each catalogue: the
// in-memory table, and PostgreSQL (a table of its own, dropped after) —
// required under CI, skipped elsewhere when no server answers.
func TestCatalogueOverHTTP(t *testing.T) {
	t.Run("memory", func(t *testing.T) { driveCatalogue(t, newMemory()) })
	t.Run("postgres", func(t *testing.T) {
		url := os.Getenv("DATABASE_URL")
		if url == "" {
			url = defaultDatabase
		}
		ctx := context.Background()
		pg, err := openPostgres(ctx, url, fmt.Sprintf("catalogue_test_%d_%d", os.Getpid(), time.Now().UnixNano()))
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("no PostgreSQL at %s under CI: %v", url, err)
			}
			t.Skipf("no PostgreSQL at %s: %v", url, err)
		}
		defer pg.Close()
		defer func() { _ = pg.drop(ctx) }()
		driveCatalogue(t, pg)
	})
}

func driveCatalogue(t *testing.T, db catalogue) {
	store, _ := asidetest.New(t)
	s, err := newServer(store, db, noop.NewTracerProvider())
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	ts := httptest.NewServer(s.routes())
	defer ts.Close()
	do := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := do("GET", "/products/1", ""); code != 200 || !strings.Contains(body, `"Laptop"`) {
		t.Fatalf("GET /products/1 = %d %s", code, body)
	}
	if err := store.Wait(context.Background()); err != nil { // the miss's fill lands just after its reply
		t.Fatal(err)
	}
	do("GET", "/products/1", "") // a hit
	if code, _ := do("GET", "/products/404", ""); code != 404 {
		t.Errorf("unknown product: %d, want 404", code)
	}
	if code, body := do("GET", "/products?ids=1,2,404", ""); code != 200 || !strings.Contains(body, `"2":{"id":"2"`) || strings.Contains(body, "404") {
		t.Errorf("GET /products?ids=1,2,404 = %d %s, want products 1 and 2 by id", code, body)
	}
	if _, body := do("GET", "/categories/laptops/products", ""); !strings.Contains(body, "Ultrabook") {
		t.Fatalf("listing = %s", body)
	}
	// Write, then read your write: the product page, the batch and both listings.
	if code, body := do("PUT", "/products/1", `{"name":"Laptop Pro","price":1299,"category":"phones"}`); code != 200 {
		t.Fatalf("PUT = %d %s", code, body)
	}
	if _, body := do("GET", "/products/1", ""); !strings.Contains(body, "Laptop Pro") {
		t.Errorf("read after write = %s, want the new name", body)
	}
	if _, body := do("GET", "/products?ids=1,2", ""); !strings.Contains(body, "Laptop Pro") {
		t.Errorf("batch read after write = %s, want the new name", body)
	}
	if _, body := do("GET", "/categories/laptops/products", ""); strings.Contains(body, `"id":"1"`) {
		t.Errorf("old category listing still shows product 1: %s", body)
	}
	if _, body := do("GET", "/categories/phones/products", ""); !strings.Contains(body, "Laptop Pro") {
		t.Errorf("new category listing = %s", body)
	}
	_, body := do("GET", "/metrics", "")
	var stats []struct {
		Cache string
		Hits  uint64
	}
	if err := json.Unmarshal([]byte(body), &stats); err != nil || len(stats) != 2 || stats[0].Cache != "product" || stats[0].Hits == 0 {
		t.Errorf("/metrics = %s, want the product cache with hits", body)
	}
}

// TestTraceShowsTheQueryUnderTheMiss: with -trace, a miss prints as an
// aside.get span holding the database query that answered it; a hit has
// no query under it.
func TestTraceShowsTheQueryUnderTheMiss(t *testing.T) {
	var out bytes.Buffer
	tp := newLineTracing(&out)
	store, _ := asidetest.New(t, aside.WithTracer(asideotel.NewTracer(tp)))
	s, err := newServer(store, newMemory(), tp)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.routes())
	defer ts.Close()
	for range 2 {
		resp, err := http.Get(ts.URL + "/products/1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if err := store.Wait(context.Background()); err != nil { // the miss's fill lands just after its reply
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 ||
		!strings.HasPrefix(lines[0], "aside.get ") || !strings.Contains(lines[0], "aside.outcome=loaded") ||
		!strings.HasPrefix(lines[1], "  db.product ") ||
		!strings.HasPrefix(lines[2], "aside.get ") || !strings.Contains(lines[2], "aside.outcome=hit") {
		t.Errorf("trace =\n%s\nwant a loaded get over its db.product query, then a hit", out.String())
	}
	t.Logf("trace:\n%s", out.String())
}
