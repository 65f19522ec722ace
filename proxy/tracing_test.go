package proxy

import (
	"bufio"
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonv1 "go.opentelemetry.io/proto/otlp/common/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func TestParseTraceParent(t *testing.T) {
	const good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tp, ok := parseTraceParent([]byte(good))
	if !ok || !tp.sampled() || formatTraceParent(tp.trace, tp.parent, tp.flags) != good {
		t.Fatalf("%s: %+v %v", good, tp, ok)
	}
	for _, bad := range []string{
		"",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",     // short
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",    // upper case
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",    // zero trace
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",    // zero parent
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // version ff
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx", // 00 with more
		"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
	} {
		if _, ok := parseTraceParent([]byte(bad)); ok {
			t.Errorf("%q parsed", bad)
		}
	}
	// A later version may carry more, after a dash.
	if _, ok := parseTraceParent([]byte("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")); !ok {
		t.Error("version 01 with more fields refused")
	}
}

func TestBeginSpan(t *testing.T) {
	p := &Proxy{}
	p.settings.Store(&meshfedv1.MeshSettings{})
	const in = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

	// Sampling off: nothing starts, a sampled caller is still followed.
	if s, out := p.beginSpan(nil, spanKindClient); s != nil || out != "" {
		t.Fatalf("sampling 0 started %v %q", s, out)
	}
	s, out := p.beginSpan([]byte(in), spanKindServer)
	if s == nil || !s.hasParent || s.parent != [8]byte{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7} {
		t.Fatalf("continued span %+v", s)
	}
	want := "00-4bf92f3577b34da6a3ce929d0e0e4736-" + hexID(s.id) + "-01"
	if out != want {
		t.Fatalf("forwarded %q, want %q", out, want)
	}
	// An unsampled caller: forwarded as it is, no span.
	if s, out := p.beginSpan([]byte(strings.TrimSuffix(in, "01")+"00"), spanKindServer); s != nil || out != "" {
		t.Fatalf("unsampled caller: %v %q", s, out)
	}

	p.settings.Store(&meshfedv1.MeshSettings{TraceSampling: 1})
	s, out = p.beginSpan([]byte("garbage"), spanKindClient)
	if s == nil || s.hasParent {
		t.Fatalf("sampling 1 with an invalid traceparent: %+v", s)
	}
	tp, ok := parseTraceParent([]byte(out))
	if !ok || tp.trace != s.trace || tp.parent != s.id || !tp.sampled() {
		t.Fatalf("new trace forwarded as %q (%+v)", out, s)
	}
	// Half the requests at 0.5.
	p.settings.Store(&meshfedv1.MeshSettings{TraceSampling: 0.5})
	n := 0
	for range 4000 {
		if s, _ := p.beginSpan(nil, spanKindClient); s != nil {
			n++
		}
	}
	if n < 1700 || n > 2300 {
		t.Fatalf("sampled %d of 4000 at 0.5", n)
	}
}

func hexID(id [8]byte) string {
	const digits = "0123456789abcdef"
	var b strings.Builder
	for _, c := range id {
		b.WriteByte(digits[c>>4])
		b.WriteByte(digits[c&15])
	}
	return b.String()
}

func TestH1TraceParentReplaced(t *testing.T) {
	raw := "GET /x HTTP/1.1\r\nHost: a\r\nTraceParent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nTracestate: k=v\r\n\r\n"
	var h h1Head
	if err := h.readHead(bufio.NewReader(strings.NewReader(raw)), true); err != nil {
		t.Fatal(err)
	}
	if string(h.traceparent) != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" {
		t.Fatalf("traceparent %q", h.traceparent)
	}
	h.traceOut = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	h.writeRequestHead(bw, "")
	bw.Flush()
	got := out.String()
	if strings.Count(strings.ToLower(got), "traceparent:") != 1 || !strings.Contains(got, "traceparent: "+h.traceOut+"\r\n") || !strings.Contains(got, "Tracestate: k=v\r\n") {
		t.Fatalf("forwarded head:\n%s", got)
	}
	// Without traceOut the field goes through as it came.
	h.traceOut = ""
	out.Reset()
	h.writeRequestHead(bw, "")
	bw.Flush()
	if !strings.Contains(out.String(), "TraceParent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n") {
		t.Fatalf("forwarded head:\n%s", out.String())
	}
}

