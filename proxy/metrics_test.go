package proxy

import (
	"compress/gzip"
	"io"
	"math"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrapeMetrics serves /metrics from m and returns the raw text and the
// families as the Prometheus text parser reads them.
func scrapeMetrics(t *testing.T, m *metrics, acceptEncoding string) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	req := httptest.NewRequest("GET", "/metrics", nil)
	if acceptEncoding != "" {
		req.Header.Set("Accept-Encoding", acceptEncoding)
	}
	rec := httptest.NewRecorder()
	m.handler().ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/plain; version=0.0.4; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	var body io.Reader = rec.Body
	if rec.Header().Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(rec.Body)
		if err != nil {
			t.Fatal(err)
		}
		body = zr
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, raw)
	}
	return string(raw), fams
}

func labelsOf(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, lp := range m.GetLabel() {
		l[lp.GetName()] = lp.GetValue()
	}
	return l
}

// findMetric returns the metric of family name whose labels are exactly want.
func findMetric(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("family %s missing", name)
	}
	for _, m := range f.GetMetric() {
		got := labelsOf(m)
		if len(got) != len(want) {
			continue
		}
		same := true
		for k, v := range want {
			if got[k] != v {
				same = false
			}
		}
		if same {
			return m
		}
	}
	t.Fatalf("%s%v missing; have %v", name, want, f.GetMetric())
	return nil
}

