package asideotel_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asideotel"
	"github.com/asidecache/aside/asidetest"
)

func TestInstrumentsReadBackRealValues(t *testing.T) {
	store, _ := asidetest.New(t)
	products, err := aside.New[string](store, "product")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		if _, err := products.Get(ctx, "42", func(context.Context) (string, error) { return "laptop", nil }); err != nil {
			t.Fatal(err)
		}
		// A load's fill lands just after its Get returns: the next read,
		// made at once, would wait on it and count a miss.
		if err := store.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	rm := collect(t, products)
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				key := m.Name
				if r, ok := dp.Attributes.Value(attribute.Key("result")); ok {
					key += "/" + r.AsString()
				}
				if c, _ := dp.Attributes.Value(attribute.Key("cache")); c.AsString() != "product" {
					t.Errorf("%s: cache attribute %q", key, c.AsString())
				}
				got[key] = dp.Value
			}
		}
	}
	if got["aside.reads/hit"] != 2 || got["aside.reads/miss"] != 1 || got["aside.loads"] != 1 || got["aside.bytes_written"] == 0 {
		t.Errorf("read back %v; want 2 hits, 1 miss, 1 load, bytes written", got)
	}
}

// TestCheckerMetrics: the consistency checker's counts reach OpenTelemetry,
// by check, window and result.
func TestCheckerMetrics(t *testing.T) {
	store, _ := asidetest.New(t)
	load := func(context.Context, string) (string, error) { return "laptop", nil }
	products, err := aside.New[string](store, "product", aside.WithCheck(aside.Check[string]{Load: load, Hits: 1}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		if _, err := products.Get(ctx, "42", func(ctx context.Context) (string, error) { return load(ctx, "42") }); err != nil {
			t.Fatal(err)
		}
		if err := store.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); products.Stats().Check.Hits.Checked < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the checker checked %+v of 2 hits", products.Stats().Check.Hits)
		}
	}
	rm := collect(t, products)
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && strings.HasPrefix(m.Name, "aside.check") {
				for _, dp := range sum.DataPoints {
					check, _ := dp.Attributes.Value("check")
					window, _ := dp.Attributes.Value("window")
					result, _ := dp.Attributes.Value("result")
					got[m.Name+"/"+check.AsString()+"/"+window.AsString()+"/"+result.AsString()] += dp.Value
				}
			}
		}
	}
	if got["aside.checks/hit/1s/consistent"] != 2 || got["aside.checks/hit/1s/inconsistent"] != 0 ||
		got["aside.checks/invalidation/1m0s/consistent"] != 0 || got["aside.check.loads///"] != 2 {
		t.Errorf("read back %v; want 2 consistent hits checked with 2 loads", got)
	}
}

// collect registers the instruments of sources on a meter of its own and
// reads them once.
func collect(t *testing.T, sources ...asideotel.Source) metricdata.ResourceMetrics {
	t.Helper()
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(ctx)
	reg, err := asideotel.Register(provider.Meter("test"), sources...)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}
