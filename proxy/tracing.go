package proxy

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
)

// Tracing: the proxy takes part in W3C trace context
// (https://www.w3.org/TR/trace-context/). A request that arrives with a
// valid traceparent continues that trace; one without starts a trace as
// often as the mesh settings' trace_sampling says. Each proxy a sampled
// request passes records one span (CLIENT on the caller's side, SERVER on
// the destination's), forwards a traceparent whose parent is that span,
// and exports its spans to the mesh settings' otlp_endpoint with
// OTLP/gRPC. The spans are encoded here with protowire: the OTLP messages
// are few and small, and generated code for them would make the binary
// larger for every proxy.

const (
	spanKindServer = 2
	spanKindClient = 3

	// spanQueue bounds the spans waiting for export; more are dropped.
	spanQueue = 4096
	// exportBatch and exportEvery bound a batch's size and age.
	exportBatch = 512
	exportEvery = time.Second
	// exportTimeout bounds one export call.
	exportTimeout = 5 * time.Second
)

// traceParent is a parsed traceparent header.
type traceParent struct {
	trace  [16]byte
	parent [8]byte
	flags  byte
}

// parseTraceParent parses a version-00 traceparent (later versions are
// read the same way, as the spec asks, when at least as long). It refuses
// upper-case hex and all-zero IDs.
func parseTraceParent(v []byte) (traceParent, bool) {
	var tp traceParent
	if len(v) < 55 || (len(v) > 55 && (v[0] == '0' && v[1] == '0' || v[55] != '-')) {
		return tp, false
	}
	if v[2] != '-' || v[35] != '-' || v[52] != '-' || (v[0] == 'f' && v[1] == 'f') {
		return tp, false
	}
	var ver [1]byte
	if !lowerHex(ver[:], v[0:2]) || !lowerHex(tp.trace[:], v[3:35]) || !lowerHex(tp.parent[:], v[36:52]) {
		return tp, false
	}
	var fl [1]byte
	if !lowerHex(fl[:], v[53:55]) {
		return tp, false
	}
	tp.flags = fl[0]
	if tp.trace == ([16]byte{}) || tp.parent == ([8]byte{}) {
		return tp, false
	}
	return tp, true
}

