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
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/proxy/authz"
)

const handshakeTimeout = 10 * time.Second

// inbound terminates mutual TLS on --listen, authorizes each caller (and
// for HTTP and gRPC each request) and forwards to the app.
type inbound struct {
	p    *Proxy
	ln   net.Listener
	l7   bool
	grpc bool
	dest string // "<namespace>/<service>"
	tls  *tls.Config

	// L7: handshaken connections are handed to srv through conns.
	srv   *http.Server
	conns *chanListener
	rp    *httputil.ReverseProxy

	// HTTP/1.1 connections served directly.
	h1 h1Tracker

	// TCP connections, so that a policy change can close the ones no
	// longer allowed and a drain can wait for them.
	mu      sync.Mutex
	tcp     map[*tcpConn]struct{}
	tcpWG   sync.WaitGroup
	closing bool
}

type tcpConn struct {
	caller spiffeid.ID
	a, b   net.Conn
}

func newInbound(p *Proxy) (*inbound, error) {
	ln, err := net.Listen("tcp", p.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	proto := p.service.GetProtocol()
	in := &inbound{
		p:    p,
		ln:   ln,
		l7:   proto != meshfedv1.Protocol_PROTOCOL_TCP,
		grpc: proto == meshfedv1.Protocol_PROTOCOL_GRPC,
		dest: p.cfg.Namespace + "/" + p.cfg.Service,
		tcp:  map[*tcpConn]struct{}{},
	}
	// Any caller whose SVID verifies against the bundles (own trust domain
	// and federated ones) completes the handshake; policy decides next.
	in.tls = tlsconfig.MTLSServerConfig(p.id, p.id, tlsconfig.AuthorizeAny())
	in.tls.MinVersion = tlsTLS13
	if in.l7 {
		in.tls.NextProtos = []string{"h2", "http/1.1"}
		appURL := &url.URL{Scheme: "http", Host: net.JoinHostPort(p.cfg.AppHost, strconv.Itoa(p.cfg.AppPort))}
		in.rp = &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(appURL)
				pr.Out.Host = pr.In.Host
			},
			Transport:    appTransport(in.grpc),
			ErrorHandler: in.appError,
			ErrorLog:     discardLogger(),
		}
		if in.grpc {
			in.rp.FlushInterval = -1
		}
		in.conns = newChanListener(ln.Addr())
		protos := new(http.Protocols)
		protos.SetHTTP1(true)
		protos.SetHTTP2(true)
		protos.SetUnencryptedHTTP2(true)
		in.srv = &http.Server{
			Handler:           in,
			Protocols:         protos,
			ReadHeaderTimeout: 30 * time.Second,
			IdleTimeout:       5 * time.Minute,
			ErrorLog:          discardLogger(),
		}
	}
	return in, nil
}

// appTransport reaches the app on loopback: HTTP/1.1 for http services,
// HTTP/2 without TLS for gRPC.
func appTransport(grpc bool) *http.Transport {
	t := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return rawIO(c), nil
		},
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	protos := new(http.Protocols)
	if grpc {
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	t.Protocols = protos
	return t
}

func (in *inbound) serve() {
	if in.l7 {
		in.p.goFn(func() { _ = in.srv.Serve(in.conns) })
	}
	for {
		c, err := in.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			in.p.log.Error("inbound listener failed", "err", err)
			return
		}
		in.p.m.connections.WithLabelValues("inbound").Inc()
		go in.handle(rawIO(c))
	}
}

