package proxy

import (
	"compress/gzip"
	"math"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The proxy runs as a sidecar next to every workload, and the pages of its
// binary that it touches count in each pod's resident memory. A Prometheus
// client library (with its protobuf model, procfs parser, regular
// expressions and content negotiation) is much larger than what a handful of
// counters, gauges and one histogram need, so the proxy writes the text
// exposition format (version 0.0.4) itself. The output follows what
// client_golang writes: families sorted by name, each with # HELP and # TYPE,
// series sorted by label values with the labels in name order, and the same
// float formatting. Families without series are left out, as client_golang
// does.

// metrics are what the admin endpoint's /metrics exposes. Label values:
// direction is "inbound" (calls to this workload) or "outbound" (calls the
// app makes through an --upstream); source is the caller's SPIFFE ID
// ("unauthenticated" for a plain-text caller in PERMISSIVE mode);
// destination is the called service, "<namespace>/<name>"; code is the
// HTTP status, or "tcp" for a TCP connection.
type metrics struct {
	// reqs holds the series of both meshfed_proxy_requests_total and
	// meshfed_proxy_request_duration_seconds: they always count the same
	// events with the same labels, so one set of atomic counters serves
	// both (requests_total is the histogram's count).
	reqMu sync.RWMutex
	reqs  map[requestKey]*requestSeries

	denied        *counterVec
	handshakeFail *counterVec
	connections   *counterVec
	healthy       *gaugeVec
	certExpiry    gauge
	upstreamErr   *counterVec
	overflow      *counterVec
	ejections     *counterVec
	rateLimited   *counterVec
	spansExported *counterVec
	spansDropped  *counterVec

	certExpiryVal series

	// families are sorted by name.
	families []family

	startOnce sync.Once
	startTime float64 // process_start_time_seconds; 0 if unknown
}

const (
	requestsName = "meshfed_proxy_requests_total"
	requestsHelp = "Requests (HTTP, gRPC) and connections (TCP) handled, by direction, source, destination and response code."
	durationName = "meshfed_proxy_request_duration_seconds"
	durationHelp = "Time from a request's arrival at the proxy to the end of its response (connection lifetime for TCP)."

	// numDurationBuckets upper bounds from 250 µs, each twice the last: to
	// about 16 s.
	numDurationBuckets = 17
)

var (
	durationBuckets = exponentialBuckets(0.00025, 2, numDurationBuckets)
	// durationLe are the bucket bounds as "le" label values, +Inf last.
	durationLe = func() []string {
		le := make([]string, 0, numDurationBuckets+1)
		for _, b := range durationBuckets {
			le = append(le, string(appendFloat(nil, b)))
		}
		return append(le, "+Inf")
	}()
)

// exponentialBuckets returns count bucket bounds, the first start, each
// factor times the one before (what prometheus.ExponentialBuckets returns).
func exponentialBuckets(start, factor float64, count int) []float64 {
	b := make([]float64, count)
	for i := range b {
		b[i] = start
		start *= factor
	}
	return b
}

func newMetrics() *metrics {
	m := &metrics{reqs: map[requestKey]*requestSeries{}}
	m.denied = newCounterVec("meshfed_proxy_authorization_denied_total",
		"Inbound requests and connections refused by authorization policy.",
		"source", "destination")
	m.handshakeFail = newCounterVec("meshfed_proxy_tls_handshake_failures_total",
		"Failed TLS handshakes: inbound (callers without a valid SVID) and outbound (servers whose SVID or identity was refused).",
		"direction")
	m.connections = newCounterVec("meshfed_proxy_connections_total",
		"Connections accepted, by direction.",
		"direction")
	m.healthy = newGaugeVec("meshfed_proxy_upstream_healthy_endpoints",
		"Healthy endpoints known for each upstream, in all clusters.",
		"upstream")
	m.upstreamErr = newCounterVec("meshfed_proxy_upstream_connect_errors_total",
		"Failed connections to upstream endpoints (each is retried on another endpoint when possible).",
		"upstream")
	m.overflow = newCounterVec("meshfed_proxy_upstream_overflow_total",
		"Requests and connections refused by an upstream's circuit breaker (max_requests, max_connections, max_pending_requests).",
		"upstream")
	m.ejections = newCounterVec("meshfed_proxy_upstream_ejections_total",
		"Endpoints ejected by outlier detection (the circuit breaker's consecutive_errors).",
		"upstream")
	m.rateLimited = newCounterVec("meshfed_proxy_rate_limited_total",
		"Inbound requests and connections refused by the service's rate limit.",
		"destination")
	m.spansExported = newCounterVec("meshfed_proxy_spans_exported_total",
		"Trace spans sent to the mesh settings' OTLP endpoint.")
	m.spansDropped = newCounterVec("meshfed_proxy_spans_dropped_total",
		"Trace spans not sent: the queue was full, no OTLP endpoint is set, or the export failed.",
		"reason")
	m.certExpiry = gauge{&m.certExpiryVal}

	m.families = []family{
		m.denied.family(), m.handshakeFail.family(), m.connections.family(),
		m.healthy.family(), m.upstreamErr.family(), m.overflow.family(), m.ejections.family(), m.rateLimited.family(),
		m.spansExported.family(), m.spansDropped.family(),
		{"meshfed_proxy_certificate_expiry_timestamp_seconds", "When the proxy's current SVID expires (Unix time).", "gauge",
			func(w *textWriter, _ *scrape) {
				w.sample("", "", "", math.Float64frombits(m.certExpiryVal.bits.Load()))
			}},
		{durationName, durationHelp, "histogram", writeRequestHistogram},
		{requestsName, requestsHelp, "counter", writeRequestCounter},
	}
	m.families = append(m.families, runtimeFamilies()...)
	m.families = append(m.families, m.processFamilies()...)
	slices.SortFunc(m.families, func(a, b family) int { return strings.Compare(a.name, b.name) })
	return m
}

// requestKey identifies a series of requests_total and request_duration.
// code is the HTTP status, 0 for TCP; keeping it an int saves formatting it
// on every request.
type requestKey struct {
	direction, source, destination string
	code                           int
}

type requestSeries struct {
	// counts[i] is the number of observations in bucket i alone (not
	// cumulative); the last is above the largest bound.
	counts  [numDurationBuckets + 1]atomic.Uint64
	sumBits atomic.Uint64 // math.Float64bits of the sum of observations

	labels  string    // rendered label pairs, sorted by label name
	sortKey [4]string // label values in label-name order
}

// observe records one finished request. It runs for every request: in the
// steady state it takes a read lock, looks up a map and updates two
// atomics, without allocating.
func (m *metrics) observe(direction, source, destination string, code int, d time.Duration) {
	if code < 0 {
		code = 0
	}
	k := requestKey{direction, source, destination, code}
	m.reqMu.RLock()
	s := m.reqs[k]
	m.reqMu.RUnlock()
	if s == nil {
		s = m.newRequestSeries(k)
	}
	v := d.Seconds()
	// Index of the first bound >= v (bounds are inclusive upper limits).
	lo, hi := 0, numDurationBuckets
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if durationBuckets[mid] < v {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	s.counts[lo].Add(1)
	for {
		old := s.sumBits.Load()
		if s.sumBits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

func (m *metrics) newRequestSeries(k requestKey) *requestSeries {
	m.reqMu.Lock()
	defer m.reqMu.Unlock()
	if s := m.reqs[k]; s != nil {
		return s
	}
	c := "tcp"
	if k.code > 0 {
		c = strconv.Itoa(k.code)
	}
	s := &requestSeries{sortKey: [4]string{c, k.destination, k.direction, k.source}}
	s.labels = renderLabels([]string{"code", "destination", "direction", "source"}, s.sortKey[:])
	m.reqs[k] = s
	return s
}

// requestSnapshot is the request series' counts read once per scrape, so
// that requests_total and the histogram agree.
type requestSnapshot []requestPoint

type requestPoint struct {
	s      *requestSeries
	counts [numDurationBuckets + 1]uint64
	total  uint64
	sum    float64
}

func (m *metrics) snapshotRequests() requestSnapshot {
	m.reqMu.RLock()
	snap := make(requestSnapshot, 0, len(m.reqs))
	for _, s := range m.reqs {
		snap = append(snap, requestPoint{s: s})
	}
	m.reqMu.RUnlock()
	for i := range snap {
		p := &snap[i]
		for j := range p.counts {
			p.counts[j] = p.s.counts[j].Load()
			p.total += p.counts[j]
		}
		p.sum = math.Float64frombits(p.s.sumBits.Load())
	}
	slices.SortFunc(snap, func(a, b requestPoint) int { return slices.Compare(a.s.sortKey[:], b.s.sortKey[:]) })
	return snap
}

func writeRequestCounter(w *textWriter, s *scrape) {
	for _, p := range s.requests {
		w.sample("", p.s.labels, "", float64(p.total))
	}
}

func writeRequestHistogram(w *textWriter, s *scrape) {
	for _, p := range s.requests {
		var cum uint64
		for i, le := range durationLe {
			cum += p.counts[i]
			w.sample("_bucket", p.s.labels, le, float64(cum))
		}
		w.sample("_sum", p.s.labels, "", p.sum)
		w.sample("_count", p.s.labels, "", float64(p.total))
	}
}

// maxVecLabels bounds the label names of a counterVec or gaugeVec, so that
// a fixed-size array can key their series without allocating.
const maxVecLabels = 4

type labelKey [maxVecLabels]string

// vec is a family of series told apart by the values of its labels.
type vec struct {
	name, help, typ string
	labelNames      []string
	order           []int // indexes into labelNames, sorted by name
	// value converts a series' bits to the sample value.
	value func(bits uint64) float64

	mu     sync.RWMutex
	series map[labelKey]*series
}

type series struct {
	bits    atomic.Uint64 // a counter's count, or a gauge's math.Float64bits
	labels  string        // rendered label pairs, sorted by label name
	sortKey []string      // label values in label-name order
}

func newVec(name, help, typ string, value func(uint64) float64, labelNames []string) *vec {
	if len(labelNames) > maxVecLabels {
		panic("metrics: too many labels for " + name)
	}
	order := make([]int, len(labelNames))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(labelNames[a], labelNames[b]) })
	return &vec{name: name, help: help, typ: typ, labelNames: labelNames, order: order, value: value, series: map[labelKey]*series{}}
}

func (v *vec) get(values []string) *series {
	if len(values) != len(v.labelNames) {
		panic("metrics: " + v.name + " takes " + strconv.Itoa(len(v.labelNames)) + " label values, got " + strconv.Itoa(len(values)))
	}
	var k labelKey
	copy(k[:], values)
	v.mu.RLock()
	s := v.series[k]
	v.mu.RUnlock()
	if s != nil {
		return s
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if s := v.series[k]; s != nil {
		return s
	}
	s = &series{sortKey: make([]string, len(values))}
	names := make([]string, len(values))
	for i, j := range v.order {
		names[i], s.sortKey[i] = v.labelNames[j], values[j]
	}
	s.labels = renderLabels(names, s.sortKey)
	v.series[k] = s
	return s
}

func (v *vec) family() family {
	return family{v.name, v.help, v.typ, func(w *textWriter, _ *scrape) {
		v.mu.RLock()
		all := make([]*series, 0, len(v.series))
		for _, s := range v.series {
			all = append(all, s)
		}
		v.mu.RUnlock()
		slices.SortFunc(all, func(a, b *series) int { return slices.Compare(a.sortKey, b.sortKey) })
		for _, s := range all {
			w.sample("", s.labels, "", v.value(s.bits.Load()))
		}
	}}
}

// counterVec is a family of counters; WithLabelValues takes the values in
// the order the label names were given.
type counterVec struct{ *vec }

func newCounterVec(name, help string, labelNames ...string) *counterVec {
	return &counterVec{newVec(name, help, "counter", func(n uint64) float64 { return float64(n) }, labelNames)}
}

func (v *counterVec) WithLabelValues(values ...string) counter { return counter{v.get(values)} }

type counter struct{ s *series }

func (c counter) Inc() { c.s.bits.Add(1) }

func (c counter) Add(n uint64) { c.s.bits.Add(n) }

// gaugeVec is a family of gauges; WithLabelValues takes the values in the
// order the label names were given.
type gaugeVec struct{ *vec }

func newGaugeVec(name, help string, labelNames ...string) *gaugeVec {
	return &gaugeVec{newVec(name, help, "gauge", math.Float64frombits, labelNames)}
}

func (v *gaugeVec) WithLabelValues(values ...string) gauge { return gauge{v.get(values)} }

type gauge struct{ s *series }

func (g gauge) Set(v float64) { g.s.bits.Store(math.Float64bits(v)) }

// family is one metric family of the exposition; write emits its samples
// (none leaves the family out).
type family struct {
	name, help, typ string
	write           func(w *textWriter, s *scrape)
}

// scrape holds what is read once per request to /metrics.
type scrape struct {
	requests requestSnapshot
	rt       map[string]float64 // runtime/metrics values by name
	gc       debug.GCStats
	proc     procStats
}

// textWriter appends the text exposition format to buf.
type textWriter struct {
	buf []byte
	fam *family // the family being written
	hdr bool    // whether fam's # HELP and # TYPE are written
}

// sample writes one line: the family's name with suffix, labels (rendered
// label pairs, maybe empty) plus le (a bucket bound, if not empty), and v.
func (w *textWriter) sample(suffix, labels, le string, v float64) {
	if !w.hdr {
		w.hdr = true
		w.buf = append(w.buf, "# HELP "...)
		w.buf = append(w.buf, w.fam.name...)
		w.buf = append(w.buf, ' ')
		w.buf = appendEscaped(w.buf, w.fam.help, false)
		w.buf = append(w.buf, "\n# TYPE "...)
		w.buf = append(w.buf, w.fam.name...)
		w.buf = append(w.buf, ' ')
		w.buf = append(w.buf, w.fam.typ...)
		w.buf = append(w.buf, '\n')
	}
	w.buf = append(w.buf, w.fam.name...)
	w.buf = append(w.buf, suffix...)
	if labels != "" || le != "" {
		w.buf = append(w.buf, '{')
		w.buf = append(w.buf, labels...)
		if le != "" {
			if labels != "" {
				w.buf = append(w.buf, ',')
			}
			w.buf = append(w.buf, `le="`...)
			w.buf = append(w.buf, le...)
			w.buf = append(w.buf, '"')
		}
		w.buf = append(w.buf, '}')
	}
	w.buf = append(w.buf, ' ')
	w.buf = appendFloat(w.buf, v)
	w.buf = append(w.buf, '\n')
}

// renderLabels renders name="value" pairs joined by commas, values escaped.
func renderLabels(names, values []string) string {
	var b []byte
	for i, n := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, n...)
		b = append(b, `="`...)
		b = appendEscaped(b, values[i], true)
		b = append(b, '"')
	}
	return string(b)
}

// appendEscaped escapes backslash and newline, and double quote in label
// values, as the text format requires.
func appendEscaped(b []byte, s string, quote bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendFloat formats v as client_golang does: shortest 'g' form, +Inf,
// -Inf and NaN.
func appendFloat(b []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, +1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

const metricsContentType = "text/plain; version=0.0.4; charset=utf-8"

func (m *metrics) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := m.appendText(make([]byte, 0, 32<<10))
		h := w.Header()
		h.Set("Content-Type", metricsContentType)
		h.Add("Vary", "Accept-Encoding")
		if acceptsGzip(r.Header.Get("Accept-Encoding")) {
			h.Set("Content-Encoding", "gzip")
			gz := gzip.NewWriter(w)
			_, _ = gz.Write(body)
			_ = gz.Close()
			return
		}
		h.Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})
}

