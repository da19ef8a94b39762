package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/asidecache/aside/asidetest"
)

func TestCatalogueOverHTTP(t *testing.T) {
	store, _ := asidetest.New(t)
	s, err := newServer(store, seed())
	if err != nil {
		t.Fatal(err)
	}
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
	do("GET", "/products/1", "") // a hit
	if code, _ := do("GET", "/products/404", ""); code != 404 {
		t.Errorf("unknown product: %d, want 404", code)
	}
	if _, body := do("GET", "/categories/laptops/products", ""); !strings.Contains(body, "Ultrabook") {
		t.Fatalf("listing = %s", body)
	}
	// Write, then read your write: the product page and both listings.
	if code, body := do("PUT", "/products/1", `{"name":"Laptop Pro","price":1299,"category":"phones"}`); code != 200 {
		t.Fatalf("PUT = %d %s", code, body)
	}
	if _, body := do("GET", "/products/1", ""); !strings.Contains(body, "Laptop Pro") {
		t.Errorf("read after write = %s, want the new name", body)
	}
	if _, body := do("GET", "/categories/laptops/products", ""); strings.Contains(body, "Laptop") && !strings.Contains(body, "Ultrabook") || strings.Contains(body, `"id":"1"`) {
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
