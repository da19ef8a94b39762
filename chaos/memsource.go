package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/asidecache/aside"
)

// memTable is the run's table in the orchestrator's memory (-db memory),
// for machines without PostgreSQL: the workers reach it over loopback HTTP.
// Each request is atomic, as each PostgreSQL statement is.
type memTable struct {
	mu   sync.Mutex
	rows map[int]int64
	srv  *http.Server
}

// serveMemTable starts a table of keys rows at version 1 and returns it
// with its address (http://127.0.0.1:port).
func serveMemTable(keys int) (*memTable, string, error) {
	t := &memTable{rows: make(map[int]int64, keys)}
	for id := range keys {
		t.rows[id] = 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /rows", func(w http.ResponseWriter, r *http.Request) {
		out := map[int]int64{}
		t.mu.Lock()
		if ids := r.URL.Query().Get("ids"); ids != "" {
			for _, f := range strings.Split(ids, ",") {
				id, _ := strconv.Atoi(f)
				if v, ok := t.rows[id]; ok {
					out[id] = v
				}
			}
		} else {
			for id, v := range t.rows {
				out[id] = v
			}
		}
		t.mu.Unlock()
		_ = json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("POST /bump", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(r.URL.Query().Get("id"))
		t.mu.Lock()
		v, ok := t.rows[id]
		if ok && err == nil {
			v++
			t.rows[id] = v
		}
		t.mu.Unlock()
		if !ok || err != nil {
			http.Error(w, "no such row", http.StatusNotFound)
			return
		}
		_ = json.NewEncoder(w).Encode(v)
	})
	t.srv = &http.Server{Handler: mux}
	go func() { _ = t.srv.Serve(ln) }()
	return t, "http://" + ln.Addr().String(), nil
}

func (t *memTable) close() { _ = t.srv.Close() }

// memSource is a worker's client of a memTable.
type memSource struct {
	base   string
	client *http.Client
}

func (m *memSource) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, m.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("memory table: %s %s: %s", method, path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (m *memSource) load(ctx context.Context, id int) (row, error) {
	rs, err := m.loadMany(ctx, []int{id})
	if err != nil {
		return row{}, err
	}
	r, ok := rs[id]
	if !ok {
		return row{}, aside.ErrNotFound
	}
	return r, nil
}

func (m *memSource) loadMany(ctx context.Context, ids []int) (map[int]row, error) {
	fs := make([]string, len(ids))
	for i, id := range ids {
		fs[i] = strconv.Itoa(id)
	}
	var vs map[int]int64
	if err := m.do(ctx, http.MethodGet, "/rows?ids="+strings.Join(fs, ","), &vs); err != nil {
		return nil, err
	}
	out := make(map[int]row, len(vs))
	for id, v := range vs {
		out[id] = row{ID: id, Version: v}
	}
	return out, nil
}

func (m *memSource) bump(ctx context.Context, id int) (v int64, err error) {
	return v, m.do(ctx, http.MethodPost, "/bump?id="+strconv.Itoa(id), &v)
}

func (m *memSource) versions(ctx context.Context) (vs map[int]int64, err error) {
	return vs, m.do(ctx, http.MethodGet, "/rows", &vs)
}

func (m *memSource) create(context.Context, int) error { return nil } // served with its rows
func (m *memSource) drop(context.Context) error        { return nil }
func (m *memSource) close()                            { m.client.CloseIdleConnections() }
