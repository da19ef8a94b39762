package asideotel_test

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asideotel"
	"github.com/asidecache/aside/asidetest"
)

// TestSpansNameTheOutcomeAndNestTheLoader: a miss's span says "loaded" and
// holds the loader's own span as a child; the hit after it says "hit"; a
// batch counts its keys by outcome; an invalidation has a span; not-found
// is not an error, a loader failure is; no attribute holds a key.
func TestSpansNameTheOutcomeAndNestTheLoader(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	store, _ := asidetest.New(t, aside.WithTracer(asideotel.NewTracer(tp)))
	products, err := aside.New[string](store, "product")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	db := tp.Tracer("repo")
	load := func(ctx context.Context) (string, error) {
		_, s := db.Start(ctx, "SELECT product") // the database call, as a repository would trace it
		defer s.End()
		return "laptop", nil
	}
	for range 2 {
		if _, err := products.Get(ctx, "secret-key-42", load); err != nil {
			t.Fatal(err)
		}
		if err := store.Wait(ctx); err != nil { // the fill lands after Get returns: the second Get is then a hit
			t.Fatal(err)
		}
	}
	_, _ = products.Get(ctx, "gone", func(context.Context) (string, error) { return "", aside.ErrNotFound })
	_, _ = products.Get(ctx, "broken", func(context.Context) (string, error) { return "", errors.New("db down") })
	if _, err := products.GetMany(ctx, []string{"secret-key-42", "a", "b"}, func(_ context.Context, keys []string) (map[string]string, error) {
		return map[string]string{"a": "x", "b": "y"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := products.Invalidate(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := store.InvalidateTags(ctx, "category:laptops"); err != nil {
		t.Fatal(err)
	}

	spans := rec.Ended()
	byName := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byName[s.Name()] = append(byName[s.Name()], s)
		for _, a := range s.Attributes() {
			if a.Value.Type() == attribute.STRING && a.Value.AsString() == "secret-key-42" {
				t.Errorf("span %s records a key in %s", s.Name(), a.Key)
			}
		}
	}
	gets := byName["aside.get"]
	if len(gets) != 4 {
		t.Fatalf("%d aside.get spans, want 4 (spans: %v)", len(gets), names(spans))
	}
	wantOutcome := []string{"loaded", "hit", "loaded", "loaded"}
	for i, s := range gets {
		if got := attr(s, "aside.outcome"); got != wantOutcome[i] {
			t.Errorf("get %d: aside.outcome = %q, want %q", i, got, wantOutcome[i])
		}
		if got := attr(s, "aside.cache"); got != "product" {
			t.Errorf("get %d: aside.cache = %q", i, got)
		}
	}
	if gets[2].Status().Code == codes.Error {
		t.Error("a not-found marked its span as an error")
	}
	if gets[3].Status().Code != codes.Error {
		t.Error("a loader failure did not mark its span as an error")
	}
	selects := byName["SELECT product"]
	if len(selects) != 1 || selects[0].Parent().SpanID() != gets[0].SpanContext().SpanID() {
		t.Errorf("the loader's span is not a child of the miss's span: %v", selects)
	}
	many := byName["aside.get_many"]
	if len(many) != 1 || attrInt(many[0], "aside.keys") != 3 || attrInt(many[0], "aside.outcome.hit") != 1 || attrInt(many[0], "aside.outcome.loaded") != 2 {
		t.Errorf("get_many span attributes = %v, want 3 keys: 1 hit, 2 loaded", attrsOf(many))
	}
	if len(byName["aside.invalidate"]) != 1 || len(byName["aside.invalidate_tags"]) != 1 {
		t.Errorf("invalidation spans missing: %v", names(spans))
	}
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, a := range s.Attributes() {
		if string(a.Key) == key {
			return a.Value.String()
		}
	}
	return ""
}

func attrInt(s sdktrace.ReadOnlySpan, key string) int64 {
	for _, a := range s.Attributes() {
		if string(a.Key) == key {
			return a.Value.AsInt64()
		}
	}
	return -1
}

func attrsOf(spans []sdktrace.ReadOnlySpan) [][]attribute.KeyValue {
	var out [][]attribute.KeyValue
	for _, s := range spans {
		out = append(out, s.Attributes())
	}
	return out
}

func names(spans []sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name())
	}
	return out
}
