package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/meshfed/meshfed/internal/testharness"
	"github.com/meshfed/meshfed/proxy/authz"
)

// xfccURI returns the URI (caller) and By (server) of an
// X-Forwarded-Client-Cert header the inbound proxy set.
func xfccIDs(t *testing.T, v string) (uri, by string) {
	t.Helper()
	els, err := authz.ParseXFCC(v)
	if err != nil || len(els) != 1 {
		t.Fatalf("X-Forwarded-Client-Cert %q: %v", v, err)
	}
	return els[0]["URI"], els[0]["By"]
}

// foreignCert is a certificate of a trust domain nobody federates with.
func foreignCert(t *testing.T, id string) tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "evil CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		NotBefore:   time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}
}

func echoOnce(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo returned %q, want %q", buf, msg)
	}
	return nil
}

// TestProxyTraffic runs apps behind real proxies: HTTP, gRPC and TCP calls
// pass with mutual TLS and the app sees the caller's identity; the inbound
// port refuses callers without a mesh SVID; authorization policy changes
// (L4 and L7) apply within a second without dropping connections that stay
// allowed; metrics, access logs and the Workload API work.
func TestProxyTraffic(t *testing.T) {
	skipShort(t)
	m := newMeshFixture(t, "east")
	web := startHTTPApp(t, "web")
	rpcApp := startGRPCApp(t)
	echoPort := startEchoApp(t)
	clientApp := startHTTPApp(t, "client")
	m.service("web", "http", web.port)
	m.service("rpc", "grpc", rpcApp.port)
	m.service("echo", "tcp", echoPort)
	m.service("client", "http", clientApp.port)
	m.policy(fmt.Sprintf(`meta: {name: allow-client}
destination: "*"
action: allow
rules:
- principals: [%q]
`, m.id("client")))

	webP := m.proxy("web", web.port, nil, "--health-path", "/healthz")
	m.proxy("rpc", rpcApp.port, nil)
	echoP := m.proxy("echo", echoPort, nil)
	cl := m.proxy("client", clientApp.port, []string{"web", "rpc", "echo"}, "--access-logs")

	// HTTP.
	var reply appReply
	if err := testharness.Poll(waitTimeout, func() error {
		code, r, err := get(cl.Upstream("web"), "/hello")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("GET /hello through the client proxy: %d %v", code, err)
		}
		reply = r
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if reply.App != "web" {
		t.Fatalf("reached %q, want web", reply.App)
	}
	if uri, by := xfccIDs(t, reply.XFCC); uri != m.id("client") || by != m.id("web") {
		t.Fatalf("app saw X-Forwarded-Client-Cert %q: URI %q By %q", reply.XFCC, uri, by)
	}
	// A 1 KB POST body arrives whole.
	if code, r, err := do(http.MethodPost, cl.Upstream("web"), "/post", make([]byte, 1024)); err != nil || code != 200 || r.Path != "/post" {
		t.Fatalf("POST through the proxies: %d %+v %v", code, r, err)
	}

	// A chunked body of unknown length, a body larger than the proxy keeps
	// for retries, and HEAD (a response without a body) pass intact.
	for _, size := range []int{0, 100 << 10} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+cl.Upstream("web")+"/chunked", io.NopCloser(strings.NewReader(strings.Repeat("x", size+3))))
		req.ContentLength = -1
		if size > 0 {
			req.ContentLength = int64(size + 3)
		}
		resp, err := keepAliveClient.Do(req)
		if err != nil {
			t.Fatalf("POST of %d bytes: %v", size+3, err)
		}
		var r appReply
		err = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || r.Path != "/chunked" || r.Length != size+3 {
			t.Fatalf("POST of %d bytes: %d %+v %v", size+3, resp.StatusCode, r, err)
		}
	}
	if resp, err := keepAliveClient.Head("http://" + cl.Upstream("web") + "/head"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD through the proxies: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if code, r, err := get(cl.Upstream("web"), "/after-head"); err != nil || code != 200 || r.Path != "/after-head" {
		t.Fatalf("GET after HEAD on the same connection: %d %+v %v", code, r, err)
	}

	// gRPC (h2c from the app to its proxy).
	conn, err := grpc.NewClient(cl.Upstream("rpc"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	cancel()
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC Check through the proxies: %v %v", resp, err)
	}
	if uri, by := xfccIDs(t, rpcApp.lastXFCC()); uri != m.id("client") || by != m.id("rpc") {
		t.Fatalf("gRPC app saw X-Forwarded-Client-Cert %q", rpcApp.lastXFCC())
	}

	// TCP: a connection that stays open across policy changes.
	tcp, err := net.Dial("tcp", cl.Upstream("echo"))
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	if err := echoOnce(tcp, "ping\n"); err != nil {
		t.Fatalf("TCP through the proxies: %v", err)
	}

	// The inbound port refuses plain text, TLS without a client
	// certificate, and an SVID of an unfederated trust domain.
	raw, err := net.Dial("tcp", webP.Listen)
	if err != nil {
		t.Fatal(err)
	}
	_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = raw.Write([]byte("GET /hello HTTP/1.1\r\nHost: web\r\n\r\n"))
	buf := make([]byte, 16)
	n, _ := raw.Read(buf)
	raw.Close()
	if strings.HasPrefix(string(buf[:n]), "HTTP/") {
		t.Fatalf("plain text on the inbound port got an HTTP answer: %q", buf[:n])
	}
	if err := tlsRefused(webP.Listen, &tls.Config{InsecureSkipVerify: true}); err != nil {
		t.Fatalf("TLS without a client certificate: %v", err)
	}
	evil := foreignCert(t, "spiffe://evil.mesh/ns/default/sa/client")
	if err := tlsRefused(webP.Listen, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{evil}}); err != nil {
		t.Fatalf("SVID of an unfederated trust domain: %v", err)
	}

	// A DENY policy applies within a second.
	m.policy(fmt.Sprintf(`meta: {name: deny-client}
destination: web
action: deny
rules:
- principals: [%q]
`, m.id("client")))
	applied := time.Now()
	if err := testharness.Poll(5*time.Second, func() error {
		code, _, err := get(cl.Upstream("web"), "/hello")
		if err != nil || code != http.StatusForbidden {
			return fmt.Errorf("GET after the deny rule: %d %v", code, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(applied); took > time.Second {
		t.Errorf("the deny rule took %s to apply; want at most 1s", took)
	} else {
		t.Logf("deny rule applied in %s", took.Round(time.Millisecond))
	}
	// The TCP connection to echo is still allowed and still open.
	if err := echoOnce(tcp, "still here\n"); err != nil {
		t.Fatalf("TCP connection after an unrelated policy change: %v", err)
	}

	// L7: /public allowed, /admin denied.
	m.cli("policy", "authz", "delete", "deny-client")
	// The TCP allow comes first: the documents apply one by one, and the
	// narrowed "*" rule no longer matches TCP connections.
	m.policy(fmt.Sprintf(`meta: {name: allow-client-tcp}
destination: echo
action: allow
rules:
- principals: [%q]
---
meta: {name: allow-client}
destination: "*"
action: allow
rules:
- principals: [%q]
  paths: ["/public*"]
- principals: [%q]
  methods: [GET]
  paths: ["/health-of-rpc"]
---
meta: {name: allow-client-rpc}
destination: rpc
action: allow
rules:
- principals: [%q]
  paths: ["/grpc.health.v1.Health/*"]
`, m.id("client"), m.id("client"), m.id("client"), m.id("client")))
	if err := testharness.Poll(5*time.Second, func() error {
		if code, _, err := get(cl.Upstream("web"), "/public/x"); err != nil || code != http.StatusOK {
			return fmt.Errorf("GET /public/x: %d %v", code, err)
		}
		if code, _, err := get(cl.Upstream("web"), "/admin"); err != nil || code != http.StatusForbidden {
			return fmt.Errorf("GET /admin: %d %v", code, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Paths are decoded before they are matched: an encoded "/public" is
	// allowed; an encoded way out of it is not.
	for path, want := range map[string]int{
		"/%70ublic/x":          http.StatusOK,
		"/public/%2e%2e/admin": http.StatusForbidden,
		"/public%2F..%2Fadmin": http.StatusForbidden,
	} {
		if code, _, err := get(cl.Upstream("web"), path); err != nil || code != want {
			t.Fatalf("GET %s: %d %v, want %d", path, code, err, want)
		}
	}
	if err := echoOnce(tcp, "and now\n"); err != nil {
		t.Fatalf("TCP connection after the policies were replaced: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), callTimeout)
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{})
	cancel()
	if err != nil {
		t.Fatalf("gRPC Check allowed by a path rule: %v", err)
	}

	// gRPC and TCP denials.
	m.policy(fmt.Sprintf(`meta: {name: deny-client-rpc-tcp}
destination: "*"
action: deny
rules:
- principals: [%q]
  paths: ["/grpc.health.v1.Health/*"]
---
meta: {name: deny-client-echo}
destination: echo
action: deny
rules:
- principals: [%q]
`, m.id("client"), m.id("client")))
	if err := testharness.Poll(5*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.PermissionDenied {
			return fmt.Errorf("gRPC Check after a deny rule: %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The established TCP connection is closed once denied, and new ones
	// are refused.
	if err := testharness.Poll(5*time.Second, func() error {
		if err := echoOnce(tcp, "x"); err == nil {
			return errors.New("the denied TCP connection still echoes")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if c2, err := net.Dial("tcp", cl.Upstream("echo")); err == nil {
		if err := echoOnce(c2, "y"); err == nil {
			t.Fatal("a new TCP connection passed a deny rule")
		}
		c2.Close()
	}

	// Metrics.
	ctx, cancel = context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	webMetrics, err := webP.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		fmt.Sprintf(`meshfed_proxy_requests_total{code="200",destination="default/web",direction="inbound",source=%q}`, m.id("client")),
		fmt.Sprintf(`meshfed_proxy_requests_total{code="403",destination="default/web",direction="inbound",source=%q}`, m.id("client")),
		fmt.Sprintf(`meshfed_proxy_authorization_denied_total{destination="default/web",source=%q}`, m.id("client")),
		`meshfed_proxy_tls_handshake_failures_total{direction="inbound"}`,
		`meshfed_proxy_request_duration_seconds_bucket{code="200",destination="default/web",direction="inbound"`,
		`meshfed_proxy_certificate_expiry_timestamp_seconds`,
	} {
		if !strings.Contains(webMetrics, want) {
			t.Errorf("web proxy /metrics lacks %s", want)
		}
	}
	clMetrics, err := cl.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`meshfed_proxy_upstream_healthy_endpoints{upstream="default/web"} 1`,
		fmt.Sprintf(`meshfed_proxy_requests_total{code="200",destination="default/web",direction="outbound",source=%q}`, m.id("client")),
	} {
		if !strings.Contains(clMetrics, want) {
			t.Errorf("client proxy /metrics lacks %s", want)
		}
	}

	// Access logs: the denial on web's side (always logged), every call on
	// the client's (--access-logs).
	if !hasAccessLine(webP.Stdout(), func(e map[string]any) bool {
		return e["direction"] == "inbound" && e["authz"] == "deny" && e["path"] == "/admin" && e["source"] == m.id("client")
	}) {
		t.Errorf("web proxy logged no denial of /admin:\n%s", webP.Stdout())
	}
	if !hasAccessLine(echoP.Stdout(), func(e map[string]any) bool { return e["protocol"] == "tcp" && e["authz"] == "deny" }) {
		t.Errorf("echo proxy logged no TCP denial:\n%s", echoP.Stdout())
	}
	if !hasAccessLine(cl.Stdout(), func(e map[string]any) bool {
		return e["direction"] == "outbound" && e["destination"] == "default/web" && e["code"] == float64(200)
	}) {
		t.Errorf("client proxy logged no outbound call:\n%s", cl.Stdout())
	}

	// The Workload API serves the client's SVID.
	wctx, wcancel := context.WithTimeout(context.Background(), callTimeout)
	defer wcancel()
	svid, err := workloadapi.FetchX509SVID(wctx, workloadapi.WithAddr("unix://"+cl.WorkloadAPISocket))
	if err != nil {
		t.Fatalf("Workload API: %v", err)
	}
	if svid.ID.String() != m.id("client") {
		t.Fatalf("Workload API served %s, want %s", svid.ID, m.id("client"))
	}
}

func hasAccessLine(out string, match func(map[string]any) bool) bool {
	for _, line := range strings.Split(out, "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil && match(e) {
			return true
		}
	}
	return false
}

// load sends 1 KB POSTs through an upstream listener until stopped,
// counting answers.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	byApp      sync.Map // app name -> *atomic.Int64
}

func (l *load) run(ctx context.Context, addr string, workers int) (wait func()) {
	var wg sync.WaitGroup
	body := make([]byte, 1024)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				code, r, err := do(http.MethodPost, addr, "/load", body)
				if ctx.Err() != nil {
					return
				}
				if err != nil || code != http.StatusOK {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 10 {
						l.errs = append(l.errs, fmt.Sprintf("%s: %d %v", time.Now().Format("15:04:05.000"), code, err))
					}
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
				v, _ := l.byApp.LoadOrStore(r.App, new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
			}
		}()
	}
	return wg.Wait
}

func (l *load) errors() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.errs, "\n")
}

func (l *load) count(app string) int64 {
	v, ok := l.byApp.Load(app)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// TestProxyRotationKillAndDrain: a CA rotation under continuous traffic
// through proxies fails no request and the Workload API delivers the
// rotated SVID; a SIGKILLed server proxy stops receiving traffic within
// 10 s; a SIGTERMed one finishes its in-flight request.
func TestProxyRotationKillAndDrain(t *testing.T) {
	skipShort(t)
	m := newMeshFixture(t, "east")
	a, b := startHTTPApp(t, "web-a"), startHTTPApp(t, "web-b")
	clientApp := startHTTPApp(t, "client")
	m.service("web", "http", a.port)
	m.service("client", "http", clientApp.port)
	m.policy(fmt.Sprintf("meta: {name: allow-client}\ndestination: web\naction: allow\nrules:\n- principals: [%q]\n", m.id("client")))
	pa := m.proxy("web", a.port, nil)
	pb := m.proxy("web", b.port, nil)
	cl := m.proxy("client", clientApp.port, []string{"web"})

	// The Workload API's view of the client's SVID.
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	src, err := workloadapi.NewX509Source(wctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+cl.WorkloadAPISocket)))
	if err != nil {
		t.Fatalf("Workload API: %v", err)
	}
	defer src.Close()
	first, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	l := &load{}
	wait := l.run(ctx, cl.Upstream("web"), 4)
	stopped := false
	stopLoad := func() {
		if !stopped {
			stopped = true
			cancel()
			wait()
		}
	}
	defer stopLoad()
	if err := testharness.Poll(waitTimeout, func() error {
		if l.count("web-a") < 20 || l.count("web-b") < 20 {
			return fmt.Errorf("requests so far: web-a %d, web-b %d, failed %d", l.count("web-a"), l.count("web-b"), l.failed.Load())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if l.failed.Load() != 0 {
		t.Fatalf("%d requests failed before the rotation:\n%s", l.failed.Load(), l.errors())
	}

	// Rotation under traffic.
	before := l.ok.Load()
	out := m.cli("ca", "rotate", "--timeout", "2m")
	if !strings.Contains(out, "is retired") {
		t.Fatalf("ca rotate printed:\n%s", out)
	}
	if f := l.failed.Load(); f != 0 {
		t.Fatalf("%d requests failed during the CA rotation:\n%s", f, l.errors())
	}
	t.Logf("%d requests passed during the rotation, none failed", l.ok.Load()-before)
	if err := testharness.Poll(waitTimeout, func() error {
		s, err := src.GetX509SVID()
		if err != nil {
			return err
		}
		if s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 ||
			string(s.Certificates[len(s.Certificates)-1].RawIssuer) == string(first.Certificates[len(first.Certificates)-1].RawIssuer) && len(s.Certificates) == len(first.Certificates) && s.Certificates[0].AuthorityKeyId != nil && string(s.Certificates[0].AuthorityKeyId) == string(first.Certificates[0].AuthorityKeyId) {
			return errors.New("the Workload API still serves an SVID of the old authority")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// SIGKILL b's proxy: its endpoint leaves the callers' view within 10 s.
	okB := l.count("web-b")
	killed := time.Now()
	pb.Kill()
	if err := testharness.Poll(15*time.Second, func() error {
		resp, err := http.Get("http://" + cl.Admin + "/status")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var st struct {
			Upstreams []struct{ Endpoints []string } `json:"upstreams"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return err
		}
		if n := len(st.Upstreams[0].Endpoints); n != 1 {
			return fmt.Errorf("client proxy still knows %d endpoints of web", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	gone := time.Since(killed)
	t.Logf("the killed proxy's endpoint left the caller's view after %s; %d requests failed meanwhile", gone.Round(time.Millisecond), l.failed.Load())
	if gone > 10*time.Second {
		t.Errorf("the killed proxy's endpoint stayed %s; want at most 10s", gone)
	}
	if okB == 0 {
		t.Fatal("web-b never served")
	}
	okA := l.count("web-a")
	if err := testharness.Poll(waitTimeout, func() error {
		if l.count("web-a") < okA+20 {
			return errors.New("no traffic reaches web-a after the kill")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stopLoad()

	// SIGTERM a's proxy while a request is in flight: it finishes.
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, _, err := get(cl.Upstream("web"), "/hold/1")
		done <- result{code, err}
	}()
	if err := testharness.Poll(waitTimeout, func() error {
		if a.held.Load() == 0 {
			return errors.New("the held request has not reached web-a")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := pa.Terminate(); err != nil {
		t.Fatal(err)
	}
	if err := testharness.Poll(waitTimeout, func() error {
		if !strings.Contains(pa.Stderr(), "draining") {
			return errors.New("web-a's proxy has not started draining")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	close(a.release)
	r := <-done
	if r.err != nil || r.code != http.StatusOK {
		t.Fatalf("the in-flight request during the drain: %d %v", r.code, r.err)
	}
	select {
	case <-pa.Exited():
	case <-time.After(waitTimeout):
		t.Fatal("web-a's proxy did not exit after draining")
	}
	if err := pa.ExitErr(); err != nil {
		t.Fatalf("web-a's proxy exited with %v", err)
	}
	// Deregistered: no endpoint of web is left.
	if err := testharness.Poll(waitTimeout, func() error {
		out, errOut, err := m.c.RunCLI(t, "workloads", "list", "--service", "web", "-o", "json")
		if err != nil {
			return fmt.Errorf("%v %s", err, errOut)
		}
		if strings.Contains(out, pa.Instance) {
			return fmt.Errorf("web-a still registered: %s", out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestProxyAcrossClusters: an app in east calls payments through proxies.
// Local endpoints come first; when east's own payments endpoint turns
// unhealthy, calls fail over to the payments exported by west, with mutual
// TLS across the two trust domains, and west's app sees east's caller.
func TestProxyAcrossClusters(t *testing.T) {
	skipShort(t)
	east := newMeshFixture(t, "east")
	west := newMeshFixture(t, "west")
	token := strings.TrimSpace(east.cli("peering", "token", "--peer", "west"))
	west.cli("peering", "establish", "--peer", "east", "--token", token)

	westApp := startHTTPApp(t, "west-payments")
	west.service("payments", "http", westApp.port)
	west.policy(fmt.Sprintf("meta: {name: allow-east-client}\ndestination: payments\naction: allow\nrules:\n- principals: [%q]\n", east.id("client")))
	west.proxy("payments", westApp.port, nil)
	west.cli("exports", "set", "payments", "--to", "east")

	eastApp := startHTTPApp(t, "east-payments")
	clientApp := startHTTPApp(t, "client")
	east.service("payments", "http", eastApp.port)
	east.service("client", "http", clientApp.port)
	east.policy(fmt.Sprintf("meta: {name: allow-client}\ndestination: payments\naction: allow\nrules:\n- principals: [%q]\n", east.id("client")))
	east.proxy("payments", eastApp.port, nil, "--health-path", "/healthz")
	cl := east.proxy("client", clientApp.port, []string{"payments"})

	// Both clusters' endpoints are known; the local one serves.
	if err := testharness.Poll(waitTimeout, func() error {
		resp, err := http.Get("http://" + cl.Admin + "/status")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var st struct {
			Upstreams []struct{ Endpoints []string } `json:"upstreams"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return err
		}
		if n := len(st.Upstreams[0].Endpoints); n != 2 {
			return fmt.Errorf("client proxy knows endpoints %v of payments, want one in east and one in west", st.Upstreams[0].Endpoints)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		code, r, err := get(cl.Upstream("payments"), "/pay")
		if err != nil || code != http.StatusOK || r.App != "east-payments" {
			t.Fatalf("with a healthy local endpoint: %d %+v %v", code, r, err)
		}
	}

	// East's payments turns unhealthy: calls go to west.
	eastApp.healthy.Store(false)
	var reply appReply
	if err := testharness.Poll(waitTimeout, func() error {
		code, r, err := get(cl.Upstream("payments"), "/pay")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("GET /pay: %d %v", code, err)
		}
		if r.App != "west-payments" {
			return fmt.Errorf("still served by %s", r.App)
		}
		reply = r
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if uri, by := xfccIDs(t, reply.XFCC); uri != east.id("client") || by != west.id("payments") {
		t.Fatalf("west's app saw X-Forwarded-Client-Cert %q", reply.XFCC)
	}
	// And back once it recovers.
	eastApp.healthy.Store(true)
	if err := testharness.Poll(waitTimeout, func() error {
		_, r, err := get(cl.Upstream("payments"), "/pay")
		if err != nil || r.App != "east-payments" {
			return fmt.Errorf("after recovery: %+v %v", r, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Without a west policy allowing east's client, west refuses it.
	west.cli("policy", "authz", "delete", "allow-east-client")
	eastApp.healthy.Store(false)
	if err := testharness.Poll(waitTimeout, func() error {
		code, r, err := get(cl.Upstream("payments"), "/pay")
		if err != nil || code != http.StatusForbidden {
			return fmt.Errorf("after west's policy was deleted: %d %+v %v", code, r, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
