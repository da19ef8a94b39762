package asideotel_test

import (
	"context"
	"testing"

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
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(ctx)
	reg, err := asideotel.Register(provider.Meter("test"), products)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
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