func TestMetricsExposition(t *testing.T) {
	m := newMetrics()
	const src = "spiffe://example.org/ns/default/sa/client"
	odd := "spiffe://example.org/a\"b\\c\nd"
	m.observe("inbound", src, "default/web", 200, 3*time.Millisecond)
	m.observe("inbound", src, "default/web", 200, 3*time.Millisecond)
	m.observe("inbound", src, "default/web", 200, 250*time.Microsecond) // on a bound: counts in it
	m.observe("inbound", src, "default/web", 200, 30*time.Second)       // above the largest bound
	m.observe("inbound", src, "default/web", 0, time.Second)
	m.observe("outbound", src, "default/api", 503, time.Millisecond)
	m.observe("inbound", odd, "default/web", 403, time.Millisecond)
	m.connections.WithLabelValues("inbound").Inc()
	m.connections.WithLabelValues("inbound").Inc()
	m.connections.WithLabelValues("outbound").Inc()
	m.denied.WithLabelValues(odd, "default/web").Inc()
	m.healthy.WithLabelValues("default/web").Set(1)
	m.healthy.WithLabelValues("default/api").Set(3)
	m.healthy.WithLabelValues("default/api").Set(2)
	m.certExpiry.Set(1.7e9)

	raw, fams := scrapeMetrics(t, m, "")

	types := map[string]dto.MetricType{
		"meshfed_proxy_requests_total":                       dto.MetricType_COUNTER,
		"meshfed_proxy_request_duration_seconds":             dto.MetricType_HISTOGRAM,
		"meshfed_proxy_authorization_denied_total":           dto.MetricType_COUNTER,
		"meshfed_proxy_connections_total":                    dto.MetricType_COUNTER,
		"meshfed_proxy_upstream_healthy_endpoints":           dto.MetricType_GAUGE,
		"meshfed_proxy_certificate_expiry_timestamp_seconds": dto.MetricType_GAUGE,
		"go_goroutines":                    dto.MetricType_GAUGE,
		"go_threads":                       dto.MetricType_GAUGE,
		"go_info":                          dto.MetricType_GAUGE,
		"go_gc_duration_seconds":           dto.MetricType_SUMMARY,
		"go_memstats_alloc_bytes":          dto.MetricType_GAUGE,
		"go_memstats_alloc_bytes_total":    dto.MetricType_COUNTER,
		"go_memstats_heap_alloc_bytes":     dto.MetricType_GAUGE,
		"go_memstats_heap_inuse_bytes":     dto.MetricType_GAUGE,
		"go_memstats_sys_bytes":            dto.MetricType_GAUGE,
		"go_memstats_stack_inuse_bytes":    dto.MetricType_GAUGE,
		"go_memstats_mallocs_total":        dto.MetricType_COUNTER,
		"go_memstats_next_gc_bytes":        dto.MetricType_GAUGE,
		"go_memstats_last_gc_time_seconds": dto.MetricType_GAUGE,
		"go_gc_gogc_percent":               dto.MetricType_GAUGE,
		"go_gc_gomemlimit_bytes":           dto.MetricType_GAUGE,
		"go_sched_gomaxprocs_threads":      dto.MetricType_GAUGE,
	}
	if runtime.GOOS == "linux" {
		for _, n := range []string{"process_resident_memory_bytes", "process_virtual_memory_bytes",
			"process_virtual_memory_max_bytes", "process_open_fds", "process_max_fds", "process_start_time_seconds"} {
			types[n] = dto.MetricType_GAUGE
		}
		types["process_cpu_seconds_total"] = dto.MetricType_COUNTER
	}
	for name, typ := range types {
		f := fams[name]
		if f == nil {
			t.Errorf("family %s missing", name)
			continue
		}
		if f.GetType() != typ {
			t.Errorf("%s: type %v, want %v", name, f.GetType(), typ)
		}
		if f.GetHelp() == "" {
			t.Errorf("%s: no help", name)
		}
	}
	// Families without series are left out, as client_golang does.
	for _, name := range []string{"meshfed_proxy_tls_handshake_failures_total", "meshfed_proxy_upstream_connect_errors_total"} {
		if _, ok := fams[name]; ok || strings.Contains(raw, name) {
			t.Errorf("%s exposed without series", name)
		}
	}

	if runtime.GOOS == "linux" {
		rss := findMetric(t, fams, "process_resident_memory_bytes", nil).GetGauge().GetValue()
		if rss < 1<<20 {
			t.Errorf("process_resident_memory_bytes = %v", rss)
		}
		if st := findMetric(t, fams, "process_start_time_seconds", nil).GetGauge().GetValue(); math.Abs(st-float64(time.Now().Unix())) > 24*3600 {
			t.Errorf("process_start_time_seconds = %v", st)
		}
		if fds := findMetric(t, fams, "process_open_fds", nil).GetGauge().GetValue(); fds < 3 {
			t.Errorf("process_open_fds = %v", fds)
		}
	}
	if g := findMetric(t, fams, "go_goroutines", nil).GetGauge().GetValue(); g < 1 {
		t.Errorf("go_goroutines = %v", g)
	}
	if v := findMetric(t, fams, "go_info", map[string]string{"version": runtime.Version()}).GetGauge().GetValue(); v != 1 {
		t.Errorf("go_info = %v", v)
	}
	if q := findMetric(t, fams, "go_gc_duration_seconds", nil).GetSummary().GetQuantile(); len(q) != 5 {
		t.Errorf("go_gc_duration_seconds quantiles: %v", q)
	}

	// Counters and gauges with their label sets.
	ok200 := map[string]string{"direction": "inbound", "source": src, "destination": "default/web", "code": "200"}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"meshfed_proxy_requests_total", ok200, 4},
		{"meshfed_proxy_requests_total", map[string]string{"direction": "inbound", "source": src, "destination": "default/web", "code": "tcp"}, 1},
		{"meshfed_proxy_requests_total", map[string]string{"direction": "outbound", "source": src, "destination": "default/api", "code": "503"}, 1},
		{"meshfed_proxy_requests_total", map[string]string{"direction": "inbound", "source": odd, "destination": "default/web", "code": "403"}, 1},
		{"meshfed_proxy_connections_total", map[string]string{"direction": "inbound"}, 2},
		{"meshfed_proxy_connections_total", map[string]string{"direction": "outbound"}, 1},
		{"meshfed_proxy_authorization_denied_total", map[string]string{"source": odd, "destination": "default/web"}, 1},
	} {
		if got := findMetric(t, fams, c.name, c.labels).GetCounter().GetValue(); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if n := len(fams["meshfed_proxy_requests_total"].GetMetric()); n != 4 {
		t.Errorf("requests_total has %d series, want 4", n)
	}
	if got := findMetric(t, fams, "meshfed_proxy_upstream_healthy_endpoints", map[string]string{"upstream": "default/api"}).GetGauge().GetValue(); got != 2 {
		t.Errorf("healthy endpoints default/api = %v, want 2", got)
	}
	if got := findMetric(t, fams, "meshfed_proxy_certificate_expiry_timestamp_seconds", nil).GetGauge().GetValue(); got != 1.7e9 {
		t.Errorf("certificate expiry = %v", got)
	}

	// The histogram: cumulative buckets, +Inf, sum and count.
	h := findMetric(t, fams, "meshfed_proxy_request_duration_seconds", ok200).GetHistogram()
	if h.GetSampleCount() != 4 {
		t.Errorf("count = %d, want 4", h.GetSampleCount())
	}
	if want := 0.003 + 0.003 + 0.00025 + 30; math.Abs(h.GetSampleSum()-want) > 1e-9 {
		t.Errorf("sum = %v, want %v", h.GetSampleSum(), want)
	}
	wantBounds := []float64{0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384}
	var bounds []float64
	for _, b := range h.GetBucket() {
		bounds = append(bounds, b.GetUpperBound())
		var want uint64
		switch {
		case b.GetUpperBound() < 0.004:
			want = 1 // the 250 µs one
		case math.IsInf(b.GetUpperBound(), 1):
			want = 4
		default:
			want = 3
		}
		if b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
	// The parser keeps the +Inf bucket as a bucket.
	if !slices.Equal(bounds[:len(bounds)-1], wantBounds) || !math.IsInf(bounds[len(bounds)-1], 1) {
		t.Errorf("bucket bounds %v", bounds)
	}

	// The text as client_golang writes it.
	for _, line := range []string{
		`# HELP meshfed_proxy_requests_total Requests (HTTP, gRPC) and connections (TCP) handled, by direction, source, destination and response code.`,
		`# TYPE meshfed_proxy_request_duration_seconds histogram`,
		`meshfed_proxy_requests_total{code="200",destination="default/web",direction="inbound",source="` + src + `"} 4`,
		`meshfed_proxy_request_duration_seconds_bucket{code="200",destination="default/web",direction="inbound",source="` + src + `",le="0.00025"} 1`,
		`meshfed_proxy_request_duration_seconds_bucket{code="200",destination="default/web",direction="inbound",source="` + src + `",le="16.384"} 3`,
		`meshfed_proxy_request_duration_seconds_bucket{code="200",destination="default/web",direction="inbound",source="` + src + `",le="+Inf"} 4`,
		`meshfed_proxy_request_duration_seconds_count{code="200",destination="default/web",direction="inbound",source="` + src + `"} 4`,
		`meshfed_proxy_upstream_healthy_endpoints{upstream="default/web"} 1`,
		`meshfed_proxy_certificate_expiry_timestamp_seconds 1.7e+09`,
		`meshfed_proxy_authorization_denied_total{destination="default/web",source="spiffe://example.org/a\"b\\c\nd"} 1`,
		`go_gc_duration_seconds{quantile="0.25"} `,
	} {
		if !strings.Contains(raw, line+"\n") && !strings.Contains(raw, "\n"+line) {
			t.Errorf("missing line %q", line)
		}
	}

	// Families sorted by name; series by label values in label-name order.
	var names []string
	for line := range strings.SplitSeq(raw, "\n") {
		if n, ok := strings.CutPrefix(line, "# TYPE "); ok {
			names = append(names, strings.Fields(n)[0])
		}
	}
	if !slices.IsSorted(names) {
		t.Errorf("families not sorted: %v", names)
	}
	var reqs []string
	for line := range strings.SplitSeq(raw, "\n") {
		if strings.HasPrefix(line, "meshfed_proxy_requests_total{") {
			reqs = append(reqs, line)
		}
	}
	if !slices.IsSorted(reqs) || len(reqs) != 4 || !strings.Contains(reqs[0], `code="200"`) || !strings.Contains(reqs[3], `code="tcp"`) {
		t.Errorf("requests_total series order: %q", reqs)
	}

	// The same exposition, gzipped when the scraper asks for it.
	_, zfams := scrapeMetrics(t, m, "gzip")
	if len(zfams) != len(fams) {
		t.Errorf("gzipped scrape has %d families, plain %d", len(zfams), len(fams))
	}
}

func TestAppendFloat(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{
		{0, "0"}, {1, "1"}, {-1, "-1"}, {2, "2"}, {0.003, "0.003"}, {30, "30"}, {1445800, "1.4458e+06"},
		{1.7e9, "1.7e+09"}, {float64(math.MaxInt64), "9.223372036854776e+18"},
		{math.Inf(1), "+Inf"}, {math.Inf(-1), "-Inf"}, {math.NaN(), "NaN"},
	} {
		if got := string(appendFloat(nil, c.v)); got != c.want {
			t.Errorf("appendFloat(%v) = %q, want %q", c.v, got, c.want)
		}
	}
}

func TestAcceptsGzip(t *testing.T) {
	for h, want := range map[string]bool{
		"": false, "gzip": true, "GZIP": true, "deflate, gzip;q=0.5": true, "gzip;q=0": false, "identity": false, "br, gzip": true,
	} {
		if got := acceptsGzip(h); got != want {
			t.Errorf("acceptsGzip(%q) = %v", h, got)
		}
	}
}

func TestObserveConcurrent(t *testing.T) {
	m := newMetrics()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				m.observe("inbound", "s", "default/web", 200+g%2, time.Duration(i)*time.Microsecond)
			}
		})
	}
	wg.Wait()
	_, fams := scrapeMetrics(t, m, "")
	for _, code := range []string{"200", "201"} {
		l := map[string]string{"direction": "inbound", "source": "s", "destination": "default/web", "code": code}
		if n := findMetric(t, fams, "meshfed_proxy_requests_total", l).GetCounter().GetValue(); n != 4000 {
			t.Errorf("code %s: %v requests, want 4000", code, n)
		}
		h := findMetric(t, fams, "meshfed_proxy_request_duration_seconds", l).GetHistogram()
		if want := 4 * 0.4995; h.GetSampleCount() != 4000 || math.Abs(h.GetSampleSum()-want) > 1e-9 {
			t.Errorf("code %s: count %d sum %v, want 4000 and %v", code, h.GetSampleCount(), h.GetSampleSum(), want)
		}
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	m := newMetrics()
	src, dst := "spiffe://example.org/ns/default/sa/client", "default/web"
	m.observe("inbound", src, dst, 200, time.Millisecond)
	m.connections.WithLabelValues("inbound").Inc()
	if n := testing.AllocsPerRun(1000, func() {
		m.observe("inbound", src, dst, 200, time.Millisecond)
		m.connections.WithLabelValues("inbound").Inc()
	}); n != 0 {
		t.Errorf("observe allocates %v times per call", n)
	}
}

func BenchmarkObserve(b *testing.B) {
	m := newMetrics()
	src, dst := "spiffe://example.org/ns/default/sa/client", "default/web"
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			m.observe("inbound", src, dst, 200, time.Duration(i%5000)*time.Microsecond)
			i++
		}
	})
}
