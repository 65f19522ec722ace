package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshfed/meshfed/proxy/authz"
)

// The HTTP/1.1 path. Requests of http services that arrive as HTTP/1.1
// (from the app on an upstream listener, or from a caller's proxy over
// TLS) are forwarded by one goroutine per connection that reads a request,
// writes it to a kept-alive connection on the other side, reads the
// response and writes it back. net/http's server and transport would hand
// each request between four goroutines; at a sidecar's request rates
// those handoffs cost more CPU than the forwarding itself. HTTP/2, h2c and
// gRPC go through net/http.

const (
	// h1IdleTimeout closes a client connection that sends nothing.
	h1IdleTimeout = 5 * time.Minute
	// poolIdle bounds how long a pooled connection to an endpoint is kept
	// unused, and poolSize how many are kept per endpoint.
	poolIdle = 60 * time.Second
	poolSize = 64
)

// h1Tracker follows the HTTP/1.1 connections of a listener so that a drain
// can close the idle ones and wait for the busy ones.
type h1Tracker struct {
	mu      sync.Mutex
	conns   map[*h1Conn]struct{}
	closing bool
	wg      sync.WaitGroup
}

type h1Conn struct {
	c      net.Conn
	active atomic.Bool
}

func (t *h1Tracker) add(c net.Conn) (*h1Conn, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closing {
		return nil, false
	}
	if t.conns == nil {
		t.conns = map[*h1Conn]struct{}{}
	}
	hc := &h1Conn{c: c}
	t.conns[hc] = struct{}{}
	t.wg.Add(1)
	return hc, true
}

func (t *h1Tracker) remove(hc *h1Conn) {
	t.mu.Lock()
	delete(t.conns, hc)
	t.mu.Unlock()
	t.wg.Done()
}

func (t *h1Tracker) isClosing() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closing
}

// shutdown closes idle connections, lets busy ones finish their request
// (their response says Connection: close) and waits until ctx ends, then
// closes what is left.
func (t *h1Tracker) shutdown(ctx context.Context) {
	t.mu.Lock()
	t.closing = true
	for hc := range t.conns {
		if !hc.active.Load() {
			hc.c.Close()
		}
	}
	t.mu.Unlock()
	done := make(chan struct{})
	go func() { t.wg.Wait(); close(done) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			t.mu.Lock()
			for hc := range t.conns {
				hc.c.Close()
			}
			t.mu.Unlock()
			<-done
			return
		case <-tick.C:
			// Connections that went idle since.
			t.mu.Lock()
			for hc := range t.conns {
				if !hc.active.Load() {
					hc.c.Close()
				}
			}
			t.mu.Unlock()
		}
	}
}

// writeH1Error answers with a short text body; extra are header names
// and values, in pairs.
func writeH1Error(bw *bufio.Writer, code int, msg string, close bool, extra ...string) error {
	body := msg + "\n"
	h := http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "X-Content-Type-Options": {"nosniff"}}
	for i := 0; i+1 < len(extra); i += 2 {
		h.Set(extra[i], extra[i+1])
	}
	resp := &http.Response{
		StatusCode: code, ProtoMajor: 1, ProtoMinor: 1,
		Header:        h,
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Close:         close,
	}
	if err := resp.Write(bw); err != nil {
		return err
	}
	return bw.Flush()
}

// readH1Request reads the next request head, closing a connection idle
// for too long.
func readH1Request(c net.Conn, br *bufio.Reader, h *h1Head) error {
	_ = c.SetReadDeadline(time.Now().Add(h1IdleTimeout))
	if _, err := br.Peek(1); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Time{})
	return h.readHead(br, true)
}

// answerBadRequest answers a request that could not be read, when the
// reason is the request's (a malformed or oversized head) rather than the
// connection's.
func answerBadRequest(bw *bufio.Writer, err error) {
	var he *h1Error
	switch {
	case errors.As(err, &he):
		_ = writeH1Error(bw, he.code, he.msg, true)
	case !quietError(err):
		_ = writeH1Error(bw, http.StatusBadRequest, "bad request", true)
	}
}

// readResponse reads the response to a request from an app or an
// endpoint, forwarding interim (1xx) responses to bw on the way.
func readResponse(br *bufio.Reader, bw *bufio.Writer, req, resp *h1Head) error {
	for {
		if err := resp.readHead(br, false); err != nil {
			return err
		}
		if resp.code == http.StatusSwitchingProtocols {
			return errors.New("101 Switching Protocols to a request without Upgrade")
		}
		if resp.code >= 200 {
			resp.responseBody(req.method)
			return nil
		}
		resp.writeResponseHead(bw, false, false)
		if err := bw.Flush(); err != nil {
			return err
		}
	}
}

