package asideprom_test

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asideprom"
	"github.com/asidecache/aside/asidetest"
)

var (
	metricRe   = regexp.MustCompile(`\baside_[a-z0-9_]+`)
	selectorRe = regexp.MustCompile(`\b(aside_[a-z0-9_]+)\{([^}]*)\}`)
	matcherRe  = regexp.MustCompile(`([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	groupRe    = regexp.MustCompile(`\bby \(([^)]*)\)`)
)

// TestDashboardQueriesWhatTheExporterProduces: every metric the Grafana
// dashboard queries is one the collector exports, with the labels it
// selects and groups by, and every label value it matches is one the
// collector emits — a renamed metric or label fails here, not on a
// dashboard that silently shows nothing.
func TestDashboardQueriesWhatTheExporterProduces(t *testing.T) {
	store, _ := asidetest.New(t)
	load := func(ctx context.Context, key string) (string, error) { return "v-" + key, nil }
	c, err := aside.New[string](store, "product", aside.WithL1(10, time.Minute),
		aside.WithCheck(aside.Check[string]{Load: load, Hits: 1, Invalidations: 1}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		if _, err := c.Get(ctx, "1", func(ctx context.Context) (string, error) { return load(ctx, "1") }); err != nil {
			t.Fatal(err)
		}
		if err := store.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(asideprom.NewCollector(c))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]map[string]map[string]bool{} // metric → label → values
	for _, f := range families {
		ls := map[string]map[string]bool{}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if ls[l.GetName()] == nil {
					ls[l.GetName()] = map[string]bool{}
				}
				ls[l.GetName()][l.GetValue()] = true
			}
		}
		labels[f.GetName()] = ls
	}

	raw, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct{ Definition string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			exprs = append(exprs, v.Definition)
		}
	}
	queried := map[string]bool{}
	for _, e := range exprs {
		names := metricRe.FindAllString(e, -1)
		if len(names) == 0 {
			t.Errorf("%q queries no aside metric", e)
		}
		for _, n := range names {
			queried[n] = true
			if labels[n] == nil {
				t.Errorf("%q queries %s, which the collector does not export", e, n)
			}
		}
		for _, sel := range selectorRe.FindAllStringSubmatch(e, -1) {
			for _, m := range matcherRe.FindAllStringSubmatch(sel[2], -1) {
				name, op, value := m[1], m[2], m[3]
				values, ok := labels[sel[1]][name]
				if !ok {
					t.Errorf("%q selects label %s of %s, which has none", e, name, sel[1])
					continue
				}
				if strings.HasPrefix(value, "$") || op == "!=" || op == "!~" {
					continue // a dashboard variable, or a negative matcher
				}
				for _, v := range strings.Split(value, "|") {
					if !values[v] {
						t.Errorf("%q matches %s=%q of %s, a value the collector never emits", e, name, v, sel[1])
					}
				}
			}
		}
		for _, g := range groupRe.FindAllStringSubmatch(e, -1) {
			for _, l := range strings.Split(g[1], ",") {
				l = strings.TrimSpace(l)
				found := false
				for _, n := range names {
					if _, ok := labels[n][l]; ok {
						found = true
					}
				}
				if !found {
					t.Errorf("%q groups by %s, a label none of its metrics has", e, l)
				}
			}
		}
	}
	for _, want := range []string{"aside_reads_total", "aside_loads_total", "aside_load_seconds_total", "aside_time_saved_seconds",
		"aside_breaker_state", "aside_invalidation_wait_seconds_total", "aside_checks_total"} {
		if !queried[want] {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
}