// acceptsGzip reports whether an Accept-Encoding header value lists gzip
// with a non-zero quality.
func acceptsGzip(accept string) bool {
	for part := range strings.SplitSeq(accept, ",") {
		enc, params, _ := strings.Cut(part, ";")
		if !strings.EqualFold(strings.TrimSpace(enc), "gzip") {
			continue
		}
		for p := range strings.SplitSeq(params, ";") {
			if q, ok := strings.CutPrefix(strings.TrimSpace(p), "q="); ok {
				if f, err := strconv.ParseFloat(q, 64); err == nil && f == 0 {
					return false
				}
			}
		}
		return true
	}
	return false
}

// appendText appends the whole exposition to b.
func (m *metrics) appendText(b []byte) []byte {
	s := &scrape{requests: m.snapshotRequests(), rt: readRuntimeMetrics(), proc: m.readProc()}
	s.gc.PauseQuantiles = make([]time.Duration, 5)
	debug.ReadGCStats(&s.gc)
	w := &textWriter{buf: b}
	for i := range m.families {
		w.fam, w.hdr = &m.families[i], false
		m.families[i].write(w, s)
	}
	return w.buf
}

// Go runtime metrics, as client_golang's default Go collector names them.
// The go_memstats_* values are derived from runtime/metrics, which, unlike
// runtime.ReadMemStats, does not stop the world.
const (
	rmTinyAllocs    = "/gc/heap/tiny/allocs:objects"
	rmAllocsObjects = "/gc/heap/allocs:objects"
	rmFreesObjects  = "/gc/heap/frees:objects"
	rmAllocsBytes   = "/gc/heap/allocs:bytes"
	rmHeapObjects   = "/gc/heap/objects:objects"
	rmHeapGoal      = "/gc/heap/goal:bytes"
	rmTotal         = "/memory/classes/total:bytes"
	rmHeapObjBytes  = "/memory/classes/heap/objects:bytes"
	rmHeapUnused    = "/memory/classes/heap/unused:bytes"
	rmHeapReleased  = "/memory/classes/heap/released:bytes"
	rmHeapFree      = "/memory/classes/heap/free:bytes"
	rmHeapStacks    = "/memory/classes/heap/stacks:bytes"
	rmOSStacks      = "/memory/classes/os-stacks:bytes"
	rmMSpanInuse    = "/memory/classes/metadata/mspan/inuse:bytes"
	rmMSpanFree     = "/memory/classes/metadata/mspan/free:bytes"
	rmMCacheInuse   = "/memory/classes/metadata/mcache/inuse:bytes"
	rmMCacheFree    = "/memory/classes/metadata/mcache/free:bytes"
	rmBuckets       = "/memory/classes/profiling/buckets:bytes"
	rmMetaOther     = "/memory/classes/metadata/other:bytes"
	rmOther         = "/memory/classes/other:bytes"
)