// writeResponse writes a response and its body to the client; it reports
// whether the client's connection can carry another request.
func writeResponse(bw *bufio.Writer, from *bufio.Reader, req, resp *h1Head, closeClient bool) (bool, error) {
	// An HTTP/1.0 client cannot read a chunked body, nor a body that
	// ends when the connection does unless the connection then ends.
	dechunk := req.minor == 0 && resp.body == bodyChunked
	if dechunk || resp.body == bodyUntilClose || req.close {
		closeClient = true
	}
	resp.writeResponseHead(bw, closeClient, dechunk)
	err := copyBody(bw, from, resp, dechunk)
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return err == nil && !closeClient, err
}

func quietError(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) ||
		(errors.As(err, &ne) && ne.Timeout()) || strings.Contains(err.Error(), "connection reset")
}

// ---- inbound ----

// appConn is a kept-alive connection to the app.
type appConn struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

// serveH1 serves an HTTP/1.1 caller over TLS: each request is authorized
// and forwarded on a connection to the app that belongs to this caller's
// connection.
func (in *inbound) serveH1(tc net.Conn, caller spiffeid.ID) {
	hc, ok := in.h1.add(tc)
	if !ok {
		tc.Close()
		return
	}
	defer in.h1.remove(hc)
	defer tc.Close()
	var app *appConn
	defer func() {
		if app != nil {
			app.c.Close()
		}
	}()
	br := bufio.NewReaderSize(tc, 4096)
	bw := bufio.NewWriterSize(tc, 4096)
	source := principalLabel(caller)
	// The caller is the connection's: its header value is made once.
	xfcc := ""
	if !caller.IsZero() {
		xfcc = authz.XFCC(in.p.self, caller)
	}
	appAddr := net.JoinHostPort(in.p.cfg.AppHost, strconv.Itoa(in.p.cfg.AppPort))
	var req, resp h1Head
	for {
		if err := readH1Request(tc, br, &req); err != nil {
			answerBadRequest(bw, err)
			return
		}
		hc.active.Store(true)
		start := time.Now()
		closeAfter := req.close || in.h1.isClosing()
		d := in.p.engine.Load().Decide(authz.Request{Principal: caller, L7: true, Method: string(req.method), Path: string(req.path())})
		// A refused request (denied, or over the rate limit) is answered
		// here; a small body is skipped so the connection can serve the
		// next request, a larger one closes it.
		refuse := func(code int, msg string, extra ...string) bool {
			if req.body == bodyLength && req.length <= maxReplayBody {
				if _, err := br.Discard(int(req.length)); err != nil {
					closeAfter = true
				}
			} else if req.body != bodyNone {
				closeAfter = true
			}
			werr := writeH1Error(bw, code, msg, closeAfter, extra...)
			in.p.m.observe("inbound", source, in.dest, code, time.Since(start))
			return werr == nil && !closeAfter
		}
		if !d.Allow {
			keep := refuse(http.StatusForbidden, "RBAC: access denied")
			in.deny(caller, string(req.method), string(req.path()), d, start, tc.RemoteAddr().String())
			if !keep {
				return
			}
			hc.active.Store(false)
			continue
		}
		if !in.p.rateAllow(start) {
			if !refuse(http.StatusTooManyRequests, "rate limited", "Retry-After", "1") {
				return
			}
			hc.active.Store(false)
			continue
		}
		if continueIfExpected(bw, &req) != nil {
			return
		}
		if app == nil {
			c, err := net.DialTimeout("tcp", appAddr, 5*time.Second)
			if err != nil {
				in.p.log.Warn("connecting to the app", "err", err)
				_ = writeH1Error(bw, http.StatusBadGateway, "app unavailable", true)
				in.p.m.observe("inbound", source, in.dest, http.StatusBadGateway, time.Since(start))
				return
			}
			c = rawIO(c)
			app = &appConn{c: c, br: bufio.NewReaderSize(c, 4096), bw: bufio.NewWriterSize(c, 4096)}
		}
		sp, traceOut := in.p.beginSpan(req.traceparent, spanKindServer)
		req.traceOut = traceOut
		if xfcc != "" {
			req.writeRequestHead(app.bw, "X-Forwarded-Client-Cert", "X-Forwarded-Client-Cert", xfcc)
		} else {
			req.writeRequestHead(app.bw, "X-Forwarded-Client-Cert")
		}
		err := copyBody(app.bw, br, &req, false)
		var he *h1Error
		if err != nil && errors.As(err, &he) {
			// The caller's body was malformed.
			_ = writeH1Error(bw, he.code, he.msg, true)
			in.p.m.observe("inbound", source, in.dest, he.code, time.Since(start))
			return
		}
		if err == nil {
			err = app.bw.Flush()
		}
		if err == nil {
			err = readResponse(app.br, bw, &req, &resp)
		}
		if err != nil {
			in.p.log.Warn("forwarding to the app failed", "err", err, "path", string(req.path()))
			_ = writeH1Error(bw, http.StatusBadGateway, "app unavailable", true)
			in.p.m.observe("inbound", source, in.dest, http.StatusBadGateway, time.Since(start))
			if sp != nil {
				sp.method, sp.path, sp.dest, sp.source = string(req.method), string(req.path()), in.dest, source
				in.p.endSpan(sp, http.StatusBadGateway)
			}
			return
		}
		appClose := resp.close
		keep, werr := writeResponse(bw, app.br, &req, &resp, closeAfter)
		code := resp.code
		if appClose || werr != nil {
			app.c.Close()
			app = nil
		}
		dur := time.Since(start)
		in.p.m.observe("inbound", source, in.dest, code, dur)
		if sp != nil {
			sp.method, sp.path, sp.dest, sp.source = string(req.method), string(req.path()), in.dest, source
			in.p.endSpan(sp, code)
		}
		if in.p.accessLogs() {
			in.p.acc.write(&accessEntry{Direction: "inbound", Protocol: "http", Source: source, Dest: in.dest,
				Method: string(req.method), Path: string(req.path()), Code: code, Duration: ms(dur), Peer: tc.RemoteAddr().String(), Decision: "allow"}, start)
		}
		if !keep {
			return
		}
		hc.active.Store(false)
	}
}

