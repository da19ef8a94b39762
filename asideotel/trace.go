package asideotel

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/asidecache/aside"
)

// instrumentation names the tracer, as OpenTelemetry asks of libraries.
const instrumentation = "github.com/asidecache/aside/asideotel"

// NewTracer returns an aside.Tracer that starts OpenTelemetry spans from tp,
// for [aside.WithTracer]:
//
//	store, err := aside.NewStore(rdb, aside.WithTracer(asideotel.NewTracer(otel.GetTracerProvider())))
//
// Each span is named "aside.<op>" (aside.get, aside.get_many, aside.peek,
// aside.set, aside.invalidate, aside.invalidate_tags, ...) and carries
// aside.cache and how the keys were answered: aside.outcome for one key
// (l1_hit, hit, stale, negative, miss, waited, loaded, degraded), and
// aside.keys plus aside.outcome.<outcome> counts for a batch. Keys are
// never recorded: they may hold user data. The loader runs under the span,
// so its own spans — the database query — show as the cause of a miss. A
// not-found or a Peek's miss is an answer, not an error: only other errors
// set the span's status.
func NewTracer(tp trace.TracerProvider) aside.Tracer {
	return tracer{tp.Tracer(instrumentation)}
}

type tracer struct{ t trace.Tracer }

func (t tracer) Start(ctx context.Context, op, cache string) (context.Context, aside.Span) {
	attrs := []attribute.KeyValue{attribute.String("aside.op", op)}
	if cache != "" {
		attrs = append(attrs, attribute.String("aside.cache", cache))
	}
	ctx, s := t.t.Start(ctx, "aside."+op, trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attrs...))
	return ctx, span{s}
}

type span struct{ s trace.Span }

func (s span) End(outcomes aside.Outcomes, err error) {
	if o, single := outcomes.Only(); single {
		s.s.SetAttributes(attribute.String("aside.outcome", o.String()))
	} else {
		n := 0
		for o, c := range outcomes {
			if c > 0 {
				n += c
				s.s.SetAttributes(attribute.Int("aside.outcome."+aside.Outcome(o).String(), c))
			}
		}
		if n > 0 {
			s.s.SetAttributes(attribute.Int("aside.keys", n))
		}
	}
	if err != nil && !errors.Is(err, aside.ErrNotFound) && !errors.Is(err, aside.ErrMiss) {
		s.s.RecordError(err)
		s.s.SetStatus(codes.Error, err.Error())
	}
	s.s.End()
}
