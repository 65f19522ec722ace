package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
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

// hopByHop are headers that describe one connection, not the message.
var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
}

// prepareRequest readies a request read from one side for the other.
func prepareRequest(req *http.Request) {
	removeHopByHop(req.Header)
	// The body is sent at once: no 100 Continue to wait for.
	delete(req.Header, "Expect")
	// Request.Write adds a Go user agent to a request without one.
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = []string{""}
	}
	req.Close = false
}

func writeH1Error(bw *bufio.Writer, code int, msg string, close bool) error {
	body := msg + "\n"
	resp := &http.Response{
		StatusCode: code, ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "X-Content-Type-Options": {"nosniff"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Close:         close,
	}
	if err := resp.Write(bw); err != nil {
		return err
	}
	return bw.Flush()
}

// readRequest reads the next request, closing a connection idle for too long.
func readRequest(c net.Conn, br *bufio.Reader) (*http.Request, error) {
	_ = c.SetReadDeadline(time.Now().Add(h1IdleTimeout))
	if _, err := br.Peek(1); err != nil {
		return nil, err
	}
	_ = c.SetReadDeadline(time.Time{})
	return http.ReadRequest(br)
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
	// The caller is the connection's: its header value is made once (the
	// slice is only read by Request.Write).
	var xfcc []string
	if !caller.IsZero() {
		xfcc = []string{authz.XFCC(in.p.self, caller)}
	}
	appAddr := net.JoinHostPort(in.p.cfg.AppHost, strconv.Itoa(in.p.cfg.AppPort))
	for {
		req, err := readRequest(tc, br)
		if err != nil {
			if !quietError(err) {
				_ = writeH1Error(bw, http.StatusBadRequest, "bad request", true)
			}
			return
		}
		hc.active.Store(true)
		start := time.Now()
		path := req.URL.EscapedPath()
		closeAfter := req.Close || in.h1.isClosing()
		d := in.p.engine.Load().Decide(authz.Request{Principal: caller, L7: true, Method: req.Method, Path: path})
		if !d.Allow {
			// Read what is left of a small body so the connection can
			// serve the next request; close it otherwise.
			n, _ := io.Copy(io.Discard, io.LimitReader(req.Body, maxReplayBody+1))
			if n > maxReplayBody {
				closeAfter = true
			}
			werr := writeH1Error(bw, http.StatusForbidden, "RBAC: access denied", closeAfter)
			in.p.m.observe("inbound", source, in.dest, http.StatusForbidden, time.Since(start))
			in.deny(caller, req.Method, path, d, start, tc.RemoteAddr().String())
			if werr != nil || closeAfter {
				return
			}
			hc.active.Store(false)
			continue
		}
		prepareRequest(req)
		delete(req.Header, "X-Forwarded-Client-Cert")
		if xfcc != nil {
			req.Header["X-Forwarded-Client-Cert"] = xfcc
		}
		code := 0
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
		err = req.Write(app.bw)
		if err == nil {
			err = app.bw.Flush()
		}
		var resp *http.Response
		if err == nil {
			resp, err = http.ReadResponse(app.br, req)
		}
		if err != nil {
			in.p.log.Warn("forwarding to the app failed", "err", err, "path", path)
			_ = writeH1Error(bw, http.StatusBadGateway, "app unavailable", true)
			in.p.m.observe("inbound", source, in.dest, http.StatusBadGateway, time.Since(start))
			return
		}
		removeHopByHop(resp.Header)
		appClose := resp.Close
		resp.Close = closeAfter
		werr := resp.Write(bw)
		if werr == nil {
			werr = bw.Flush()
		}
		resp.Body.Close()
		code = resp.StatusCode
		if appClose {
			app.c.Close()
			app = nil
		}
		dur := time.Since(start)
		in.p.m.observe("inbound", source, in.dest, code, dur)
		if in.p.accessLogs() {
			in.p.acc.write(&accessEntry{Direction: "inbound", Protocol: "http", Source: source, Dest: in.dest,
				Method: req.Method, Path: path, Code: code, Duration: ms(dur), Peer: tc.RemoteAddr().String(), Decision: "allow"}, start)
		}
		if werr != nil || closeAfter {
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
}

type connPool struct {
	mu   sync.Mutex
	idle []*upConn
}

func (p *connPool) get() *upConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for len(p.idle) > 0 {
		uc := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if now.Sub(uc.lastUsed) < poolIdle {
			return uc
		}
		uc.c.Close()
	}
	return nil
}

func (p *connPool) put(uc *upConn) {
	uc.lastUsed = time.Now()
	p.mu.Lock()
	if len(p.idle) < poolSize {
		p.idle = append(p.idle, uc)
		uc = nil
	}
	p.mu.Unlock()
	if uc != nil {
		uc.c.Close()
	}
}

func (p *connPool) closeAll() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, uc := range idle {
		uc.c.Close()
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
	for {
		req, err := readRequest(c, br)
		if err != nil {
			if !quietError(err) {
				_ = writeH1Error(bw, http.StatusBadRequest, "bad request", true)
			}
			return
		}
		hc.active.Store(true)
		if !u.forwardH1(req, bw) || u.h1.isClosing() {
			return
		}
		hc.active.Store(false)
	}
}

// forwardH1 forwards one request and writes the response; it reports
// whether the app's connection can carry another request.
func (u *upstream) forwardH1(req *http.Request, bw *bufio.Writer) bool {
	start := time.Now()
	path := req.URL.EscapedPath()
	var ep *endpoint
	code := 0
	defer func() {
		dur := time.Since(start)
		u.p.m.observe("outbound", u.p.self.String(), u.dest, code, dur)
		if u.p.accessLogs() {
			e := &accessEntry{Direction: "outbound", Protocol: "http", Source: u.p.self.String(), Dest: u.dest,
				Method: req.Method, Path: path, Code: code, Duration: ms(dur)}
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
	if req.Header.Get("Upgrade") != "" {
		return fail(http.StatusNotImplemented, "protocol upgrades are not supported")
	}
	// Keep small bodies so the request can go to another endpoint after a
	// connection failure.
	var body []byte
	replay := req.ContentLength == 0
	if req.ContentLength > 0 && req.ContentLength <= maxReplayBody {
		body = getBodyBuf(int(req.ContentLength))
		defer putBodyBuf(body)
		if _, err := io.ReadFull(req.Body, body); err != nil {
			return fail(http.StatusBadRequest, "reading the request body: "+err.Error())
		}
		replay = true
	}
	clientClose := req.Close
	prepareRequest(req)
	ctx := context.Background()
	if d := time.Duration(u.requestTimeout.Load()); d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	set, err := u.current(ctx)
	if err != nil {
		return fail(http.StatusServiceUnavailable, err.Error())
	}
	var last *endpoint
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 && !replay {
			break
		}
		ep, err = u.pick(set, last)
		if err != nil {
			return fail(http.StatusServiceUnavailable, err.Error())
		}
		last = ep
		uc := ep.pool.get()
		if uc == nil {
			tc, derr := u.dialTLS(ctx, ep.addr, false)
			if derr != nil {
				err = derr
				u.eject(ep)
				continue
			}
			c := tc.(*tls.Conn)
			uc = &upConn{c: c, br: bufio.NewReaderSize(c, 4096), bw: bufio.NewWriterSize(c, 4096)}
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = uc.c.SetDeadline(dl)
		}
		if body != nil {
			req.Body = io.NopCloser(bytes.NewReader(body))
		}
		ep.inflight.Add(1)
		err = req.Write(uc.bw)
		if err == nil {
			err = uc.bw.Flush()
		}
		var resp *http.Response
		if err == nil {
			resp, err = http.ReadResponse(uc.br, req)
		}
		if err != nil {
			ep.inflight.Add(-1)
			uc.c.Close()
			u.p.log.Debug("upstream request failed", "upstream", u.dest, "endpoint", ep.addr, "err", err)
			continue
		}
		removeHopByHop(resp.Header)
		upClose := resp.Close
		resp.Close = clientClose || u.h1.isClosing()
		werr := resp.Write(bw)
		if werr == nil {
			werr = bw.Flush()
		}
		resp.Body.Close()
		ep.inflight.Add(-1)
		code = resp.StatusCode
		if upClose || werr != nil {
			uc.c.Close()
		} else {
			_ = uc.c.SetDeadline(time.Time{})
			ep.pool.put(uc)
		}
		return werr == nil && !resp.Close
	}
	u.p.log.Warn("upstream request failed", "upstream", u.dest, "err", err)
	if errors.Is(err, context.DeadlineExceeded) {
		return fail(http.StatusGatewayTimeout, err.Error())
	}
	return fail(http.StatusBadGateway, err.Error())
}