// ---- outbound ----

// bodyBufs recycles the buffers that keep small request bodies for a
// retry, so that a request does not allocate one.
var bodyBufs = sync.Pool{New: func() any { b := make([]byte, 0, bodyBufSize); return &b }}

const bodyBufSize = 8 << 10

func getBodyBuf(n int) []byte {
	if n > bodyBufSize {
		return make([]byte, n)
	}
	return (*bodyBufs.Get().(*[]byte))[:n]
}

func putBodyBuf(b []byte) {
	if cap(b) == bodyBufSize {
		b = b[:0]
		bodyBufs.Put(&b)
	}
}

// upConn is a kept-alive mTLS connection to an endpoint.
type upConn struct {
	c        *tls.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	lastUsed time.Time
	// lim counts the connection for the circuit breaker.
	lim    *connLimiter
	closed bool
}

// close closes the connection and uncounts it.
func (uc *upConn) close() {
	if uc.closed {
		return
	}
	uc.closed = true
	uc.c.Close()
	uc.lim.closed()
}

type connPool struct {
	mu   sync.Mutex
	idle []*upConn
}

// get returns a pooled connection used within idle (0: poolIdle), or nil.
func (p *connPool) get(idle time.Duration) *upConn {
	if idle <= 0 {
		idle = poolIdle
	}
	now := time.Now()
	p.mu.Lock()
	var stale []*upConn
	var uc *upConn
	for len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if now.Sub(c.lastUsed) < idle {
			uc = c
			break
		}
		stale = append(stale, c)
	}
	p.mu.Unlock()
	for _, c := range stale {
		c.close()
	}
	return uc
}

func (p *connPool) put(uc *upConn) {
	uc.lastUsed = time.Now()
	p.mu.Lock()
	if len(p.idle) < poolSize {
		p.idle = append(p.idle, uc)
		uc.lim.freed()
		uc = nil
	}
	p.mu.Unlock()
	if uc != nil {
		uc.close()
	}
}

func (p *connPool) closeAll() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, uc := range idle {
		uc.close()
	}
}

// serveH1 forwards the app's HTTP/1.1 requests to the upstream's endpoints.
func (u *upstream) serveH1(c net.Conn, br *bufio.Reader) {
	hc, ok := u.h1.add(c)
	if !ok {
		c.Close()
		return
	}
	defer u.h1.remove(hc)
	defer c.Close()
	bw := bufio.NewWriterSize(c, 4096)
	var req, resp h1Head
	for {
		if err := readH1Request(c, br, &req); err != nil {
			answerBadRequest(bw, err)
			return
		}
		hc.active.Store(true)
		if !u.forwardH1(&req, &resp, br, bw) || u.h1.isClosing() {
			return
		}
		hc.active.Store(false)
	}
}

