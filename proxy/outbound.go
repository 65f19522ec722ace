package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

const (
	// connectTimeout bounds a connection to an upstream endpoint.
	connectTimeout = 5 * time.Second
	// ejectFor is how long an endpoint that refused a connection is
	// skipped (unless every endpoint is).
	ejectFor = 5 * time.Second
	// maxReplayBody is the largest request body kept so that a request
	// can be retried on another endpoint after a connection failure.
	maxReplayBody = 64 << 10
)

// endpoint is one place an upstream's traffic can go.
type endpoint struct {
	addr     string
	id       spiffeid.ID
	cluster  string
	inflight atomic.Int64
	// pool holds kept-alive HTTP/1.1 connections.
	pool connPool
	// ejectedUntil (Unix nanoseconds) is set after a failed connection,
	// or after the circuit breaker's consecutive errors.
	ejectedUntil atomic.Int64
	// errs counts consecutive errors, ejections consecutive ejections.
	errs, ejections atomic.Int64
	// sent and failed count requests (and TCP connections) since the last
	// heartbeat, for the control plane's topology.
	sent, failed atomic.Uint64
	// remote is the cluster of an endpoint imported from a peer; empty for
	// a local one.
	remote  string
	version string
}

// endpointSet is one resolution of an upstream, immutable once built.
// A proxy may follow a thousand upstreams of one or two endpoints each,
// so small sets are plain slices; the address index exists only for
// large ones.
type endpointSet struct {
	// groups are the clusters in failover order, each with at least one
	// endpoint.
	groups [][]*endpoint
	// all is every endpoint, in the order of groups.
	all []*endpoint
	// byAddr indexes all when it is longer than smallSet.
	byAddr map[string]*endpoint
	// ids are the identities the upstream's servers may present.
	ids      []spiffeid.ID
	protocol meshfedv1.Protocol
	healthy  int
}

// smallSet is the size up to which an endpoint set is searched rather
// than indexed.
const smallSet = 8

// lookup returns the endpoint at addr, or nil.
func (s *endpointSet) lookup(addr string) *endpoint {
	if s == nil {
		return nil
	}
	if s.byAddr != nil {
		return s.byAddr[addr]
	}
	for _, ep := range s.all {
		if ep.addr == addr {
			return ep
		}
	}
	return nil
}

// add appends ep (in the current group, which the caller appends to
// groups) unless its address is already in the set.
func (s *endpointSet) add(ep *endpoint) bool {
	if s.lookup(ep.addr) != nil {
		return false
	}
	s.all = append(s.all, ep)
	if s.byAddr != nil {
		s.byAddr[ep.addr] = ep
	} else if len(s.all) > smallSet {
		s.byAddr = make(map[string]*endpoint, len(s.all))
		for _, e := range s.all {
			s.byAddr[e.addr] = e
		}
	}
	if !slices.Contains(s.ids, ep.id) {
		s.ids = append(s.ids, ep.id)
	}
	return true
}

// upstream is one --upstream: a local listener and the endpoints behind it.
type upstream struct {
	p    *Proxy
	cfg  Upstream
	dest string
	ln   *groupListener

	set      atomic.Pointer[endpointSet]
	resolved atomic.Bool
	// setChanged is closed and replaced when the first endpoints arrive,
	// so that early connections wait for them.
	waitMu sync.Mutex
	waitCh chan struct{}
	rr     atomic.Uint64
	// route is the destination's compiled traffic policy.
	route atomic.Pointer[route]
	// inflight counts requests in flight to the destination, and conns
	// its HTTP/1.1 and TCP connections, for circuit breaking.
	inflight atomic.Int64
	conns    connLimiter

	// HTTP and gRPC: a server for the app's requests and transports to the
	// endpoints (HTTP/1.1 for http, HTTP/2 for grpc, both over mTLS); nil
	// until the app's first HTTP connection.
	http atomic.Pointer[httpSide]

	h1 h1Tracker

	mu      sync.Mutex
	tcp     map[net.Conn]struct{}
	tcpWG   sync.WaitGroup
	closing bool
}