// runtimeGauges are runtime/metrics exposed under their own names (the
// help is the runtime's description).
var runtimeGauges = []struct{ rm, name string }{
	{"/gc/gogc:percent", "go_gc_gogc_percent"},
	{"/gc/gomemlimit:bytes", "go_gc_gomemlimit_bytes"},
	{"/sched/gomaxprocs:threads", "go_sched_gomaxprocs_threads"},
}

var runtimeSampleNames = []string{
	rmTinyAllocs, rmAllocsObjects, rmFreesObjects, rmAllocsBytes, rmHeapObjects, rmHeapGoal,
	rmTotal, rmHeapObjBytes, rmHeapUnused, rmHeapReleased, rmHeapFree, rmHeapStacks, rmOSStacks,
	rmMSpanInuse, rmMSpanFree, rmMCacheInuse, rmMCacheFree, rmBuckets, rmMetaOther, rmOther,
	"/gc/gogc:percent", "/gc/gomemlimit:bytes", "/sched/gomaxprocs:threads",
}

// readRuntimeMetrics reads runtimeSampleNames; ones this Go version does
// not have are absent.
func readRuntimeMetrics() map[string]float64 {
	samples := make([]rtmetrics.Sample, len(runtimeSampleNames))
	for i, n := range runtimeSampleNames {
		samples[i].Name = n
	}
	rtmetrics.Read(samples)
	rt := make(map[string]float64, len(samples))
	for _, s := range samples {
		switch s.Value.Kind() {
		case rtmetrics.KindUint64:
			rt[s.Name] = float64(s.Value.Uint64())
		case rtmetrics.KindFloat64:
			rt[s.Name] = s.Value.Float64()
		}
	}
	return rt
}