// forwardH1 forwards one request (its body read from br) and writes the
// response to bw; it reports whether the app's connection can carry
// another request. The destination's traffic policy decides faults,
// circuit breaking, the version, timeouts and retries.
func (u *upstream) forwardH1(req, resp *h1Head, br *bufio.Reader, bw *bufio.Writer) bool {
	start := time.Now()
	rt := u.route.Load()
	var ep *endpoint
	code := 0
	sp, traceOut := u.p.beginSpan(req.traceparent, spanKindClient)
	req.traceOut = traceOut
	defer func() {
		dur := time.Since(start)
		u.p.m.observe("outbound", u.p.self.String(), u.dest, code, dur)
		if ep != nil {
			ep.count(code)
		}
		if sp != nil {
			sp.method, sp.path, sp.dest, sp.source = string(req.method), string(req.path()), u.dest, u.p.self.String()
			if ep != nil {
				sp.upstream = ep.addr
			}
			u.p.endSpan(sp, code)
		}
		if u.p.accessLogs() {
			e := &accessEntry{Direction: "outbound", Protocol: "http", Source: u.p.self.String(), Dest: u.dest,
				Method: string(req.method), Path: string(req.path()), Code: code, Duration: ms(dur)}
			if ep != nil {
				e.Upstream = ep.addr
			}
			u.p.acc.write(e, start)
		}
	}()
	fail := func(c int, msg string) bool {
		code = c
		_ = writeH1Error(bw, c, "upstream "+u.dest+": "+msg, true)
		return false
	}
	if req.upgrade {
		return fail(http.StatusNotImplemented, "protocol upgrades are not supported")
	}
	if continueIfExpected(bw, req) != nil {
		return false
	}
	// Keep small bodies so the request can go to another endpoint after a
	// connection failure.
	var body []byte
	replay := req.body == bodyNone
	if req.body == bodyLength && req.length <= maxReplayBody {
		body = getBodyBuf(int(req.length))
		defer putBodyBuf(body)
		if _, err := io.ReadFull(br, body); err != nil {
			return fail(http.StatusBadRequest, "reading the request body: "+err.Error())
		}
		replay = true
	}
	// A request answered by the proxy itself keeps the app's connection
	// when its body has been read.
	answer := func(c int, msg string, extra ...string) bool {
		code = c
		keep := replay && !req.close && !u.h1.isClosing()
		if writeH1Error(bw, c, msg, !keep, extra...) != nil {
			return false
		}
		return keep
	}
	if rt.hasFault() {
		abort, delay := rt.fault()
		if abort != 0 {
			return answer(abort, "fault injected", "X-Meshfed-Fault", "abort")
		}
		if delay > 0 {
			time.Sleep(delay)
		}
	}
	if rt.maxRequests > 0 {
		if u.inflight.Add(1) > rt.maxRequests {
			u.inflight.Add(-1)
			u.p.m.overflow.WithLabelValues(u.cfg.key()).Inc()
			return answer(http.StatusServiceUnavailable, "upstream "+u.dest+": too many requests in flight (circuit breaker)", "X-Meshfed-Overloaded", "true")
		}
		defer u.inflight.Add(-1)
	}
	ctx := context.Background()
	if d := rt.requestTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	ctxDL, _ := ctx.Deadline()
	set, err := u.current(ctx)
	if err != nil {
		return fail(http.StatusServiceUnavailable, err.Error())
	}
	version := rt.version()
	var last *endpoint
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			if !replay || attempt > rt.attempts {
				break
			}
			if !sleepCtx(ctx, backoff(attempt-1)) {
				err = ctx.Err()
				break
			}
			set = u.set.Load()
		}
		ep, err = u.pick(set, last, version)
		if err != nil {
			return fail(http.StatusServiceUnavailable, err.Error())
		}
		last = ep
		uc, cerr := u.h1Conn(ctx, rt, ep)
		if cerr != nil {
			if errors.Is(cerr, errOverflow) {
				u.p.m.overflow.WithLabelValues(u.cfg.key()).Inc()
				return answer(http.StatusServiceUnavailable, "upstream "+u.dest+": "+cerr.Error(), "X-Meshfed-Overloaded", "true")
			}
			err = cerr
			u.failed(rt, set, ep, true)
			if rt.retryOn&retryConnect == 0 || ctx.Err() != nil {
				break
			}
			continue
		}
		// The attempt's deadline: the per-try timeout until the response
		// head, within the request's.
		tryDL := ctxDL
		perTry := false
		if rt.perTry > 0 {
			if pt := time.Now().Add(rt.perTry); tryDL.IsZero() || pt.Before(tryDL) {
				tryDL, perTry = pt, true
			}
		}
		if !tryDL.IsZero() {
			_ = uc.c.SetDeadline(tryDL)
		}
		ep.inflight.Add(1)
		req.writeRequestHead(uc.bw, "")
		if body != nil {
			_, err = uc.bw.Write(body)
		} else if err = copyBody(uc.bw, br, req, false); err != nil {
			var he *h1Error
			if errors.As(err, &he) {
				// The app's own body was malformed.
				ep.inflight.Add(-1)
				uc.close()
				return fail(he.code, he.msg)
			}
		}
		if err == nil {
			err = uc.bw.Flush()
		}
		if err == nil {
			err = readResponse(uc.br, bw, req, resp)
		}
		if err != nil {
			ep.inflight.Add(-1)
			uc.close()
			u.failed(rt, set, ep, false)
			u.p.log.Debug("upstream request failed", "upstream", u.dest, "endpoint", ep.addr, "err", err)
			if ctx.Err() != nil || (!ctxDL.IsZero() && !time.Now().Before(ctxDL)) {
				err = context.DeadlineExceeded
				break
			}
			if perTry && isTimeout(err) {
				err = fmt.Errorf("%s: no response within the per-try timeout %s: %w", ep.addr, rt.perTry, context.DeadlineExceeded)
				if !rt.retryOn.retryTimeout() {
					return fail(http.StatusGatewayTimeout, err.Error())
				}
				continue
			}
			if rt.retryOn&retryReset == 0 {
				break
			}
			continue
		}
		if perTry {
			_ = uc.c.SetDeadline(ctxDL)
		}
		if resp.code >= 500 {
			u.failed(rt, set, ep, false)
		} else {
			u.succeeded(ep)
		}
		if attempt < rt.attempts && replay && rt.retryOn.retryStatus(resp.code, -1) {
			// Drop this answer and try again.
			ep.inflight.Add(-1)
			if discardResponse(uc.br, resp) {
				_ = uc.c.SetDeadline(time.Time{})
				ep.pool.put(uc)
			} else {
				uc.close()
			}
			err = fmt.Errorf("%s answered %d", ep.addr, resp.code)
			u.p.log.Debug("retrying", "upstream", u.dest, "endpoint", ep.addr, "status", resp.code)
			continue
		}
		upClose := resp.close
		keep, werr := writeResponse(bw, uc.br, req, resp, u.h1.isClosing())
		ep.inflight.Add(-1)
		code = resp.code
		if upClose || werr != nil {
			uc.close()
		} else {
			if !ctxDL.IsZero() {
				_ = uc.c.SetDeadline(time.Time{})
			}
			ep.pool.put(uc)
		}
		return keep
	}
	u.p.log.Warn("upstream request failed", "upstream", u.dest, "err", err)
	if errors.Is(err, context.DeadlineExceeded) {
		return fail(http.StatusGatewayTimeout, err.Error())
	}
	return fail(http.StatusBadGateway, err.Error())
}

