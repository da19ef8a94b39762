// Package asideprom exports the statistics of aside caches to Prometheus.
// It lives in a module of its own, so that the aside core does not depend
// on the Prometheus client.
//
//	prometheus.MustRegister(asideprom.NewCollector(products, categories))
package asideprom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/asidecache/aside"
)

// Source is what the collector reads: every *aside.Cache[T] is one.
type Source interface {
	Stats() aside.Stats
}

// Collector is a prometheus.Collector of aside caches. Each scrape takes one
// Stats snapshot per cache (atomic loads: it never blocks requests).
type Collector struct {
	sources []Source
}

// NewCollector returns a collector of the given caches. Metrics carry the
// labels cache and profile.
func NewCollector(sources ...Source) *Collector { return &Collector{sources: sources} }

var labels = []string{"cache", "profile"}

func desc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc("aside_"+name, help, append(append([]string{}, labels...), extra...), nil)
}

var (
	readsDesc      = desc("reads_total", "Reads by outcome: l1_hit, hit, stale, negative, waited (answered by another caller's load), miss, tag_miss.", "result")
	loadsDesc      = desc("loads_total", "Loader calls that returned a value (or ErrNotFound).")
	loadErrDesc    = desc("load_errors_total", "Loader calls that failed, panicked or timed out.")
	loadSecDesc    = desc("load_seconds_total", "Time spent in loader calls.")
	latencyDesc    = desc("load_latency_seconds", "Recent mean duration of one load (EWMA).")
	savedDesc      = desc("time_saved_seconds", "Estimate of loader time saved: answered reads × recent mean load latency.")
	redisErrDesc   = desc("redis_errors_total", "Redis calls that failed; their requests were served by the loader.")
	timeoutDesc    = desc("redis_timeouts_total", "Redis calls cut by the op timeout.")
	problemsDesc   = desc("problems_total", "Entries or values that could not be used: decode, encode, oversize.", "kind")
	degradedDesc   = desc("degraded_reads_total", "Reads that skipped Redis because the circuit breaker was open.")
	bytesDesc      = desc("bytes_written_total", "Envelope bytes written to Redis.")
	leaseDesc      = desc("lease_events_total", "Lease outcomes: wait, shared_script, wait_timeout, fill_refused, refresh.", "event")
	breakerDesc    = desc("breaker_state", "The Store's circuit breaker: 0 closed, 1 open, 2 half-open.")
	l1ServingDesc  = desc("l1_serving", "1 while the Store's L1 may answer: stream trusted and, if strict, lease held.")
	resetsDesc     = desc("l1_stream_resets_total", "Times the Store doubted its invalidation stream and dropped L1.")
	invWaitsDesc   = desc("invalidation_waits_total", "Invalidations that waited for other Stores' L1 to acknowledge.")
	acksDesc       = desc("invalidation_acks_awaited_total", "Acknowledgements those invalidations waited for.")
	silentDesc     = desc("invalidation_silent_stores_total", "Awaited Stores that did not acknowledge: the invalidation waited for their lease to end.")
	waitSecDesc    = desc("invalidation_wait_seconds_total", "Time invalidations spent waiting for acknowledgements.")
	checksDesc     = desc("checks_total", "Consistency checks (aside.WithCheck) by check (hit, invalidation), window (how long after the sample the entry was looked at) and result (consistent, inconsistent).", "check", "window", "result")
	checkLoadsDesc = desc("check_loads_total", "Loader calls the consistency checker made.")
	checkSkipDesc  = desc("check_skipped_total", "Consistency-check samples dropped: over the budget, the queue full, or the source unreadable.")
	allDescriptors = []*prometheus.Desc{readsDesc, loadsDesc, loadErrDesc, loadSecDesc, latencyDesc, savedDesc,
		redisErrDesc, timeoutDesc, problemsDesc, degradedDesc, bytesDesc, leaseDesc, breakerDesc,
		l1ServingDesc, resetsDesc, invWaitsDesc, acksDesc, silentDesc, waitSecDesc, checksDesc, checkLoadsDesc, checkSkipDesc}
)

// Describe sends the descriptors of every metric.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescriptors {
		ch <- d
	}
}

// Collect sends the current values.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, src := range c.sources {
		s := src.Stats()
		l := []string{s.Cache, s.Profile}
		counter := func(d *prometheus.Desc, v float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, append(l, extra...)...)
		}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
		}
		counter(readsDesc, float64(s.L1Hits), "l1_hit")
		counter(readsDesc, float64(s.Hits), "hit")
		counter(readsDesc, float64(s.StaleServed), "stale")
		counter(readsDesc, float64(s.NegativeHits), "negative")
		counter(readsDesc, float64(s.Misses), "miss")
		counter(readsDesc, float64(s.TagMisses), "tag_miss")
		counter(readsDesc, float64(s.Waited), "waited")
		counter(loadsDesc, float64(s.Loads))
		counter(loadErrDesc, float64(s.LoadErrors))
		counter(loadSecDesc, s.LoadTime.Seconds())
		gauge(latencyDesc, s.LoadLatency.Seconds())
		gauge(savedDesc, s.TimeSaved.Seconds())
		counter(redisErrDesc, float64(s.RedisErrors))
		counter(timeoutDesc, float64(s.RedisTimeouts))
		counter(problemsDesc, float64(s.DecodeErrors), "decode")
		counter(problemsDesc, float64(s.EncodeErrors), "encode")
		counter(problemsDesc, float64(s.OversizeSkips), "oversize")
		counter(degradedDesc, float64(s.Degraded))
		counter(bytesDesc, float64(s.BytesWritten))
		counter(leaseDesc, float64(s.LeaseWaits), "wait")
		counter(leaseDesc, float64(s.SharedScripts), "shared_script")
		counter(leaseDesc, float64(s.WaitTimeouts), "wait_timeout")
		counter(leaseDesc, float64(s.FillsRefused), "fill_refused")
		counter(leaseDesc, float64(s.Refreshes), "refresh")
		gauge(breakerDesc, float64(s.Breaker))
		co := s.Coherence
		serving := 0.0
		if co.L1Serving {
			serving = 1
		}
		gauge(l1ServingDesc, serving)
		counter(resetsDesc, float64(co.StreamResets))
		counter(invWaitsDesc, float64(co.InvalidationWaits))
		counter(acksDesc, float64(co.AcksAwaited))
		counter(silentDesc, float64(co.SilentStores))
		counter(waitSecDesc, co.WaitTime.Seconds())
		if ck := s.Check; ck.Hits.Window != 0 { // the checker is on
			windows := func(check string, w aside.CheckWindow) {
				counter(checksDesc, float64(w.Checked-w.Inconsistent), check, w.Window.String(), "consistent")
				counter(checksDesc, float64(w.Inconsistent), check, w.Window.String(), "inconsistent")
			}
			windows("hit", ck.Hits)
			for _, w := range ck.Invalidations {
				windows("invalidation", w)
			}
			counter(checkLoadsDesc, float64(ck.Loads))
			counter(checkSkipDesc, float64(ck.Skipped))
		}
	}
}