func runtimeFamilies() []family {
	scalar := func(name, help, typ string, v func(s *scrape) float64) family {
		return family{name, help, typ, func(w *textWriter, s *scrape) { w.sample("", "", "", v(s)) }}
	}
	// sum adds runtime/metrics values, missing ones as 0.
	sum := func(names ...string) func(*scrape) float64 {
		return func(s *scrape) float64 {
			var t float64
			for _, n := range names {
				t += s.rt[n]
			}
			return t
		}
	}
	ms := func(name, help, typ string, names ...string) family {
		return scalar("go_memstats_"+name, help, typ, sum(names...))
	}
	version := renderLabels([]string{"version"}, []string{runtime.Version()})
	fams := []family{
		scalar("go_goroutines", "Number of goroutines that currently exist.", "gauge",
			func(*scrape) float64 { return float64(runtime.NumGoroutine()) }),
		scalar("go_threads", "Number of OS threads created.", "gauge",
			func(*scrape) float64 { n, _ := runtime.ThreadCreateProfile(nil); return float64(n) }),
		{"go_gc_duration_seconds", "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.", "summary",
			func(w *textWriter, s *scrape) {
				for i, q := range []string{"0", "0.25", "0.5", "0.75", "1"} {
					w.sample("", `quantile="`+q+`"`, "", s.gc.PauseQuantiles[i].Seconds())
				}
				w.sample("_sum", "", "", s.gc.PauseTotal.Seconds())
				w.sample("_count", "", "", float64(s.gc.NumGC))
			}},
		scalar("go_memstats_last_gc_time_seconds", "Number of seconds since 1970 of last garbage collection.", "gauge",
			func(s *scrape) float64 { return float64(s.gc.LastGC.UnixNano()) / 1e9 }),
		{"go_info", "Information about the Go environment.", "gauge",
			func(w *textWriter, _ *scrape) { w.sample("", version, "", 1) }},

		ms("alloc_bytes", "Number of bytes allocated in heap and currently in use. Equals to /memory/classes/heap/objects:bytes.", "gauge",
			rmHeapObjBytes),
		ms("alloc_bytes_total", "Total number of bytes allocated in heap until now, even if released already. Equals to /gc/heap/allocs:bytes.", "counter",
			rmAllocsBytes),
		ms("sys_bytes", "Number of bytes obtained from system. Equals to /memory/classes/total:byte.", "gauge",
			rmTotal),
		ms("mallocs_total", "Total number of heap objects allocated, both live and gc-ed. Semantically a counter version for go_memstats_heap_objects gauge. Equals to /gc/heap/allocs:objects + /gc/heap/tiny/allocs:objects.", "counter",
			rmAllocsObjects, rmTinyAllocs),
		ms("frees_total", "Total number of heap objects frees. Equals to /gc/heap/frees:objects + /gc/heap/tiny/allocs:objects.", "counter",
			rmFreesObjects, rmTinyAllocs),
		ms("heap_alloc_bytes", "Number of heap bytes allocated and currently in use, same as go_memstats_alloc_bytes. Equals to /memory/classes/heap/objects:bytes.", "gauge",
			rmHeapObjBytes),
		ms("heap_sys_bytes", "Number of heap bytes obtained from system. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes + /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.", "gauge",
			rmHeapObjBytes, rmHeapUnused, rmHeapReleased, rmHeapFree),
		ms("heap_idle_bytes", "Number of heap bytes waiting to be used. Equals to /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.", "gauge",
			rmHeapReleased, rmHeapFree),
		ms("heap_inuse_bytes", "Number of heap bytes that are in use. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes", "gauge",
			rmHeapObjBytes, rmHeapUnused),
		ms("heap_released_bytes", "Number of heap bytes released to OS. Equals to /memory/classes/heap/released:bytes.", "gauge",
			rmHeapReleased),
		ms("heap_objects", "Number of currently allocated objects. Equals to /gc/heap/objects:objects.", "gauge",
			rmHeapObjects),
		ms("stack_inuse_bytes", "Number of bytes obtained from system for stack allocator in non-CGO environments. Equals to /memory/classes/heap/stacks:bytes.", "gauge",
			rmHeapStacks),
		ms("stack_sys_bytes", "Number of bytes obtained from system for stack allocator. Equals to /memory/classes/heap/stacks:bytes + /memory/classes/os-stacks:bytes.", "gauge",
			rmHeapStacks, rmOSStacks),
		ms("mspan_inuse_bytes", "Number of bytes in use by mspan structures. Equals to /memory/classes/metadata/mspan/inuse:bytes.", "gauge",
			rmMSpanInuse),
		ms("mspan_sys_bytes", "Number of bytes used for mspan structures obtained from system. Equals to /memory/classes/metadata/mspan/inuse:bytes + /memory/classes/metadata/mspan/free:bytes.", "gauge",
			rmMSpanInuse, rmMSpanFree),
		ms("mcache_inuse_bytes", "Number of bytes in use by mcache structures. Equals to /memory/classes/metadata/mcache/inuse:bytes.", "gauge",
			rmMCacheInuse),
		ms("mcache_sys_bytes", "Number of bytes used for mcache structures obtained from system. Equals to /memory/classes/metadata/mcache/inuse:bytes + /memory/classes/metadata/mcache/free:bytes.", "gauge",
			rmMCacheInuse, rmMCacheFree),
		ms("buck_hash_sys_bytes", "Number of bytes used by the profiling bucket hash table. Equals to /memory/classes/profiling/buckets:bytes.", "gauge",
			rmBuckets),
		ms("gc_sys_bytes", "Number of bytes used for garbage collection system metadata. Equals to /memory/classes/metadata/other:bytes.", "gauge",
			rmMetaOther),
		ms("other_sys_bytes", "Number of bytes used for other system allocations. Equals to /memory/classes/other:bytes.", "gauge",
			rmOther),
		ms("next_gc_bytes", "Number of heap bytes when next garbage collection will take place. Equals to /gc/heap/goal:bytes.", "gauge",
			rmHeapGoal),
	}
	for _, d := range rtmetrics.All() {
		for _, g := range runtimeGauges {
			if d.Name != g.rm {
				continue
			}
			rm := g.rm
			fams = append(fams, family{g.name, d.Description + " Sourced from " + rm + ".", "gauge", func(w *textWriter, s *scrape) {
				if v, ok := s.rt[rm]; ok {
					w.sample("", "", "", v)
				}
			}})
		}
	}
	return fams
}