func newUpstream(p *Proxy, cfg Upstream) *upstream {
	u := &upstream{p: p, cfg: cfg, dest: cfg.Namespace + "/" + cfg.Service, waitCh: make(chan struct{}), tcp: map[net.Conn]struct{}{}}
	u.route.Store(defaultRoute)
	return u
}

// httpSide is what an upstream needs for HTTP and gRPC, made when the app
// opens its first such connection: a proxy with a thousand upstreams that
// it rarely calls holds little for each.
type httpSide struct {
	ln  *chanListener
	srv *http.Server
	rp  *httputil.ReverseProxy
	h1  *http.Transport
	h2  *http.Transport
}

func (u *upstream) newHTTPSide() *httpSide {
	hs := &httpSide{h1: u.transport(false), h2: u.transport(true)}
	hs.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// The endpoint is chosen per attempt by roundTrip.
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = u.dest
			pr.Out.Host = pr.In.Host
		},
		Transport:    roundTripperFunc(u.roundTrip),
		ErrorHandler: u.proxyError,
		ErrorLog:     discardLogger(),
	}
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	hs.srv = &http.Server{Handler: u, Protocols: protos, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 5 * time.Minute, ErrorLog: discardLogger()}
	return hs
}

func (hs *httpSide) closeIdle() {
	hs.h1.CloseIdleConnections()
	hs.h2.CloseIdleConnections()
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (u *upstream) transport(h2 bool) *http.Transport {
	t := &http.Transport{
		DialTLSContext:      func(ctx context.Context, _, addr string) (net.Conn, error) { return u.dialTLS(ctx, addr, h2) },
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	protos := new(http.Protocols)
	if h2 {
		protos.SetHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	t.Protocols = protos
	return t
}

func (u *upstream) listen() error {
	ln, err := u.p.listeners.listen(u.cfg.Listen, u.accept)
	if err != nil {
		return fmt.Errorf("--upstream %s=%s: %w", u.cfg.Service, u.cfg.Listen, err)
	}
	u.ln = ln
	return nil
}

// watch follows the upstream's resolution.
func (u *upstream) watch(ctx context.Context) error {
	st, err := u.p.control().catalog.WatchResolve(ctx, &meshfedv1.ResolveRequest{
		Namespace: u.cfg.Namespace, Name: u.cfg.Service, Locality: u.p.cfg.Locality,
	})
	if err != nil {
		return err
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		u.update(resp)
	}
}

// update installs a new resolution, keeping the in-flight counts and
// ejections of endpoints that stay.
func (u *upstream) update(resp *meshfedv1.ResolveResponse) {
	old := u.set.Load()
	set := &endpointSet{protocol: resp.GetService().GetProtocol()}
	for _, cl := range resp.GetClusters() {
		var group []*endpoint
		for _, e := range cl.GetEndpoints() {
			if e.GetHealth() != meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY && e.GetHealth() != meshfedv1.HealthStatus_HEALTH_STATUS_UNSPECIFIED {
				continue
			}
			id, err := spiffeid.FromString(e.GetSpiffeId())
			if err != nil {
				continue
			}
			addr := net.JoinHostPort(e.GetAddress(), strconv.Itoa(int(e.GetPort())))
			ep := &endpoint{addr: addr, id: id, cluster: cl.GetCluster(), version: e.GetVersion()}
			if cl.GetPeer() != "" {
				ep.remote = cl.GetCluster()
			}
			if prev := old.lookup(addr); prev != nil && prev.id == id && prev.version == ep.version && prev.remote == ep.remote {
				ep = prev
			}
			if !set.add(ep) {
				continue
			}
			group = append(group, ep)
		}
		if len(group) > 0 {
			set.groups = append(set.groups, group)
			set.healthy += len(group)
		}
	}
	u.set.Store(set)
	u.p.m.healthy.WithLabelValues(u.cfg.key()).Set(float64(set.healthy))
	if resp.GetService() != nil && !u.resolved.Load() {
		u.resolved.Store(true)
		u.waitMu.Lock()
		close(u.waitCh)
		u.waitMu.Unlock()
	}
	// Connections to endpoints that left stay open while in use; idle
	// ones are dropped.
	if old != nil {
		for _, ep := range old.all {
			if set.lookup(ep.addr) != ep {
				ep.pool.closeAll()
				if hs := u.http.Load(); hs != nil {
					hs.closeIdle()
				}
			}
		}
	}
}

// current waits (up to the connect timeout) for the first resolution.
func (u *upstream) current(ctx context.Context) (*endpointSet, error) {
	if s := u.set.Load(); s != nil && u.resolved.Load() {
		return s, nil
	}
	t := time.NewTimer(connectTimeout)
	defer t.Stop()
	select {
	case <-u.waitCh:
		return u.set.Load(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("no endpoints of %s known yet", u.dest)
	}
}

var errNoEndpoint = errors.New("no healthy endpoint")

// pick chooses an endpoint: the first cluster (in failover order) with an
// endpoint that is not ejected, then round robin or least request within
// it. With a version (from a traffic split) only that version's endpoints
// are candidates while there are any. avoid is skipped when possible.
func (u *upstream) pick(set *endpointSet, avoid *endpoint, version string) (*endpoint, error) {
	now := time.Now().UnixNano()
	for pass := 0; pass < 3; pass++ {
		if pass == 0 && version == "" {
			continue
		}
		for _, g := range set.groups {
			cands := make([]*endpoint, 0, len(g))
			for _, e := range g {
				if e == avoid || (pass == 0 && e.version != version) {
					continue
				}
				if pass < 2 && e.ejectedUntil.Load() > now {
					continue
				}
				cands = append(cands, e)
			}
			if len(cands) == 0 {
				continue
			}
			return u.choose(cands), nil
		}
	}
	if avoid != nil {
		return avoid, nil
	}
	return nil, fmt.Errorf("%w of %s", errNoEndpoint, u.dest)
}

func (u *upstream) choose(c []*endpoint) *endpoint {
	if len(c) == 1 {
		return c[0]
	}
	lb := defaultRoute.lb
	if rt := u.route.Load(); rt != nil {
		lb = rt.lb
	}
	switch lb {
	case meshfedv1.LoadBalancer_LOAD_BALANCER_LEAST_REQUEST:
		// The better of two random choices: near least-request without
		// herding on one endpoint.
		a, b := c[rand.IntN(len(c))], c[rand.IntN(len(c))]
		if b.inflight.Load() < a.inflight.Load() {
			return b
		}
		return a
	case meshfedv1.LoadBalancer_LOAD_BALANCER_RANDOM:
		return c[rand.IntN(len(c))]
	}
	return c[u.rr.Add(1)%uint64(len(c))]
}

// dialTLS connects to an endpoint and checks that it presents the identity
// it was resolved with (or, for an address no longer resolved, one of the
// upstream's identities).
func (u *upstream) dialTLS(ctx context.Context, addr string, h2 bool) (net.Conn, error) {
	set := u.set.Load()
	var auth tlsconfig.Authorizer
	if ep := set.lookup(addr); ep != nil {
		auth = tlsconfig.AuthorizeID(ep.id)
	} else {
		ids := set.ids
		auth = func(id spiffeid.ID, _ [][]*x509.Certificate) error {
			if slices.Contains(ids, id) {
				return nil
			}
			return fmt.Errorf("%s is not an identity of %s", id, u.dest)
		}
	}
	cfg := tlsconfig.MTLSClientConfig(u.p.id, u.p.id, auth)
	cfg.MinVersion = tls.VersionTLS13
	if h2 {
		cfg.NextProtos = []string{"h2"}
	} else {
		cfg.NextProtos = []string{"http/1.1"}
	}
	d := net.Dialer{Timeout: u.route.Load().connectTimeout, KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &connectError{err}
	}
	raw = rawIO(raw)
	tc := tls.Client(raw, cfg)
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		u.p.m.handshakeFail.WithLabelValues("outbound").Inc()
		raw.Close()
		return nil, &connectError{fmt.Errorf("TLS handshake with %s: %w", addr, err)}
	}
	return tc, nil
}

// connectError marks a failure to connect: safe to retry elsewhere.
type connectError struct{ err error }

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// ServeHTTP forwards one of the app's requests.
func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rt := u.route.Load()
	// Keep small bodies so the request can be retried on another endpoint.
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength > 0 && r.ContentLength <= maxReplayBody {
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			http.Error(w, "reading the request body: "+err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(buf))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	} else if r.ContentLength == 0 {
		r.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
	} else if r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody {
		// A body of unknown length (gRPC, chunked): not read ahead, since
		// a stream may wait for answers before it ends; it is recorded as
		// the first attempt sends it, and can be sent again once it has
		// ended within maxReplayBody.
		rb := &replayBody{ReadCloser: r.Body}
		r.Body = rb
		r.GetBody = rb.replay
	}
	sw := &statusWriter{ResponseWriter: w}
	var ep *endpoint
	sp := u.beginHTTPSpan(r, spanKindClient)
	defer func() {
		dur := time.Since(start)
		u.p.m.observe("outbound", u.p.self.String(), u.dest, sw.code(), dur)
		if ep != nil {
			ep.count(sw.code())
		}
		if sp != nil {
			sp.source = u.p.self.String()
			if ep != nil {
				sp.upstream = ep.addr
			}
			u.p.endSpan(sp, sw.code())
		}
		if u.p.accessLogs() {
			e := &accessEntry{Direction: "outbound", Protocol: "http", Source: u.p.self.String(), Dest: u.dest,
				Method: r.Method, Path: r.URL.EscapedPath(), Code: sw.code(), Duration: ms(dur)}
			if isGRPC(r) {
				e.Protocol = "grpc"
			}
			if ep != nil {
				e.Upstream = ep.addr
			}
			u.p.acc.write(e, start)
		}
	}()
	if rt.hasFault() {
		abort, delay := rt.fault()
		if abort != 0 {
			sw.Header().Set("X-Meshfed-Fault", "abort")
			refuseHTTP(sw, r, abort, grpcCodeForHTTP(abort), "fault injected")
			return
		}
		if delay > 0 && !sleepCtx(r.Context(), delay) {
			return
		}
	}
	if rt.maxRequests > 0 {
		if u.inflight.Add(1) > rt.maxRequests {
			u.inflight.Add(-1)
			u.p.m.overflow.WithLabelValues(u.cfg.key()).Inc()
			sw.Header().Set("X-Meshfed-Overloaded", "true")
			refuseHTTP(sw, r, http.StatusServiceUnavailable, 14, "upstream "+u.dest+": too many requests in flight (circuit breaker)") // UNAVAILABLE
			return
		}
		defer u.inflight.Add(-1)
	}
	ctx := context.WithValue(r.Context(), pickedKey{}, &ep)
	ctx = context.WithValue(ctx, routeKey{}, rt)
	if d := rt.requestTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	u.http.Load().rp.ServeHTTP(sw, r.WithContext(ctx))
}

type pickedKey struct{}

type routeKey struct{}

// beginHTTPSpan decides whether a request through net/http is traced
// and, when it is, replaces its traceparent.
func (u *upstream) beginHTTPSpan(r *http.Request, kind int) *span {
	return beginHTTPSpan(u.p, r, kind, u.dest)
}

func beginHTTPSpan(p *Proxy, r *http.Request, kind int, dest string) *span {
	var in []byte
	if v := r.Header.Get("Traceparent"); v != "" {
		in = []byte(v)
	}
	sp, out := p.beginSpan(in, kind)
	if out != "" {
		r.Header.Set("Traceparent", out)
	}
	if sp != nil {
		sp.method, sp.path, sp.dest = r.Method, r.URL.EscapedPath(), dest
		sp.name = spanName(r.Method, sp.path, isGRPC(r))
	}
	return sp
}

// grpcCodeForHTTP maps an HTTP status to the gRPC code a client would
// derive from it (gRPC's HTTP-to-gRPC status mapping).
func grpcCodeForHTTP(code int) int {
	switch code {
	case http.StatusBadRequest:
		return 13 // INTERNAL
	case http.StatusUnauthorized:
		return 16 // UNAUTHENTICATED
	case http.StatusForbidden:
		return 7 // PERMISSION_DENIED
	case http.StatusNotFound:
		return 12 // UNIMPLEMENTED
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

// roundTrip sends one request to an endpoint, and again (to another
// endpoint when there is one) as the traffic policy's retries say, when
// the body can be sent again.
func (u *upstream) roundTrip(r *http.Request) (*http.Response, error) {
	rt, _ := r.Context().Value(routeKey{}).(*route)
	if rt == nil {
		rt = u.route.Load()
	}
	set, err := u.current(r.Context())
	if err != nil {
		return nil, err
	}
	grpc := set.protocol == meshfedv1.Protocol_PROTOCOL_GRPC || isGRPC(r)
	hs := u.http.Load()
	tr := hs.h1
	if grpc {
		tr = hs.h2
	}
	version := rt.version()
	var last *endpoint
	var lastErr error
	var nextBody io.ReadCloser
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			if attempt > rt.attempts || r.GetBody == nil {
				break
			}
			if !sleepCtx(r.Context(), backoff(attempt-1)) {
				return nil, r.Context().Err()
			}
			set = u.set.Load()
		}
		ep, err := u.pick(set, last, version)
		if err != nil {
			return nil, err
		}
		last = ep
		if p, ok := r.Context().Value(pickedKey{}).(**endpoint); ok {
			*p = ep
		}
		req := r
		if attempt > 1 {
			body := nextBody
			if body == nil {
				if body, err = r.GetBody(); err != nil {
					// Not replayable after all: the last failure stands.
					return nil, lastErr
				}
			}
			nextBody = nil
			req = r.Clone(r.Context())
			req.Body = body
		}
		// The per-try timeout runs until the response head.
		var timedOut atomic.Bool
		var stop func() bool
		cancel := context.CancelFunc(func() {})
		if rt.perTry > 0 {
			var actx context.Context
			actx, cancel = context.WithCancel(req.Context())
			stop = time.AfterFunc(rt.perTry, func() { timedOut.Store(true); cancel() }).Stop
			req = req.WithContext(actx)
		}
		req.URL.Host = ep.addr
		ep.inflight.Add(1)
		resp, err := tr.RoundTrip(req)
		ep.inflight.Add(-1)
		if stop != nil {
			stop()
		}
		if err == nil {
			gs := -1
			if v := resp.Header.Get("Grpc-Status"); v != "" {
				gs, _ = strconv.Atoi(v)
			}
			if resp.StatusCode >= 500 || gs == 14 {
				u.failed(rt, set, ep, false)
			} else {
				u.succeeded(ep)
			}
			if attempt < rt.attempts && r.GetBody != nil && rt.retryOn.retryStatus(resp.StatusCode, gs) {
				// Only when the request can be sent again is this
				// answer dropped.
				if body, gerr := r.GetBody(); gerr == nil {
					nextBody = body
					_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxReplayBody))
					resp.Body.Close()
					cancel()
					lastErr = fmt.Errorf("%s answered %d", ep.addr, resp.StatusCode)
					continue
				}
			}
			resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
			return resp, nil
		}
		cancel()
		lastErr = err
		var ce *connectError
		isConnect := errors.As(err, &ce)
		u.failed(rt, set, ep, isConnect)
		if r.Context().Err() != nil {
			return nil, r.Context().Err()
		}
		switch {
		case timedOut.Load():
			lastErr = fmt.Errorf("%s: no response within the per-try timeout %s: %w", ep.addr, rt.perTry, context.DeadlineExceeded)
			if !rt.retryOn.retryTimeout() {
				return nil, lastErr
			}
		case isConnect && rt.retryOn&retryConnect == 0, !isConnect && rt.retryOn&retryReset == 0:
			return nil, err
		}
		u.p.log.Debug("retrying on another endpoint", "upstream", u.dest, "endpoint", ep.addr, "err", err)
	}
	return nil, lastErr
}

