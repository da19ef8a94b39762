package asideprom_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asideprom"
	"github.com/asidecache/aside/asidetest"
)

func TestCollectorScrapesRealValues(t *testing.T) {
	store, _ := asidetest.New(t)
	products, err := aside.New[string](store, "product", aside.WithProfile(aside.Master))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	load := func(context.Context) (string, error) { return "laptop", nil }
	for range 3 {
		if _, err := products.Get(ctx, "42", load); err != nil {
			t.Fatal(err)
		}
		// A load's fill lands just after its Get returns: the next read,
		// made at once, would wait on it and count a miss.
		if err := store.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(asideprom.NewCollector(products))
	want := `
# HELP aside_reads_total Reads by outcome: l1_hit, hit, stale, negative, waited (answered by another caller's load), miss, tag_miss.
# TYPE aside_reads_total counter
aside_reads_total{cache="product",profile="master",result="hit"} 2
aside_reads_total{cache="product",profile="master",result="l1_hit"} 0
aside_reads_total{cache="product",profile="master",result="miss"} 1
aside_reads_total{cache="product",profile="master",result="negative"} 0
aside_reads_total{cache="product",profile="master",result="stale"} 0
aside_reads_total{cache="product",profile="master",result="tag_miss"} 0
aside_reads_total{cache="product",profile="master",result="waited"} 0
# HELP aside_loads_total Loader calls that returned a value (or ErrNotFound).
# TYPE aside_loads_total counter
aside_loads_total{cache="product",profile="master"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "aside_reads_total", "aside_loads_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n < 20 {
		t.Errorf("gathered %d series, %v", n, err)
	}
}

func TestCollectorScrapesL1Coherence(t *testing.T) {
	store, _ := asidetest.New(t)
	products, err := aside.New[string](store, "product", aside.WithL1(100, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !store.Coherence().L1Serving; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the L1 never started serving")
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(asideprom.NewCollector(products))
	want := `
# HELP aside_l1_serving 1 while the Store's L1 may answer: stream trusted and, if strict, lease held.
# TYPE aside_l1_serving gauge
aside_l1_serving{cache="product",profile="default"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "aside_l1_serving"); err != nil {
		t.Error(err)
	}
}