// handle performs the handshake (or, in PERMISSIVE mode, recognises plain
// text) and passes the connection on.
func (in *inbound) handle(c net.Conn) {
	var conn net.Conn = c
	if in.p.permissive() {
		_ = c.SetReadDeadline(time.Now().Add(handshakeTimeout))
		br := bufio.NewReaderSize(c, 1)
		first, err := br.Peek(1)
		_ = c.SetReadDeadline(time.Time{})
		if err != nil {
			c.Close()
			return
		}
		conn = &peekedConn{Conn: c, r: br}
		if first[0] != 0x16 { // not a TLS handshake record: plain text
			in.accept(conn, spiffeid.ID{})
			return
		}
	}
	tc := tls.Server(conn, in.tls)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		in.p.m.handshakeFail.WithLabelValues("inbound").Inc()
		in.p.log.Debug("inbound handshake failed", "peer", c.RemoteAddr().String(), "err", err)
		tc.Close()
		return
	}
	var caller spiffeid.ID
	if st := tc.ConnectionState(); len(st.PeerCertificates) > 0 {
		caller, _ = x509svid.IDFromCert(st.PeerCertificates[0])
	}
	in.accept(tc, caller)
}

func (in *inbound) accept(c net.Conn, caller spiffeid.ID) {
	if in.l7 && !in.grpc {
		if tc, ok := c.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol != "h2" {
			in.serveH1(tc, caller)
			return
		}
	}
	if in.l7 {
		if !in.conns.push(c) {
			c.Close()
		}
		return
	}
	in.serveTCP(c, caller)
}

func principalLabel(id spiffeid.ID) string {
	if id.IsZero() {
		return "unauthenticated"
	}
	return id.String()
}

// serveTCP authorizes a TCP caller and pipes its connection to the app.
func (in *inbound) serveTCP(c net.Conn, caller spiffeid.ID) {
	start := time.Now()
	d := in.p.engine.Load().Decide(authz.Request{Principal: caller})
	if !d.Allow {
		in.deny(caller, "", "", d, start, c.RemoteAddr().String())
		c.Close()
		return
	}
	if !in.p.rateAllow(start) {
		in.p.m.observe("inbound", principalLabel(caller), in.dest, 0, time.Since(start))
		c.Close()
		return
	}
	app, err := net.DialTimeout("tcp", net.JoinHostPort(in.p.cfg.AppHost, strconv.Itoa(in.p.cfg.AppPort)), 5*time.Second)
	if err == nil {
		app = rawIO(app)
	}
	if err != nil {
		in.p.log.Warn("connecting to the app", "err", err)
		in.p.m.observe("inbound", principalLabel(caller), in.dest, 0, time.Since(start))
		c.Close()
		return
	}
	tc := &tcpConn{caller: caller, a: c, b: app}
	in.mu.Lock()
	if in.closing {
		in.mu.Unlock()
		c.Close()
		app.Close()
		return
	}
	in.tcp[tc] = struct{}{}
	in.tcpWG.Add(1)
	in.mu.Unlock()
	defer func() {
		in.mu.Lock()
		delete(in.tcp, tc)
		in.mu.Unlock()
		in.tcpWG.Done()
	}()
	pipe(c, app)
	dur := time.Since(start)
	in.p.m.observe("inbound", principalLabel(caller), in.dest, 0, dur)
	if in.p.accessLogs() {
		in.p.acc.write(&accessEntry{Direction: "inbound", Protocol: "tcp", Source: principalLabel(caller), Dest: in.dest,
			Duration: ms(dur), Peer: c.RemoteAddr().String(), Decision: "allow"}, start)
	}
}

// recheck closes TCP connections whose caller the current policy denies.
func (in *inbound) recheck() {
	e := in.p.engine.Load()
	in.mu.Lock()
	defer in.mu.Unlock()
	for tc := range in.tcp {
		if d := e.Decide(authz.Request{Principal: tc.caller}); !d.Allow {
			in.p.log.Info("closing a connection the policy no longer allows", "source", principalLabel(tc.caller), "reason", d.Reason)
			tc.a.Close()
			tc.b.Close()
		}
	}
}

func (p *Proxy) recheckConnections(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.policyChanged:
			if p.in != nil {
				p.in.recheck()
			}
		}
	}
}