// replayBody records a request body of unknown length as it is sent, so
// that it can be sent again once it has ended within maxReplayBody.
type replayBody struct {
	io.ReadCloser
	mu   sync.Mutex
	buf  []byte
	eof  bool
	over bool
}

func (b *replayBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.mu.Lock()
	if !b.over {
		if len(b.buf)+n > maxReplayBody {
			b.over, b.buf = true, nil
		} else {
			b.buf = append(b.buf, p[:n]...)
		}
	}
	if err == io.EOF {
		b.eof = true
	}
	b.mu.Unlock()
	return n, err
}

var errNotReplayable = errors.New("the request body cannot be sent again")

// replay returns the body again when all of it has been recorded.
func (b *replayBody) replay() (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.eof || b.over {
		return nil, errNotReplayable
	}
	return io.NopCloser(bytes.NewReader(b.buf)), nil
}

// cancelOnClose releases an attempt's context with its response body.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// isTimeout reports whether err is a deadline running out.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// errOverflow marks a request refused by the circuit breaker.
var errOverflow = errors.New("circuit breaker open")

// failed counts an error of ep: a connection that could not be made
// (connect), one that failed before a response, or a 5xx answer. Without
// outlier ejection in the circuit breaker, an endpoint that refused a
// connection is skipped for ejectFor; with it, consecutive_errors in a row
// eject the endpoint for base_ejection_time times the ejections in a row
// (at most 10), within max_ejection_percent of the endpoints.
func (u *upstream) failed(rt *route, set *endpointSet, ep *endpoint, connect bool) {
	if connect {
		u.p.m.upstreamErr.WithLabelValues(u.cfg.key()).Inc()
	}
	now := time.Now()
	if rt.consecutive == 0 {
		if connect {
			ep.ejectedUntil.Store(now.Add(ejectFor).UnixNano())
		}
		return
	}
	if ep.errs.Add(1) < rt.consecutive || ep.ejectedUntil.Load() > now.UnixNano() {
		return
	}
	if !ejectionAllowed(set, rt.maxEjectPct, now.UnixNano()) {
		return
	}
	n := ep.ejections.Add(1)
	ep.errs.Store(0)
	d := rt.baseEject * time.Duration(min(n, maxEjectionFactor))
	ep.ejectedUntil.Store(now.Add(d).UnixNano())
	u.p.m.ejections.WithLabelValues(u.cfg.key()).Inc()
	u.p.log.Info("ejecting an endpoint", "upstream", u.dest, "endpoint", ep.addr, "for", d.String())
}