func lowerHex(dst, src []byte) bool {
	for _, c := range src {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	_, err := hex.Decode(dst, src)
	return err == nil
}

func (tp traceParent) sampled() bool { return tp.flags&1 == 1 }

// header formats tp as a version-00 traceparent with parent as its parent.
func formatTraceParent(trace [16]byte, parent [8]byte, flags byte) string {
	var b [55]byte
	b[0], b[1], b[2] = '0', '0', '-'
	hex.Encode(b[3:35], trace[:])
	b[35] = '-'
	hex.Encode(b[36:52], parent[:])
	b[52] = '-'
	hex.Encode(b[53:55], []byte{flags})
	return string(b[:])
}

// span is one recorded span.
type span struct {
	trace      [16]byte
	id, parent [8]byte
	hasParent  bool
	kind       int
	name       string
	start, end time.Time
	method     string
	path       string
	code       int
	dest       string
	source     string
	upstream   string
}

// beginSpan decides whether a request is traced. in is its traceparent
// (nil when absent). It returns the span to record (nil when not sampled)
// and the traceparent to forward instead of in ("" to forward the request's
// own, or none).
func (p *Proxy) beginSpan(in []byte, kind int) (*span, string) {
	if tp, ok := parseTraceParent(in); ok {
		if !tp.sampled() {
			return nil, ""
		}
		s := &span{trace: tp.trace, parent: tp.parent, hasParent: true, id: newSpanID(), kind: kind, start: time.Now()}
		return s, formatTraceParent(s.trace, s.id, tp.flags)
	}
	rate := p.settings.Load().GetTraceSampling()
	if !(rate > 0) || (rate < 1 && rand.Float64() >= rate) {
		return nil, ""
	}
	s := &span{trace: newTraceID(), id: newSpanID(), kind: kind, start: time.Now()}
	return s, formatTraceParent(s.trace, s.id, 1)
}

func newTraceID() (id [16]byte) {
	for id == ([16]byte{}) {
		lo, hi := rand.Uint64(), rand.Uint64()
		for i := range 8 {
			id[i], id[8+i] = byte(hi>>(8*i)), byte(lo>>(8*i))
		}
	}
	return id
}

func newSpanID() (id [8]byte) {
	for id == ([8]byte{}) {
		v := rand.Uint64()
		for i := range 8 {
			id[i] = byte(v >> (8 * i))
		}
	}
	return id
}

// endSpan finishes s (nil: nothing) and queues it for export.
func (p *Proxy) endSpan(s *span, code int) {
	if s == nil {
		return
	}
	s.end = time.Now()
	s.code = code
	if s.name == "" {
		s.name = s.method
	}
	p.tracer.queue(s)
}

// spanName is a request's span name: the gRPC method for gRPC, else the
// HTTP method (a path would make too many distinct names).
func spanName(method, path string, grpcCall bool) string {
	if grpcCall {
		return strings.TrimPrefix(path, "/")
	}
	return method
}

// tracer queues spans and exports them in batches.
type tracer struct {
	p      *Proxy
	mu     sync.Mutex
	ch     chan *span
	start  sync.Once
	target string
	conn   *grpc.ClientConn
}

func (t *tracer) queue(s *span) {
	t.start.Do(func() {
		t.ch = make(chan *span, spanQueue)
		t.p.goFn(func() { t.run(t.p.runCtx) })
	})
	select {
	case t.ch <- s:
	default:
		t.p.m.spansDropped.WithLabelValues("queue full").Inc()
	}
}

func (t *tracer) run(ctx context.Context) {
	defer func() {
		t.mu.Lock()
		if t.conn != nil {
			t.conn.Close()
		}
		t.mu.Unlock()
	}()
	// A batch goes out when it is full or exportEvery after its first
	// span; an idle proxy has no timer running.
	var batch []*span
	var timer *time.Timer
	var flush <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-t.ch:
			batch = append(batch, s)
			if len(batch) == 1 {
				timer = time.NewTimer(exportEvery)
				flush = timer.C
			}
			if len(batch) < exportBatch {
				continue
			}
			timer.Stop()
		case <-flush:
		}
		flush = nil
		t.export(ctx, batch)
		batch = batch[:0]
	}
}

// export sends a batch to the current OTLP endpoint.
func (t *tracer) export(ctx context.Context, batch []*span) {
	endpoint := t.p.settings.Load().GetOtlpEndpoint()
	if endpoint == "" {
		t.p.m.spansDropped.WithLabelValues("no endpoint").Add(uint64(len(batch)))
		return
	}
	conn, err := t.connect(endpoint)
	if err != nil {
		t.p.log.Warn("trace export", "endpoint", endpoint, "err", err)
		t.p.m.spansDropped.WithLabelValues("export failed").Add(uint64(len(batch)))
		return
	}
	req := t.p.encodeSpans(batch)
	cctx, cancel := context.WithTimeout(ctx, exportTimeout)
	defer cancel()
	var resp rawMessage
	err = conn.Invoke(cctx, "/opentelemetry.proto.collector.trace.v1.TraceService/Export", &req, &resp, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		t.p.log.Warn("trace export", "endpoint", endpoint, "spans", len(batch), "err", err)
		t.p.m.spansDropped.WithLabelValues("export failed").Add(uint64(len(batch)))
		return
	}
	t.p.m.spansExported.WithLabelValues().Add(uint64(len(batch)))
}

// connect returns a connection to endpoint: "host:port" or "http://..."
// is plain gRPC, "https://..." gRPC over TLS with the system's roots.
func (t *tracer) connect(endpoint string) (*grpc.ClientConn, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conn != nil && t.target == endpoint {
		return t.conn, nil
	}
	if t.conn != nil {
		t.conn.Close()
		t.conn = nil
	}
	creds, addr, err := otlpTarget(endpoint)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	t.conn, t.target = conn, endpoint
	return conn, nil
}