// h1Conn returns a pooled or new connection to ep. At the circuit
// breaker's max_connections the request waits, as a pending request, for
// one to come free, at most the connect timeout.
func (u *upstream) h1Conn(ctx context.Context, rt *route, ep *endpoint) (*upConn, error) {
	for {
		if uc := ep.pool.get(rt.idleTimeout); uc != nil {
			return uc, nil
		}
		if u.conns.tryOpen(rt.maxConns) {
			tc, err := u.dialTLS(ctx, ep.addr, false)
			if err != nil {
				u.conns.closed()
				return nil, err
			}
			c := tc.(*tls.Conn)
			return &upConn{c: c, br: bufio.NewReaderSize(c, 4096), bw: bufio.NewWriterSize(c, 4096), lim: &u.conns}, nil
		}
		wctx, cancel := context.WithTimeout(ctx, rt.connectTimeout)
		ok, err := u.conns.wait(wctx, rt.maxPending)
		cancel()
		if !ok {
			return nil, fmt.Errorf("%w: %d requests wait for a connection (max_pending_requests)", errOverflow, rt.maxPending)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: no connection came free within %s (max_connections %d)", errOverflow, rt.connectTimeout, rt.maxConns)
		}
	}
}

// discardResponse reads a small response body to its end so that the
// connection can be used again; it reports false when the connection must
// be closed instead.
func discardResponse(br *bufio.Reader, resp *h1Head) bool {
	if resp.close {
		return false
	}
	switch {
	case resp.body == bodyNone:
		return true
	case resp.body == bodyLength && resp.length <= maxReplayBody:
		_, err := br.Discard(int(resp.length))
		return err == nil
	}
	return false
}