// succeeded resets ep's consecutive errors.
func (u *upstream) succeeded(ep *endpoint) {
	if ep.errs.Load() != 0 {
		ep.errs.Store(0)
	}
	if ep.ejections.Load() != 0 {
		ep.ejections.Store(0)
	}
}

func (u *upstream) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	u.p.log.Warn("upstream request failed", "upstream", u.dest, "err", err)
	if isGRPC(r) {
		writeGRPCStatus(w, 14, "upstream "+u.dest+": "+err.Error()) // UNAVAILABLE
		return
	}
	code := http.StatusBadGateway
	switch {
	case errors.Is(err, errNoEndpoint):
		code = http.StatusServiceUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		code = http.StatusGatewayTimeout
	}
	http.Error(w, "upstream "+u.dest+": "+err.Error(), code)
}

// accept takes one of the app's connections, on its own goroutine. The
// upstream's protocol decides how it is handled; until the first
// resolution is known, the connection waits for it (at most the connect
// timeout).
func (u *upstream) accept(c net.Conn) {
	c = rawIO(c)
	u.p.m.connections.WithLabelValues("outbound").Inc()
	set, err := u.current(context.Background())
	if err != nil {
		u.p.log.Warn("refusing a connection", "upstream", u.dest, "err", err)
		c.Close()
		return
	}
	switch set.protocol {
	case meshfedv1.Protocol_PROTOCOL_TCP:
		u.serveTCP(c)
	case meshfedv1.Protocol_PROTOCOL_HTTP:
		// HTTP/1.1 goes the direct way; h2c (its preface starts with
		// "PRI") through net/http.
		br := bufio.NewReaderSize(c, 4096)
		_ = c.SetReadDeadline(time.Now().Add(h1IdleTimeout))
		first, err := br.Peek(3)
		_ = c.SetReadDeadline(time.Time{})
		if err != nil {
			c.Close()
			return
		}
		if string(first) != "PRI" {
			u.serveH1(c, br)
			return
		}
		u.serveHTTP(&peekedConn{Conn: c, r: br})
	default:
		u.serveHTTP(c)
	}
}