// otlpTarget turns an otlp_endpoint into a gRPC target and credentials:
// "host:port" and "http://host:port" are plain text, "https://host:port"
// is TLS with the system's roots; a URL's path is ignored (OTLP/gRPC has
// none).
func otlpTarget(endpoint string) (credentials.TransportCredentials, string, error) {
	if !strings.Contains(endpoint, "://") {
		return insecure.NewCredentials(), endpoint, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, "", fmt.Errorf("otlp_endpoint: %w", err)
	}
	if u.Host == "" {
		return nil, "", errors.New("otlp_endpoint has no host")
	}
	switch u.Scheme {
	case "http":
		return insecure.NewCredentials(), u.Host, nil
	case "https":
		return credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12}), u.Host, nil
	}
	return nil, "", fmt.Errorf("otlp_endpoint: scheme %q is neither http nor https", u.Scheme)
}

// rawMessage is an already encoded protobuf message.
type rawMessage []byte

// rawCodec passes rawMessages through; it is named "proto" so that the
// content type is application/grpc+proto.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(*rawMessage)
	if !ok {
		return nil, errors.New("rawCodec: not a rawMessage")
	}
	return *m, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	m, ok := v.(*rawMessage)
	if !ok {
		return errors.New("rawCodec: not a rawMessage")
	}
	*m = append((*m)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// encodeSpans encodes an OTLP ExportTraceServiceRequest of one resource
// (this proxy's workload) and one scope.
func (p *Proxy) encodeSpans(batch []*span) rawMessage {
	var res []byte
	res = appendKV(res, 1, "service.name", p.cfg.Service)
	res = appendKV(res, 1, "service.namespace", p.cfg.Namespace)
	if p.cfg.Instance != "" {
		res = appendKV(res, 1, "service.instance.id", p.cfg.Instance)
	}
	var scope []byte
	scope = protowire.AppendTag(scope, 1, protowire.BytesType)
	scope = protowire.AppendString(scope, "meshfed-proxy")
	var ss []byte
	ss = appendMessage(ss, 1, scope)
	for _, s := range batch {
		ss = appendMessage(ss, 2, encodeSpan(s))
	}
	var rs []byte
	rs = appendMessage(rs, 1, res)
	rs = appendMessage(rs, 2, ss)
	return appendMessage(nil, 1, rs)
}

func encodeSpan(s *span) []byte {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, s.trace[:])
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, s.id[:])
	if s.hasParent {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendBytes(b, s.parent[:])
	}
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	b = protowire.AppendString(b, s.name)
	b = protowire.AppendTag(b, 6, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(s.kind))
	b = protowire.AppendTag(b, 7, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, uint64(s.start.UnixNano()))
	b = protowire.AppendTag(b, 8, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, uint64(s.end.UnixNano()))
	b = appendKV(b, 9, "http.request.method", s.method)
	b = appendKV(b, 9, "url.path", s.path)
	b = appendIntKV(b, 9, "http.response.status_code", int64(s.code))
	b = appendKV(b, 9, "meshfed.destination", s.dest)
	if s.source != "" {
		b = appendKV(b, 9, "meshfed.source", s.source)
	}
	if s.upstream != "" {
		b = appendKV(b, 9, "meshfed.upstream", s.upstream)
	}
	if s.code >= 500 || s.code == 0 {
		var st []byte
		st = protowire.AppendTag(st, 3, protowire.VarintType)
		st = protowire.AppendVarint(st, 2) // STATUS_CODE_ERROR
		b = appendMessage(b, 15, st)
	}
	return b
}

// appendKV appends a KeyValue with a string AnyValue as field num.
func appendKV(b []byte, num protowire.Number, key, value string) []byte {
	var v []byte
	v = protowire.AppendTag(v, 1, protowire.BytesType) // string_value
	v = protowire.AppendString(v, value)
	return appendKeyValue(b, num, key, v)
}

// appendIntKV appends a KeyValue with an int AnyValue as field num.
func appendIntKV(b []byte, num protowire.Number, key string, value int64) []byte {
	var v []byte
	v = protowire.AppendTag(v, 3, protowire.VarintType) // int_value
	v = protowire.AppendVarint(v, uint64(value))
	return appendKeyValue(b, num, key, v)
}

func appendKeyValue(b []byte, num protowire.Number, key string, anyValue []byte) []byte {
	var kv []byte
	kv = protowire.AppendTag(kv, 1, protowire.BytesType)
	kv = protowire.AppendString(kv, key)
	kv = appendMessage(kv, 2, anyValue)
	return appendMessage(b, num, kv)
}

func appendMessage(b []byte, num protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}
