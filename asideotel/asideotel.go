// Package asideotel exports the statistics of aside caches as OpenTelemetry
// metrics, and traces their operations as OpenTelemetry spans. It lives in
// a module of its own, so that the aside core does not depend on
// OpenTelemetry.
//
//	store, err := aside.NewStore(rdb, aside.WithTracer(asideotel.NewTracer(otel.GetTracerProvider())))
//	...
//	reg, err := asideotel.Register(otel.Meter("shop"), products, categories)
//	defer reg.Unregister()
package asideotel

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/asidecache/aside"
)

// Source is what the instruments read: every *aside.Cache[T] is one.
type Source interface {
	Stats() aside.Stats
}

// Register creates observable instruments on meter and one callback that
// reads a Stats snapshot per cache at each collection (atomic loads: it
// never blocks requests). Attributes: cache, profile, and result, kind or
// event where the metric splits.
func Register(meter metric.Meter, sources ...Source) (metric.Registration, error) {
	var errs []error
	counter := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	fcounter := func(name, unit, desc string) metric.Float64ObservableCounter {
		c, err := meter.Float64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	gauge := func(name, unit, desc string) metric.Float64ObservableGauge {
		g, err := meter.Float64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	reads := counter("aside.reads", "{read}", "Reads by outcome: l1_hit, hit, stale, negative, waited (answered by another caller's load), miss, tag_miss.")
	loads := counter("aside.loads", "{call}", "Loader calls that returned a value (or ErrNotFound).")
	loadErrors := counter("aside.load.errors", "{call}", "Loader calls that failed, panicked or timed out.")
	loadTime := fcounter("aside.load.time", "s", "Time spent in loader calls.")
	latency := gauge("aside.load.latency", "s", "Recent mean duration of one load (EWMA).")
	saved := gauge("aside.time_saved", "s", "Estimate of loader time saved: answered reads × recent mean load latency.")
	redisErrors := counter("aside.redis.errors", "{call}", "Redis calls that failed; their requests were served by the loader.")
	timeouts := counter("aside.redis.timeouts", "{call}", "Redis calls cut by the op timeout.")
	problems := counter("aside.problems", "{entry}", "Entries or values that could not be used: decode, encode, oversize.")
	degraded := counter("aside.degraded_reads", "{read}", "Reads that skipped Redis because the circuit breaker was open.")
	written := counter("aside.bytes_written", "By", "Envelope bytes written to Redis.")
	leases := counter("aside.lease.events", "{event}", "Lease outcomes: wait, shared_script, wait_timeout, fill_refused, refresh.")
	breaker := gauge("aside.breaker.state", "1", "The Store's circuit breaker: 0 closed, 1 open, 2 half-open.")
	l1Serving := gauge("aside.l1.serving", "1", "1 while the Store's L1 may answer: stream trusted and, if strict, lease held.")
	streamResets := counter("aside.l1.stream_resets", "{reset}", "Times the Store doubted its invalidation stream and dropped L1.")
	invWaits := counter("aside.invalidation.waits", "{invalidation}", "Invalidations that waited for other Stores' L1 to acknowledge.")
	acksAwaited := counter("aside.invalidation.acks_awaited", "{ack}", "Acknowledgements those invalidations waited for.")
	silent := counter("aside.invalidation.silent_stores", "{store}", "Awaited Stores that did not acknowledge: the invalidation waited for their lease to end.")
	waitTime := fcounter("aside.invalidation.wait_time", "s", "Time invalidations spent waiting for acknowledgements.")
	checks := counter("aside.checks", "{check}", "Consistency checks (aside.WithCheck) by check (hit, invalidation), window and result (consistent, inconsistent).")
	checkLoads := counter("aside.check.loads", "{call}", "Loader calls the consistency checker made.")
	checkSkipped := counter("aside.check.skipped", "{sample}", "Consistency-check samples dropped: over the budget, the queue full, or the source unreadable.")
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, src := range sources {
			s := src.Stats()
			base := []attribute.KeyValue{attribute.String("cache", s.Cache), attribute.String("profile", s.Profile)}
			with := func(k, v string) metric.MeasurementOption {
				return metric.WithAttributes(append(append([]attribute.KeyValue{}, base...), attribute.String(k, v))...)
			}
			attrs := metric.WithAttributes(base...)
			for result, n := range map[string]uint64{"l1_hit": s.L1Hits, "hit": s.Hits, "stale": s.StaleServed,
				"negative": s.NegativeHits, "waited": s.Waited, "miss": s.Misses, "tag_miss": s.TagMisses} {
				o.ObserveInt64(reads, int64(n), with("result", result))
			}
			o.ObserveInt64(loads, int64(s.Loads), attrs)
			o.ObserveInt64(loadErrors, int64(s.LoadErrors), attrs)
			o.ObserveFloat64(loadTime, s.LoadTime.Seconds(), attrs)
			o.ObserveFloat64(latency, s.LoadLatency.Seconds(), attrs)
			o.ObserveFloat64(saved, s.TimeSaved.Seconds(), attrs)
			o.ObserveInt64(redisErrors, int64(s.RedisErrors), attrs)
			o.ObserveInt64(timeouts, int64(s.RedisTimeouts), attrs)
			o.ObserveInt64(problems, int64(s.DecodeErrors), with("kind", "decode"))
			o.ObserveInt64(problems, int64(s.EncodeErrors), with("kind", "encode"))
			o.ObserveInt64(problems, int64(s.OversizeSkips), with("kind", "oversize"))
			o.ObserveInt64(degraded, int64(s.Degraded), attrs)
			o.ObserveInt64(written, int64(s.BytesWritten), attrs)
			o.ObserveInt64(leases, int64(s.LeaseWaits), with("event", "wait"))
			o.ObserveInt64(leases, int64(s.SharedScripts), with("event", "shared_script"))
			o.ObserveInt64(leases, int64(s.WaitTimeouts), with("event", "wait_timeout"))
			o.ObserveInt64(leases, int64(s.FillsRefused), with("event", "fill_refused"))
			o.ObserveInt64(leases, int64(s.Refreshes), with("event", "refresh"))
			o.ObserveFloat64(breaker, float64(s.Breaker), attrs)
			co := s.Coherence
			serving := 0.0
			if co.L1Serving {
				serving = 1
			}
			o.ObserveFloat64(l1Serving, serving, attrs)
			o.ObserveInt64(streamResets, int64(co.StreamResets), attrs)
			o.ObserveInt64(invWaits, int64(co.InvalidationWaits), attrs)
			o.ObserveInt64(acksAwaited, int64(co.AcksAwaited), attrs)
			o.ObserveInt64(silent, int64(co.SilentStores), attrs)
			o.ObserveFloat64(waitTime, co.WaitTime.Seconds(), attrs)
			if ck := s.Check; ck.Hits.Window != 0 { // the checker is on
				window := func(check string, w aside.CheckWindow) {
					for result, n := range map[string]uint64{"consistent": w.Checked - w.Inconsistent, "inconsistent": w.Inconsistent} {
						o.ObserveInt64(checks, int64(n), metric.WithAttributes(append(append([]attribute.KeyValue{}, base...),
							attribute.String("check", check), attribute.String("window", w.Window.String()), attribute.String("result", result))...))
					}
				}
				window("hit", ck.Hits)
				for _, w := range ck.Invalidations {
					window("invalidation", w)
				}
				o.ObserveInt64(checkLoads, int64(ck.Loads), attrs)
				o.ObserveInt64(checkSkipped, int64(ck.Skipped), attrs)
			}
		}
		return nil
	}, reads, loads, loadErrors, loadTime, latency, saved, redisErrors, timeouts, problems, degraded, written, leases, breaker,
		l1Serving, streamResets, invWaits, acksAwaited, silent, waitTime, checks, checkLoads, checkSkipped)
}
