package e2e

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // OTLP exporters may compress
	"google.golang.org/protobuf/encoding/protojson"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/testharness"
)

// traceExportTimeout bounds the wait for a sampled span to reach the
// collector: the proxies export within about 2 s; the rest is slack for a
// loaded machine.
const traceExportTimeout = 5 * time.Second

// traceAbsenceWait is how long the test waits to conclude that a span that
// must not be exported was not: longer than the proxies' export delay.
const traceAbsenceWait = 2 * time.Second

// traceparentRE matches a version-00 traceparent: trace id, parent id,
// flags.
var traceparentRE = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$`)

// gotSpan is one span the collector received, with its resource's
// attributes.
type gotSpan struct {
	service, namespace string
	at                 time.Time // when the collector received it
	span               *tracepb.Span
}

func (s gotSpan) traceID() string  { return hex.EncodeToString(s.span.GetTraceId()) }
func (s gotSpan) spanID() string   { return hex.EncodeToString(s.span.GetSpanId()) }
func (s gotSpan) parentID() string { return hex.EncodeToString(s.span.GetParentSpanId()) }

func (s gotSpan) String() string {
	var attrs []string
	for _, kv := range s.span.GetAttributes() {
		attrs = append(attrs, fmt.Sprintf("%s=%s", kv.GetKey(), anyValueString(kv.GetValue())))
	}
	sort.Strings(attrs)
	return fmt.Sprintf("{service=%s/%s %s %q trace=%s span=%s parent=%q status=%s start=%d end=%d attrs=[%s]}",
		s.namespace, s.service, s.span.GetKind(), s.span.GetName(), s.traceID(), s.spanID(), s.parentID(),
		s.span.GetStatus().GetCode(), s.span.GetStartTimeUnixNano(), s.span.GetEndTimeUnixNano(), strings.Join(attrs, " "))
}

func anyValueString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return fmt.Sprintf("%q", x.StringValue)
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprintf("int(%d)", x.IntValue)
	case *commonpb.AnyValue_BoolValue:
		return fmt.Sprintf("bool(%t)", x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return fmt.Sprintf("double(%g)", x.DoubleValue)
	default:
		return fmt.Sprintf("%T(%v)", x, v)
	}
}

func attrValue(kvs []*commonpb.KeyValue, key string) *commonpb.AnyValue {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			return kv.GetValue()
		}
	}
	return nil
}

// otlpCollector is an OTLP/gRPC trace collector that keeps every span it
// receives.
type otlpCollector struct {
	collectortracepb.UnimplementedTraceServiceServer
	addr    string
	mu      sync.Mutex
	spans   []gotSpan
	exports int
}

func startOTLPCollector(t *testing.T) *otlpCollector {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &otlpCollector{addr: ln.Addr().String()}
	srv := grpc.NewServer()
	collectortracepb.RegisterTraceServiceServer(srv, c)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return c
}

func (c *otlpCollector) Export(_ context.Context, req *collectortracepb.ExportTraceServiceRequest) (*collectortracepb.ExportTraceServiceResponse, error) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.exports++
	for _, rs := range req.GetResourceSpans() {
		ra := rs.GetResource().GetAttributes()
		svc := attrValue(ra, "service.name").GetStringValue()
		ns := attrValue(ra, "service.namespace").GetStringValue()
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				c.spans = append(c.spans, gotSpan{service: svc, namespace: ns, at: now, span: s})
			}
		}
	}
	return &collectortracepb.ExportTraceServiceResponse{}, nil
}

// trace returns the spans received so far of the trace with this hex id.
func (c *otlpCollector) trace(id string) []gotSpan {
	return c.match(func(s gotSpan) bool { return s.traceID() == id })
}

// withPath returns the spans received so far whose url.path is path.
func (c *otlpCollector) withPath(path string) []gotSpan {
	return c.match(func(s gotSpan) bool {
		return attrValue(s.span.GetAttributes(), "url.path").GetStringValue() == path
	})
}

func (c *otlpCollector) match(f func(gotSpan) bool) []gotSpan {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []gotSpan
	for _, s := range c.spans {
		if f(s) {
			out = append(out, s)
		}
	}
	return out
}

func (c *otlpCollector) counts() (exports, spans int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exports, len(c.spans)
}

// spanPair splits a trace's spans into its CLIENT and SERVER spans.
func spanPair(spans []gotSpan) (client, server []gotSpan) {
	for _, s := range spans {
		switch s.span.GetKind() {
		case tracepb.Span_SPAN_KIND_CLIENT:
			client = append(client, s)
		case tracepb.Span_SPAN_KIND_SERVER:
			server = append(server, s)
		}
	}
	return client, server
}

func spansString(spans []gotSpan) string {
	if len(spans) == 0 {
		return "(none)"
	}
	var b strings.Builder
	for _, s := range spans {
		b.WriteString("\n\t")
		b.WriteString(s.String())
	}
	return b.String()
}

// traceSeen is what the destination app received with one request, as it
// answers it.
type traceSeen struct {
	Path        string   `json:"path"`
	Traceparent []string `json:"traceparent"`
	Tracestate  []string `json:"tracestate"`
}

// traceApp is the destination app: it answers every request with the
// trace headers it received (JSON), with status 500 under /fail.
type traceApp struct {
	port int
	mu   sync.Mutex
	hits map[string]int // requests received per path
}

func startTraceApp(t *testing.T) *traceApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &traceApp{port: ln.Addr().(*net.TCPAddr).Port, hits: map[string]int{}}
	srv := &http.Server{Handler: http.HandlerFunc(a.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *traceApp) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	a.mu.Lock()
	a.hits[r.URL.Path]++
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-App", "api")
	if strings.HasPrefix(r.URL.Path, "/fail") {
		w.WriteHeader(http.StatusInternalServerError)
	}
	_ = json.NewEncoder(w).Encode(traceSeen{Path: r.URL.Path, Traceparent: r.Header.Values("Traceparent"), Tracestate: r.Header.Values("Tracestate")})
}

func (a *traceApp) hitsOf(path string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.hits[path]
}

// traceResp is one answer through the client proxy.
type traceResp struct {
	code int
	app  string
	seen traceSeen
	body string
	done time.Time
	err  error
}

func (r traceResp) String() string {
	if r.err != nil {
		return fmt.Sprintf("error %v", r.err)
	}
	return fmt.Sprintf("%d app=%q body=%q", r.code, r.app, strings.TrimSpace(r.body))
}

// traceparent returns the one traceparent the app received, parsed, or
// an error saying what it received instead.
func (r traceResp) traceparent() (trace, parent, flags string, err error) {
	if r.err != nil || r.app != "api" {
		return "", "", "", fmt.Errorf("no answer from the app: %s", r)
	}
	if len(r.seen.Traceparent) != 1 {
		return "", "", "", fmt.Errorf("the app received %d traceparent headers %q; want one", len(r.seen.Traceparent), r.seen.Traceparent)
	}
	m := traceparentRE.FindStringSubmatch(r.seen.Traceparent[0])
	if m == nil {
		return "", "", "", fmt.Errorf("the app received traceparent %q, not 00-<32 hex>-<16 hex>-<2 hex>", r.seen.Traceparent[0])
	}
	return m[1], m[2], m[3], nil
}

// traceGet sends GET path through addr (the client proxy's upstream "api")
// with the given request headers.
func traceGet(hc *http.Client, addr, path string, header map[string]string) traceResp {
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return traceResp{err: err}
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return traceResp{err: err, done: time.Now()}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	r := traceResp{code: resp.StatusCode, app: resp.Header.Get("X-App"), body: string(b), done: time.Now(), err: err}
	if err == nil && r.app == "api" {
		if jerr := json.Unmarshal(b, &r.seen); jerr != nil {
			r.err = fmt.Errorf("the app's answer %q: %w", b, jerr)
		}
	}
	return r
}

// setTraceSettings reads the mesh settings, changes trace_sampling and
// otlp_endpoint, and writes them back with "meshfed mesh set -f".
func setTraceSettings(t *testing.T, m *meshFixture, sampling float64, endpoint string) time.Time {
	t.Helper()
	var s meshfedv1.MeshSettings
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(m.cli("mesh", "get", "-o", "json")), &s); err != nil {
		t.Fatalf("decoding meshfed mesh get -o json: %v", err)
	}
	s.Meta = &meshfedv1.Meta{Name: "global"}
	s.TraceSampling = sampling
	s.OtlpEndpoint = endpoint
	b, err := protojson.Marshal(&s)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "mesh.json")
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	m.cli("mesh", "set", "-f", f)
	return time.Now()
}

// tracePaths hands out request paths that no other request of the test
// uses, so that the app's hit counts and url.path attributes tell the
// requests apart.
var tracePaths atomic.Int64

func uniquePath(prefix string) string {
	return fmt.Sprintf("/%s-%d", prefix, tracePaths.Add(1))
}

// TestProxyTracing checks W3C trace context propagation through a client
// proxy and a destination proxy, and the export of their spans with
// OTLP/gRPC to a collector run by the test: a trace started by the client
// proxy, a trace continued from the caller's traceparent (and tracestate),
// a 5xx answer marking both spans as errors, and sampling 0 (no trace
// started, but a caller's sampled trace continued and exported, an
// unsampled one forwarded and not exported).
func TestProxyTracing(t *testing.T) {
	skipShort(t)
	begin := time.Now()
	col := startOTLPCollector(t) // before the proxies: stopped after them
	m := newMeshFixture(t, "trc")
	app := startTraceApp(t)
	clientApp := startHTTPApp(t, "client")
	m.service("api", "http", app.port)
	m.service("client", "http", clientApp.port)
	m.policy(fmt.Sprintf("meta: {name: allow-client}\ndestination: api\naction: allow\nrules:\n- principals: [%q]\n", m.id("client")))
	m.proxy("api", app.port, nil)
	cl := m.proxy("client", clientApp.port, []string{"api"})
	addr := cl.Upstream("api")
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)

	if err := testharness.Poll(waitTimeout, func() error {
		if r := traceGet(hc, addr, "/ready", nil); r.err != nil || r.code != http.StatusOK || r.app != "api" {
			return fmt.Errorf("GET /ready through the client proxy: %s", r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("set-up done after %s; collector on %s", time.Since(begin).Round(time.Millisecond), col.addr)

	// Sampling 1: wait until a request without a traceparent gets a trace
	// of which the collector receives both the CLIENT and the SERVER span
	// (both proxies then follow the new settings).
	applied := setTraceSettings(t, m, 1, col.addr)
	var warm []string
	var lastWarm traceResp
	var lastSent time.Time
	if err := testharness.Poll(tpApplyTimeout+traceExportTimeout, func() error {
		if time.Since(lastSent) >= 200*time.Millisecond && time.Since(applied) < tpApplyTimeout {
			lastSent = time.Now()
			lastWarm = traceGet(hc, addr, uniquePath("warm"), nil)
			if tr, _, _, err := lastWarm.traceparent(); err == nil {
				warm = append(warm, tr)
			}
		}
		for _, tr := range warm {
			if c, s := spanPair(col.trace(tr)); len(c) > 0 && len(s) > 0 {
				return nil
			}
		}
		return fmt.Errorf("no trace with both spans exported; %d requests with a traceparent, last answer %s", len(warm), lastWarm)
	}); err != nil {
		t.Fatalf("trace_sampling 1 with otlp_endpoint %s did not show: %v", col.addr, err)
	}
	t.Logf("trace_sampling 1: both spans of a request exported %s after the CLI applied it", time.Since(applied).Round(time.Millisecond))

	// checkPair checks the CLIENT and SERVER spans of trace tr (exactly one
	// each) against the app's view r: parentage, resource, name,
	// attributes, status and times. clientParent is the CLIENT span's
	// expected parent ("" for a root).
	checkPair := func(t *testing.T, r traceResp, tr, clientParent, path string, status int) (client, server gotSpan) {
		t.Helper()
		var spans []gotSpan
		if err := testharness.Poll(traceExportTimeout, func() error {
			spans = col.trace(tr)
			if c, s := spanPair(spans); len(c) == 0 || len(s) == 0 {
				return fmt.Errorf("spans of trace %s so far: %s", tr, spansString(spans))
			}
			return nil
		}); err != nil {
			t.Fatalf("the collector did not receive both a CLIENT and a SERVER span of trace %s within %s: %v", tr, traceExportTimeout, err)
		}
		cs, ss := spanPair(spans)
		if len(cs) != 1 || len(ss) != 1 || len(spans) != 2 {
			t.Fatalf("trace %s: want exactly one CLIENT and one SERVER span, got: %s", tr, spansString(spans))
		}
		client, server = cs[0], ss[0]
		t.Logf("trace %s exported %s (CLIENT) and %s (SERVER) after the answer", tr,
			client.at.Sub(r.done).Round(time.Millisecond), server.at.Sub(r.done).Round(time.Millisecond))
		_, appParent, _, err := r.traceparent()
		if err != nil {
			t.Fatal(err)
		}
		if client.parentID() != clientParent {
			t.Errorf("the CLIENT span's parent is %q; want %q", client.parentID(), clientParent)
		}
		if server.parentID() != client.spanID() {
			t.Errorf("the SERVER span's parent is %q; want the CLIENT span's id %s", server.parentID(), client.spanID())
		}
		if appParent != server.spanID() {
			t.Errorf("the app's traceparent has parent id %s; want the SERVER span's id %s", appParent, server.spanID())
		}
		if client.spanID() == server.spanID() {
			t.Errorf("the CLIENT and the SERVER span have the same id %s", client.spanID())
		}
		for _, s := range []struct {
			span    gotSpan
			service string
		}{{client, "client"}, {server, "api"}} {
			for _, p := range spanProblems(s.span, s.service, path, status) {
				t.Errorf("%s span: %s\n\tspan: %s", s.span.span.GetKind(), p, s.span)
			}
		}
		return client, server
	}

	var traces []string // the exported traces, checked at the end for duplicates
	t.Run("start-trace", func(t *testing.T) {
		before := app.hitsOf("/x")
		r := traceGet(hc, addr, "/x", nil)
		if r.err != nil || r.code != http.StatusOK || r.app != "api" {
			t.Fatalf("GET /x: %s", r)
		}
		if n := app.hitsOf("/x") - before; n != 1 {
			t.Fatalf("the app received GET /x %d times; want 1", n)
		}
		tr, _, flags, err := r.traceparent()
		if err != nil {
			t.Fatalf("trace_sampling 1, no incoming traceparent: %v", err)
		}
		if flags != "01" {
			t.Errorf("the app's traceparent %q has flags %s; want 01 (sampled)", r.seen.Traceparent[0], flags)
		}
		if len(r.seen.Tracestate) != 0 {
			t.Errorf("the app received tracestate %q; none was sent", r.seen.Tracestate)
		}
		traces = append(traces, tr)
		checkPair(t, r, tr, "", "/x", http.StatusOK)
	})

	t.Run("continue-trace", func(t *testing.T) {
		const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
		path := uniquePath("continue")
		r := traceGet(hc, addr, path, map[string]string{
			"traceparent": "00-" + trace + "-" + parent + "-01",
			"tracestate":  "k=v",
		})
		if r.err != nil || r.code != http.StatusOK || r.app != "api" {
			t.Fatalf("GET %s: %s", path, r)
		}
		tr, appParent, flags, err := r.traceparent()
		if err != nil {
			t.Fatalf("incoming sampled traceparent: %v", err)
		}
		if tr != trace || flags != "01" {
			t.Fatalf("the app received traceparent %q; want trace %s and flags 01 (the caller's)", r.seen.Traceparent[0], trace)
		}
		if appParent == parent {
			t.Errorf("the app's traceparent %q still names the caller's span %s as parent; want the SERVER span", r.seen.Traceparent[0], parent)
		}
		if len(r.seen.Tracestate) != 1 || r.seen.Tracestate[0] != "k=v" {
			t.Errorf("the app received tracestate %q; want [\"k=v\"]", r.seen.Tracestate)
		}
		traces = append(traces, tr)
		checkPair(t, r, trace, parent, path, http.StatusOK)
	})

	t.Run("server-error", func(t *testing.T) {
		path := uniquePath("fail")
		r := traceGet(hc, addr, path, nil)
		if r.err != nil || r.code != http.StatusInternalServerError || r.app != "api" {
			t.Fatalf("GET %s: %s; want the app's 500", path, r)
		}
		if n := app.hitsOf(path); n != 1 {
			t.Fatalf("the app received GET %s %d times; want 1", path, n)
		}
		tr, _, _, err := r.traceparent()
		if err != nil {
			t.Fatal(err)
		}
		traces = append(traces, tr)
		checkPair(t, r, tr, "", path, http.StatusInternalServerError)
	})

	t.Run("sampling-0", func(t *testing.T) {
		applied := setTraceSettings(t, m, 0, col.addr)
		// Both proxies follow sampling 0 once the app gets no traceparent:
		// either one still at 1 would start or continue a trace.
		var last traceResp
		if err := testharness.Poll(tpApplyTimeout, func() error {
			last = traceGet(hc, addr, uniquePath("poll0"), nil)
			if last.err != nil || last.code != http.StatusOK || last.app != "api" || len(last.seen.Traceparent) != 0 {
				return fmt.Errorf("last answer %s", last)
			}
			return nil
		}); err != nil {
			t.Fatalf("trace_sampling 0 did not show: the app kept receiving a traceparent: %v", err)
		}
		t.Logf("trace_sampling 0: in force %s after the CLI applied it", time.Since(applied).Round(time.Millisecond))

		// No incoming traceparent: none reaches the app, nothing exported.
		nonePath := uniquePath("none")
		r := traceGet(hc, addr, nonePath, nil)
		if r.err != nil || r.code != http.StatusOK || r.app != "api" {
			t.Fatalf("GET %s: %s", nonePath, r)
		}
		if len(r.seen.Traceparent) != 0 || len(r.seen.Tracestate) != 0 {
			t.Errorf("trace_sampling 0, no incoming traceparent: the app received traceparent %q tracestate %q; want none", r.seen.Traceparent, r.seen.Tracestate)
		}

		// An unsampled incoming traceparent (flags 00): forwarded
		// unchanged, not exported.
		const trace00, parent00 = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
		unsampledPath := uniquePath("unsampled")
		r00 := traceGet(hc, addr, unsampledPath, map[string]string{"traceparent": "00-" + trace00 + "-" + parent00 + "-00"})
		if r00.err != nil || r00.code != http.StatusOK || r00.app != "api" {
			t.Fatalf("GET %s: %s", unsampledPath, r00)
		}
		if tr, p, flags, err := r00.traceparent(); err != nil {
			t.Errorf("incoming traceparent with flags 00: %v", err)
		} else {
			if tr != trace00 || flags != "00" {
				t.Errorf("incoming traceparent with flags 00: the app received %q; want trace %s with flags 00", r00.seen.Traceparent[0], trace00)
			}
			// The proxies record nothing for it, so they forward it as
			// it came (docs/proxy.md).
			if p != parent00 {
				t.Errorf("incoming traceparent with flags 00: the app's traceparent %q names parent %s; want the caller's %s, forwarded unchanged", r00.seen.Traceparent[0], p, parent00)
			}
		}

		// A sampled incoming traceparent (flags 01): the caller's decision
		// wins, both spans are exported.
		const trace01, parent01 = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
		sampledPath := uniquePath("sampled")
		r01 := traceGet(hc, addr, sampledPath, map[string]string{"traceparent": "00-" + trace01 + "-" + parent01 + "-01"})
		if r01.err != nil || r01.code != http.StatusOK || r01.app != "api" {
			t.Fatalf("GET %s: %s", sampledPath, r01)
		}
		if tr, _, flags, err := r01.traceparent(); err != nil {
			t.Errorf("incoming traceparent with flags 01: %v", err)
		} else if tr != trace01 || flags != "01" {
			t.Errorf("incoming traceparent with flags 01: the app received %q; want trace %s with flags 01", r01.seen.Traceparent[0], trace01)
		}
		traces = append(traces, trace01)
		t.Run("sampled-incoming-exported", func(t *testing.T) {
			checkPair(t, r01, trace01, parent01, sampledPath, http.StatusOK)
		})

		// The one fixed wait: what must not be exported is not, within
		// longer than the proxies' export delay.
		time.Sleep(time.Until(r00.done.Add(traceAbsenceWait)))
		if spans := col.withPath(nonePath); len(spans) != 0 {
			t.Errorf("trace_sampling 0, no incoming traceparent: the collector received spans of GET %s: %s", nonePath, spansString(spans))
		}
		if spans := col.trace(trace00); len(spans) != 0 {
			t.Errorf("incoming traceparent with flags 00: the collector received spans of the unsampled trace %s: %s", trace00, spansString(spans))
		}
		if spans := col.withPath(unsampledPath); len(spans) != 0 {
			t.Errorf("incoming traceparent with flags 00: the collector received spans of GET %s: %s", unsampledPath, spansString(spans))
		}
	})

	// At least 2 s after the last exported request: no trace checked above
	// got a span twice (a missing span is reported by its sub-test).
	for _, tr := range traces {
		if spans := col.trace(tr); len(spans) > 2 {
			t.Errorf("trace %s: the collector received %d spans in all; want 2 (one CLIENT, one SERVER): %s", tr, len(spans), spansString(spans))
		}
	}
	exports, spans := col.counts()
	t.Logf("the collector received %d spans in %d export calls; TestProxyTracing took %s", spans, exports, time.Since(begin).Round(time.Millisecond))
}

// spanProblems checks a span's resource, name, attributes, status and
// times.
func spanProblems(s gotSpan, service, path string, status int) []string {
	var p []string
	if s.service != service || s.namespace != "default" {
		p = append(p, fmt.Sprintf("resource service.name %q service.namespace %q; want %q and \"default\"", s.service, s.namespace, service))
	}
	if len(s.span.GetTraceId()) != 16 || len(s.span.GetSpanId()) != 8 {
		p = append(p, fmt.Sprintf("trace id of %d bytes, span id of %d; want 16 and 8", len(s.span.GetTraceId()), len(s.span.GetSpanId())))
	}
	if n := s.span.GetName(); n != "GET" {
		p = append(p, fmt.Sprintf("name %q; want \"GET\"", n))
	}
	attrs := s.span.GetAttributes()
	wantString := func(key, want string) {
		v := attrValue(attrs, key)
		if _, ok := v.GetValue().(*commonpb.AnyValue_StringValue); !ok || v.GetStringValue() != want {
			p = append(p, fmt.Sprintf("attribute %s = %s; want %q", key, anyValueString(v), want))
		}
	}
	wantString("http.request.method", "GET")
	wantString("url.path", path)
	wantString("meshfed.destination", "default/api")
	if v := attrValue(attrs, "http.response.status_code"); func() bool {
		_, ok := v.GetValue().(*commonpb.AnyValue_IntValue)
		return !ok || v.GetIntValue() != int64(status)
	}() {
		p = append(p, fmt.Sprintf("attribute http.response.status_code = %s; want int(%d)", anyValueString(v), status))
	}
	code := s.span.GetStatus().GetCode()
	if status >= 500 && code != tracepb.Status_STATUS_CODE_ERROR {
		p = append(p, fmt.Sprintf("status %s for a %d answer; want STATUS_CODE_ERROR", code, status))
	}
	if status < 500 && code == tracepb.Status_STATUS_CODE_ERROR {
		p = append(p, fmt.Sprintf("status %s for a %d answer", code, status))
	}
	start, end := s.span.GetStartTimeUnixNano(), s.span.GetEndTimeUnixNano()
	if start == 0 || end == 0 || end < start {
		p = append(p, fmt.Sprintf("start %d end %d; want both set and end >= start", start, end))
	}
	return p
}
