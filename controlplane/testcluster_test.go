package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"github.com/meshfed/meshfed/internal/testharness"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

// testServer is one in-process server of a test cluster.
type testServer struct {
	srv    *Server
	cfg    Config
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returns
	err    error         // what Run returned; read after done
}

func freeAddr(t testing.TB) string {
	t.Helper()
	return testharness.FreeAddr(t)
}

func testConfig(t testing.TB, node string) Config {
	level := slog.LevelWarn
	if os.Getenv("MESHFED_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return Config{
		NodeID: node, Cluster: "test", DataDir: filepath.Join(t.TempDir(), node),
		APIAddr: freeAddr(t), RaftAddr: freeAddr(t), HTTPAddr: freeAddr(t),
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("test", t.Name()),
	}
}

func startServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{srv: srv, cfg: srv.cfg, cancel: cancel, done: make(chan struct{})}
	go func() {
		ts.err = srv.Run(ctx)
		close(ts.done)
	}()
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) stop() {
	ts.cancel()
	select {
	case <-ts.done:
	case <-time.After(30 * time.Second):
	}
}

// waitReady polls /readyz over TLS with the server's own bundle.
func waitReady(t testing.TB, ts *testServer, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-ts.done:
			t.Fatalf("server %s exited: %v", ts.cfg.NodeID, ts.err)
		default:
		}
		if pem, err := os.ReadFile(filepath.Join(ts.cfg.DataDir, "ca.pem")); err == nil {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(pem)
			hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
			resp, err := hc.Get("https://" + ts.cfg.HTTPAddr + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("server %s not ready after %s", ts.cfg.NodeID, timeout)
}

type testCluster struct {
	servers []*testServer
	token   string
	caPEM   []byte
}

func startTestCluster(t testing.TB, n int) *testCluster {
	t.Helper()
	return startTestClusterWith(t, n, func(*Config) {})
}

// startTestClusterWith starts n servers, letting tune adjust each config.
func startTestClusterWith(t testing.TB, n int, tune func(*Config)) *testCluster {
	t.Helper()
	c := &testCluster{}
	cfg := testConfig(t, "s1")
	cfg.Bootstrap = true
	tune(&cfg)
	s1 := startServer(t, cfg)
	waitReady(t, s1, 30*time.Second)
	c.servers = append(c.servers, s1)
	tok, err := os.ReadFile(filepath.Join(cfg.DataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	c.token = strings.TrimSpace(string(tok))
	c.caPEM, err = os.ReadFile(filepath.Join(cfg.DataDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, c.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= n; i++ {
		jt, err := c.client(t, s1).Tokens.CreateToken(context.Background(), &meshfedv1.CreateTokenRequest{
			Kind: meshfedv1.TokenKind_TOKEN_KIND_SERVER_JOIN, MaxUses: 1, Ttl: durationpb.New(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(t, fmt.Sprintf("s%d", i))
		cfg.JoinAddrs = []string{s1.cfg.APIAddr}
		cfg.JoinToken = jt.Secret
		cfg.CAFile = caFile
		tune(&cfg)
		ts := startServer(t, cfg)
		waitReady(t, ts, 30*time.Second)
		c.servers = append(c.servers, ts)
	}
	c.waitMembers(t, n)
	return c
}

func (c *testCluster) client(t testing.TB, ts *testServer) *client.Client {
	return c.clientWithToken(t, ts, c.token)
}

func (c *testCluster) clientWithToken(t testing.TB, ts *testServer, token string) *client.Client {
	t.Helper()
	cl, err := client.New(client.Config{Addr: ts.cfg.APIAddr, Token: token, CAPEM: c.caPEM})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// leader returns the server that currently leads, polling through elections.
func (c *testCluster) leader(t testing.TB) *testServer {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, ts := range c.servers {
			if ts.srv.raft != nil && ts.srv.isLeader() {
				return ts
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no leader")
	return nil
}

func (c *testCluster) follower(t testing.TB) *testServer {
	l := c.leader(t)
	for _, ts := range c.servers {
		if ts != l {
			return ts
		}
	}
	t.Fatal("no follower")
	return nil
}

func (c *testCluster) waitMembers(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		l := c.leader(t)
		f := l.srv.raft.GetConfiguration()
		if f.Error() == nil && len(f.Configuration().Servers) == n {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("cluster did not reach %d members", n)
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