// ServeHTTP authorizes one request and forwards it to the app with the
// caller's identity in X-Forwarded-Client-Cert.
func (in *inbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var caller spiffeid.ID
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		caller, _ = x509svid.IDFromCert(r.TLS.PeerCertificates[0])
	}
	path := r.URL.EscapedPath()
	d := in.p.engine.Load().Decide(authz.Request{Principal: caller, L7: true, Method: r.Method, Path: path})
	if !d.Allow {
		code := http.StatusForbidden
		if isGRPC(r) {
			writeGRPCStatus(w, 7, "permission denied: "+d.Reason) // PERMISSION_DENIED
			code = http.StatusOK
		} else {
			http.Error(w, "RBAC: access denied", http.StatusForbidden)
		}
		in.p.m.observe("inbound", principalLabel(caller), in.dest, code, time.Since(start))
		in.deny(caller, r.Method, path, d, start, r.RemoteAddr)
		return
	}
	if !in.p.rateAllow(start) {
		w.Header().Set("Retry-After", "1")
		code := refuseHTTP(w, r, http.StatusTooManyRequests, 8, "rate limited") // RESOURCE_EXHAUSTED
		in.p.m.observe("inbound", principalLabel(caller), in.dest, code, time.Since(start))
		return
	}
	r.Header.Del("X-Forwarded-Client-Cert")
	if !caller.IsZero() {
		r.Header.Set("X-Forwarded-Client-Cert", authz.XFCC(in.p.self, caller))
	}
	sw := &statusWriter{ResponseWriter: w}
	sp := beginHTTPSpan(in.p, r, spanKindServer, in.dest)
	in.rp.ServeHTTP(sw, r)
	if sp != nil {
		sp.source = principalLabel(caller)
		in.p.endSpan(sp, sw.code())
	}
	dur := time.Since(start)
	in.p.m.observe("inbound", principalLabel(caller), in.dest, sw.code(), dur)
	if in.p.accessLogs() {
		in.p.acc.write(&accessEntry{Direction: "inbound", Protocol: in.protocol(), Source: principalLabel(caller), Dest: in.dest,
			Method: r.Method, Path: path, Code: sw.code(), Duration: ms(dur), Peer: r.RemoteAddr, Decision: "allow"}, start)
	}
}

func (in *inbound) protocol() string {
	if in.grpc {
		return "grpc"
	}
	return "http"
}

func (in *inbound) deny(caller spiffeid.ID, method, path string, d authz.Decision, start time.Time, peer string) {
	in.p.m.denied.WithLabelValues(principalLabel(caller), in.dest).Inc()
	proto := "tcp"
	if in.l7 {
		proto = in.protocol()
	}
	e := &accessEntry{Direction: "inbound", Protocol: proto, Source: principalLabel(caller), Dest: in.dest,
		Method: method, Path: path, Duration: ms(time.Since(start)), Peer: peer, Decision: "deny", Reason: d.Reason}
	if in.l7 {
		e.Code = http.StatusForbidden
	}
	in.p.acc.write(e, start)
}

func (in *inbound) appError(w http.ResponseWriter, r *http.Request, err error) {
	in.p.log.Warn("forwarding to the app failed", "err", err, "path", r.URL.Path)
	if isGRPC(r) {
		writeGRPCStatus(w, 14, "upstream app unavailable") // UNAVAILABLE
		return
	}
	http.Error(w, "app unavailable", http.StatusBadGateway)
}

func (in *inbound) close() {
	in.ln.Close()
	if in.conns != nil {
		in.conns.Close()
	}
}

// shutdown stops accepting connections and waits for in-flight requests
// and TCP connections until ctx ends, then closes what is left.
func (in *inbound) shutdown(ctx context.Context) {
	in.ln.Close()
	if in.srv != nil {
		if err := in.srv.Shutdown(ctx); err != nil {
			in.srv.Close()
		}
	}
	in.h1.shutdown(ctx)
	in.mu.Lock()
	in.closing = true
	in.mu.Unlock()
	done := make(chan struct{})
	go func() { in.tcpWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		in.mu.Lock()
		for tc := range in.tcp {
			tc.a.Close()
			tc.b.Close()
		}
		in.mu.Unlock()
		<-done
	}
}

// pipe copies both ways until both directions end, half-closing each side
// when the other finishes sending.
func pipe(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, err := io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
			src.Close()
		}
	}
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