// procStats are the process metrics read from /proc/self (Linux only;
// elsewhere the reads fail and the metrics are left out).
type procStats struct {
	statOK           bool
	cpu, vsize, rss  float64
	fdsOK            bool
	openFDs          float64
	limitsOK         bool
	maxFDs, maxVsize float64
	netOK            bool
	netIn, netOut    float64
	startTimeOK      bool
	startTime        float64
}

// userHZ is the clock tick of /proc/self/stat's times, as procfs assumes.
const userHZ = 100

func (m *metrics) readProc() procStats {
	var p procStats
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		// Fields after the command, which is in parentheses and may hold
		// spaces; f[0] is field 3 (state) of proc_pid_stat(5).
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 {
			f := strings.Fields(string(b[i+1:]))
			if len(f) > 21 {
				utime, err1 := strconv.ParseUint(f[11], 10, 64)
				stime, err2 := strconv.ParseUint(f[12], 10, 64)
				start, err3 := strconv.ParseUint(f[19], 10, 64)
				vsize, err4 := strconv.ParseUint(f[20], 10, 64)
				rss, err5 := strconv.ParseInt(f[21], 10, 64)
				if err1 == nil && err2 == nil && err3 == nil && err4 == nil && err5 == nil {
					p.statOK = true
					p.cpu = float64(utime+stime) / userHZ
					p.vsize = float64(vsize)
					p.rss = float64(rss * int64(os.Getpagesize()))
					m.startOnce.Do(func() { m.startTime = processStartTime(start) })
					p.startTime, p.startTimeOK = m.startTime, m.startTime != 0
				}
			}
		}
	}
	// Since Linux 6.2 the size of /proc/self/fd is the number of open
	// descriptors; before, it is 0 and the entries are counted.
	if fi, err := os.Stat("/proc/self/fd"); err == nil && fi.Size() > 0 {
		p.openFDs, p.fdsOK = float64(fi.Size()), true
	} else if d, err := os.Open("/proc/self/fd"); err == nil {
		names, err := d.Readdirnames(-1)
		_ = d.Close()
		if err == nil {
			p.openFDs, p.fdsOK = float64(len(names)), true
		}
	}
	if b, err := os.ReadFile("/proc/self/limits"); err == nil {
		fds, ok1 := softLimit(string(b), "Max open files")
		as, ok2 := softLimit(string(b), "Max address space")
		if ok1 && ok2 {
			p.limitsOK, p.maxFDs, p.maxVsize = true, fds, as
		}
	}
	if b, err := os.ReadFile("/proc/self/net/netstat"); err == nil {
		in, ok1 := netstatValue(string(b), "IpExt:", "InOctets")
		out, ok2 := netstatValue(string(b), "IpExt:", "OutOctets")
		if ok1 || ok2 {
			p.netOK, p.netIn, p.netOut = true, in, out
		}
	}
	return p
}