// serveHTTP hands a connection to the upstream's net/http server, made on
// first use.
func (u *upstream) serveHTTP(c net.Conn) {
	u.mu.Lock()
	if u.closing {
		u.mu.Unlock()
		c.Close()
		return
	}
	hs := u.http.Load()
	if hs == nil {
		hs = u.newHTTPSide()
		hs.ln = newChanListener(u.ln.Addr())
		u.http.Store(hs)
		u.p.goFn(func() { _ = hs.srv.Serve(hs.ln) })
	}
	u.mu.Unlock()
	if !hs.ln.push(c) {
		c.Close()
	}
}

// serveTCP connects the app's connection to an endpoint over mTLS,
// trying other endpoints when one cannot be reached.
func (u *upstream) serveTCP(c net.Conn) {
	start := time.Now()
	u.mu.Lock()
	if u.closing {
		u.mu.Unlock()
		c.Close()
		return
	}
	u.tcp[c] = struct{}{}
	u.tcpWG.Add(1)
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		delete(u.tcp, c)
		u.mu.Unlock()
		u.tcpWG.Done()
	}()
	rt := u.route.Load()
	if !u.conns.tryOpen(rt.maxConns) {
		u.p.m.overflow.WithLabelValues(u.cfg.key()).Inc()
		u.p.log.Warn("refusing a connection: max_connections reached", "upstream", u.dest, "max", rt.maxConns)
		c.Close()
		u.p.m.observe("outbound", u.p.self.String(), u.dest, 0, time.Since(start))
		return
	}
	defer u.conns.closed()
	var last *endpoint
	var conn net.Conn
	var err error
	for attempt := 1; attempt <= max(rt.attempts, 1); attempt++ {
		var ep *endpoint
		set := u.set.Load()
		ep, err = u.pick(set, last, rt.version())
		if err != nil {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), rt.connectTimeout)
		conn, err = u.dialTLS(ctx, ep.addr, false)
		cancel()
		if err == nil {
			last = ep
			break
		}
		u.failed(rt, set, ep, true)
		last = ep
		if rt.retryOn&retryConnect == 0 {
			break
		}
	}
	if err != nil {
		u.p.log.Warn("upstream connection failed", "upstream", u.dest, "err", err)
		c.Close()
		u.p.m.observe("outbound", u.p.self.String(), u.dest, 0, time.Since(start))
		if last != nil {
			last.count(0)
		}
		return
	}
	last.count(http.StatusOK) // a connection made
	last.inflight.Add(1)
	pipe(c, conn)
	last.inflight.Add(-1)
	dur := time.Since(start)
	u.p.m.observe("outbound", u.p.self.String(), u.dest, 0, dur)
	if u.p.accessLogs() {
		u.p.acc.write(&accessEntry{Direction: "outbound", Protocol: "tcp", Source: u.p.self.String(), Dest: u.dest,
			Duration: ms(dur), Upstream: last.addr}, start)
	}
}

// shutdown stops accepting and waits for in-flight requests and
// connections until ctx ends.
func (u *upstream) shutdown(ctx context.Context) {
	u.ln.Close()
	u.mu.Lock()
	u.closing = true
	hs := u.http.Load()
	u.mu.Unlock()
	if hs != nil {
		hs.ln.Close()
	}
	if hs != nil {
		if err := hs.srv.Shutdown(ctx); err != nil {
			hs.srv.Close()
		}
	}
	u.h1.shutdown(ctx)
	done := make(chan struct{})
	go func() { u.tcpWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		u.mu.Lock()
		for c := range u.tcp {
			c.Close()
		}
		u.mu.Unlock()
		<-done
	}
	if hs != nil {
		hs.closeIdle()
	}
	if set := u.set.Load(); set != nil {
		for _, ep := range set.all {
			ep.pool.closeAll()
		}
	}
}