// TestEncodeSpansDecodesAsOTLP checks the hand-written encoding against
// the OTLP protobuf definitions.
func TestEncodeSpansDecodesAsOTLP(t *testing.T) {
	p := &Proxy{cfg: Config{Service: "web", Namespace: "shop", Instance: "web-1"}}
	start := time.Unix(1700000000, 5)
	s := &span{trace: newTraceID(), id: newSpanID(), parent: newSpanID(), hasParent: true, kind: spanKindClient,
		name: "GET", start: start, end: start.Add(time.Millisecond), method: "GET", path: "/x", code: 503,
		dest: "shop/api", source: "spiffe://td/ns/shop/sa/web", upstream: "10.0.0.1:15443"}
	raw := p.encodeSpans([]*span{s})
	var req collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		t.Fatal(err)
	}
	rs := req.GetResourceSpans()
	if len(rs) != 1 || len(rs[0].GetScopeSpans()) != 1 || len(rs[0].GetScopeSpans()[0].GetSpans()) != 1 {
		t.Fatalf("shape: %v", &req)
	}
	res := map[string]string{}
	for _, kv := range rs[0].GetResource().GetAttributes() {
		res[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	if res["service.name"] != "web" || res["service.namespace"] != "shop" || res["service.instance.id"] != "web-1" {
		t.Errorf("resource %v", res)
	}
	got := rs[0].GetScopeSpans()[0].GetSpans()[0]
	if !bytes.Equal(got.GetTraceId(), s.trace[:]) || !bytes.Equal(got.GetSpanId(), s.id[:]) || !bytes.Equal(got.GetParentSpanId(), s.parent[:]) ||
		got.GetName() != "GET" || got.GetKind() != tracev1.Span_SPAN_KIND_CLIENT ||
		got.GetStartTimeUnixNano() != uint64(start.UnixNano()) || got.GetEndTimeUnixNano() != uint64(start.Add(time.Millisecond).UnixNano()) ||
		got.GetStatus().GetCode() != tracev1.Status_STATUS_CODE_ERROR {
		t.Errorf("span %v", got)
	}
	attrs := map[string]any{}
	for _, kv := range got.GetAttributes() {
		if _, ok := kv.GetValue().GetValue().(*commonv1.AnyValue_IntValue); ok {
			attrs[kv.GetKey()] = kv.GetValue().GetIntValue()
		} else {
			attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
		}
	}
	want := map[string]any{"http.request.method": "GET", "url.path": "/x", "http.response.status_code": int64(503),
		"meshfed.destination": "shop/api", "meshfed.source": "spiffe://td/ns/shop/sa/web", "meshfed.upstream": "10.0.0.1:15443"}
	if !reflect.DeepEqual(attrs, want) {
		t.Errorf("attributes %v, want %v", attrs, want)
	}
}

func TestOTLPTarget(t *testing.T) {
	for _, c := range []struct {
		in, addr string
		tls, bad bool
	}{
		{in: "collector.obs:4317", addr: "collector.obs:4317"},
		{in: "http://[::1]:4317/v1", addr: "[::1]:4317"},
		{in: "https://otel.example.org:4317", addr: "otel.example.org:4317", tls: true},
		{in: "ftp://x:1", bad: true},
		{in: "http://", bad: true},
	} {
		creds, addr, err := otlpTarget(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("%q: accepted", c.in)
			}
			continue
		}
		if err != nil || addr != c.addr || (creds.Info().SecurityProtocol == "tls") != c.tls {
			t.Errorf("%q: %q %v %v", c.in, addr, creds.Info().SecurityProtocol, err)
		}
	}
}