// processStartTime converts the start time in clock ticks since boot to
// Unix seconds, with the boot time from /proc/stat.
func processStartTime(ticks uint64) float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			boot, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0
			}
			return float64(boot) + float64(ticks)/userHZ
		}
	}
	return 0
}

// softLimit returns the soft limit of the named resource in the text of
// /proc/self/limits; "unlimited" is the largest uint64, as procfs reports it.
func softLimit(limits, name string) (float64, bool) {
	for line := range strings.SplitSeq(limits, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, false
		}
		if f[0] == "unlimited" {
			return float64(math.MaxUint64), true
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		return float64(v), err == nil
	}
	return 0, false
}

// netstatValue returns a field of /proc/self/net/netstat, where each
// section is a line of names followed by a line of values, both starting
// with the section's prefix.
func netstatValue(netstat, prefix, field string) (float64, bool) {
	lines := strings.Split(netstat, "\n")
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], prefix) || !strings.HasPrefix(lines[i+1], prefix) {
			continue
		}
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j, n := range names {
			if n == field && j < len(values) {
				v, err := strconv.ParseFloat(values[j], 64)
				return v, err == nil
			}
		}
		i++
	}
	return 0, false
}

func (m *metrics) processFamilies() []family {
	proc := func(name, help, typ string, v func(p *procStats) (float64, bool)) family {
		return family{name, help, typ, func(w *textWriter, s *scrape) {
			if x, ok := v(&s.proc); ok {
				w.sample("", "", "", x)
			}
		}}
	}
	return []family{
		proc("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", "counter",
			func(p *procStats) (float64, bool) { return p.cpu, p.statOK }),
		proc("process_open_fds", "Number of open file descriptors.", "gauge",
			func(p *procStats) (float64, bool) { return p.openFDs, p.fdsOK }),
		proc("process_max_fds", "Maximum number of open file descriptors.", "gauge",
			func(p *procStats) (float64, bool) { return p.maxFDs, p.limitsOK }),
		proc("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge",
			func(p *procStats) (float64, bool) { return p.vsize, p.statOK }),
		proc("process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes.", "gauge",
			func(p *procStats) (float64, bool) { return p.maxVsize, p.limitsOK }),
		proc("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge",
			func(p *procStats) (float64, bool) { return p.rss, p.statOK }),
		proc("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", "gauge",
			func(p *procStats) (float64, bool) { return p.startTime, p.startTimeOK }),
		proc("process_network_receive_bytes_total", "Number of bytes received by the process over the network.", "counter",
			func(p *procStats) (float64, bool) { return p.netIn, p.netOK }),
		proc("process_network_transmit_bytes_total", "Number of bytes sent by the process over the network.", "counter",
			func(p *procStats) (float64, bool) { return p.netOut, p.netOK }),
	}
}
