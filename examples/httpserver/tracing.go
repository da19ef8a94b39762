package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// newLineTracing is an OpenTelemetry SDK whose exporter prints each trace
// as an indented tree, one line per span, when its root ends — a readable
// stand-in for a collector.
func newLineTracing(w io.Writer) *sdktrace.TracerProvider {
	return sdktrace.NewTracerProvider(sdktrace.WithSyncer(&lineExporter{w: w, pending: map[string][]sdktrace.ReadOnlySpan{}}))
}

type lineExporter struct {
	mu      sync.Mutex
	w       io.Writer
	pending map[string][]sdktrace.ReadOnlySpan // by trace id, until the root ends
}

func (e *lineExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range spans {
		id := s.SpanContext().TraceID().String()
		e.pending[id] = append(e.pending[id], s)
		if !s.Parent().IsValid() { // the root ended: its trace is complete
			e.print(e.pending[id], s, 0)
			delete(e.pending, id)
		}
	}
	return nil
}

func (e *lineExporter) print(all []sdktrace.ReadOnlySpan, s sdktrace.ReadOnlySpan, depth int) {
	var attrs []string
	for _, a := range s.Attributes() {
		attrs = append(attrs, string(a.Key)+"="+a.Value.String())
	}
	fmt.Fprintf(e.w, "%s%s %v %s\n", strings.Repeat("  ", depth), s.Name(), s.EndTime().Sub(s.StartTime()).Round(10*time.Microsecond), strings.Join(attrs, " "))
	for _, c := range all {
		if c.Parent().SpanID() == s.SpanContext().SpanID() {
			e.print(all, c, depth+1)
		}
	}
}

func (e *lineExporter) Shutdown(context.Context) error { return nil }
