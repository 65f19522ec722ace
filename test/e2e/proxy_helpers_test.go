package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/testharness"
)

// meshFixture is a cluster plus helpers to declare services and start
// proxies beside test apps.
type meshFixture struct {
	t  *testing.T
	c  *testharness.Cluster
	td string
}

func newMeshFixture(t *testing.T, name string) *meshFixture {
	c := testharness.StartCluster(t, 1, testharness.ClusterOptions{Name: name, LogLevel: "info"})
	return &meshFixture{t: t, c: c, td: name + ".mesh"}
}

func (m *meshFixture) id(svc string) string {
	return "spiffe://" + m.td + "/ns/default/sa/" + svc
}

func (m *meshFixture) cli(args ...string) string {
	m.t.Helper()
	out, errOut, err := m.c.RunCLI(m.t, args...)
	if err != nil {
		m.t.Fatalf("meshfed %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// service registers a service.
func (m *meshFixture) service(name, protocol string, port int) {
	m.t.Helper()
	m.cli("services", "register", name, "--port", fmt.Sprint(port), "--protocol", protocol)
}

// policy applies authorization policies (YAML).
func (m *meshFixture) policy(yaml string) {
	m.t.Helper()
	f := filepath.Join(m.t.TempDir(), "policy.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
		m.t.Fatal(err)
	}
	m.cli("policy", "authz", "apply", "-f", f)
}

func (m *meshFixture) token(svc string) string {
	m.t.Helper()
	var tok *meshfedv1.Token
	if err := testharness.Poll(waitTimeout, func() error {
		var err error
		tok, err = m.c.Client(m.t, m.c.Leader()).Tokens.CreateToken(context.Background(), &meshfedv1.CreateTokenRequest{
			Kind: meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN, SpiffeId: m.id(svc), MaxUses: 1, Ttl: durationpb.New(5 * time.Minute)})
		return err
	}); err != nil {
		m.t.Fatal(err)
	}
	return tok.Secret
}

// proxy starts a proxy for svc beside an app on appPort and waits until it
// is ready.
func (m *meshFixture) proxy(svc string, appPort int, upstreams []string, extra ...string) *testharness.Proxy {
	m.t.Helper()
	var servers []string
	for _, s := range m.c.Servers {
		servers = append(servers, s.APIAddr)
	}
	p := testharness.StartProxy(m.t, testharness.ProxyOptions{
		Servers: servers, CAFile: m.c.CAFile, Token: m.token(svc),
		Service: svc, AppPort: appPort, Upstreams: upstreams, ExtraArgs: extra,
		WorkloadAPI: true,
	})
	if err := p.WaitReady(waitTimeout); err != nil {
		m.t.Fatal(err)
	}
	return p
}

// httpApp is a test application: it answers with who it is and the
// X-Forwarded-Client-Cert header it received. /hold/ requests wait until
// release is closed.
type httpApp struct {
	name    string
	port    int
	srv     *http.Server
	hits    atomic.Int64
	release chan struct{}
	held    atomic.Int64
	healthy atomic.Bool
}

type appReply struct {
	App    string `json:"app"`
	XFCC   string `json:"xfcc"`
	Path   string `json:"path"`
	Length int    `json:"length"`
}

func startHTTPApp(t *testing.T, name string) *httpApp {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &httpApp{name: name, port: ln.Addr().(*net.TCPAddr).Port, release: make(chan struct{})}
	a.healthy.Store(true)
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if !a.healthy.Load() {
				http.Error(w, "unhealthy", http.StatusServiceUnavailable)
			}
			return
		}
		a.hits.Add(1)
		n, _ := io.Copy(io.Discard, r.Body)
		if strings.HasPrefix(r.URL.Path, "/hold/") {
			a.held.Add(1)
			<-a.release
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(appReply{App: name, XFCC: r.Header.Get("X-Forwarded-Client-Cert"), Path: r.URL.Path, Length: int(n)})
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = a.srv.Serve(ln) }()
	t.Cleanup(func() {
		select {
		case <-a.release:
		default:
			close(a.release)
		}
		a.srv.Close()
	})
	return a
}

// grpcApp serves the gRPC health service and records the
// x-forwarded-client-cert metadata of the last call.
type grpcApp struct {
	port int
	mu   sync.Mutex
	xfcc string
}

func startGRPCApp(t *testing.T) *grpcApp {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &grpcApp{port: ln.Addr().(*net.TCPAddr).Port}
	s := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		a.mu.Lock()
		a.xfcc = strings.Join(md.Get("x-forwarded-client-cert"), ",")
		a.mu.Unlock()
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(s, health.NewServer())
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return a
}

func (a *grpcApp) lastXFCC() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.xfcc
}

// startEchoApp is a TCP app that echoes what it reads.
func startEchoApp(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

var keepAliveClient = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// get sends a request through an upstream listener and returns the status
// and the app's reply.
func get(addr, path string) (int, appReply, error) {
	return do(http.MethodGet, addr, path, nil)
}

func do(method, addr, path string, body []byte) (int, appReply, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+addr+path, rd)
	if err != nil {
		return 0, appReply{}, err
	}
	resp, err := keepAliveClient.Do(req)
	if err != nil {
		return 0, appReply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, appReply{}, err
	}
	var r appReply
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &r); err != nil {
			return resp.StatusCode, r, fmt.Errorf("reply %q: %w", b, err)
		}
	}
	return resp.StatusCode, r, nil
}

// tlsRefused reports whether a TLS client with cfg fails to complete a
// request on addr (handshake refused or connection closed without an
// answer).
func tlsRefused(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		return nil
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	return fmt.Errorf("the server answered %q", buf[:n])
}
