package controlplane

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// createWithRetry retries a write across servers while an election runs.
func (c *testCluster) createWithRetry(t *testing.T, name string) *meshfedv1.Service {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		ts := c.servers[i%len(c.servers)]
		if ts.stopped() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		s, err := c.client(t, ts).Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{Service: svc(name, 80), AllowMissing: true})
		cancel()
		if err == nil {
			return s
		}
		if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
			t.Fatalf("write %s: %v", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("write %s never succeeded", name)
	return nil
}

func (ts *testServer) stopped() bool {
	select {
	case <-ts.done:
		return true
	default:
		return false
	}
}

func TestLeaderFailoverLosesNoAcknowledgedWrite(t *testing.T) {
	c := startTestCluster(t, 3)
	acked := map[string]uint64{}
	for i := range 20 {
		s := c.createWithRetry(t, fmt.Sprintf("before-%d", i))
		acked[s.Meta.Name] = s.Meta.Version
	}
	old := c.leader(t)
	old.stop()
	// Keep writing through the election; every write that returned is acknowledged.
	for i := range 20 {
		s := c.createWithRetry(t, fmt.Sprintf("after-%d", i))
		acked[s.Meta.Name] = s.Meta.Version
	}
	nl := c.leader(t)
	if nl == old {
		t.Fatal("the stopped server is still the leader")
	}
	assertHas := func(ts *testServer, consistent bool) error {
		resp, err := c.client(t, ts).Catalog.ListServices(context.Background(), &meshfedv1.ListRequest{Read: &meshfedv1.ReadOptions{Consistent: consistent}})
		if err != nil {
			return err
		}
		got := map[string]uint64{}
		for _, s := range resp.Services {
			got[s.Meta.Name] = s.Meta.Version
		}
		for name, v := range acked {
			if got[name] != v {
				return fmt.Errorf("%s: %s has version %d, acknowledged %d", ts.cfg.NodeID, name, got[name], v)
			}
		}
		return nil
	}
	if err := assertHas(nl, true); err != nil {
		t.Fatal(err)
	}
	// The stopped server restarts from its data dir and catches up.
	restarted := startServer(t, old.cfg)
	waitReady(t, restarted, 30*time.Second)
	c.servers = replace(c.servers, old, restarted)
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := assertHas(restarted, false)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted server did not catch up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func replace(list []*testServer, old, nw *testServer) []*testServer {
	out := make([]*testServer, 0, len(list))
	for _, ts := range list {
		if ts == old {
			ts = nw
		}
		out = append(out, ts)
	}
	return out
}

func TestJoinRefusedWithoutValidToken(t *testing.T) {
	c := startTestCluster(t, 1)
	caFile := t.TempDir() + "/ca.pem"
	writeFile(t, caFile, c.caPEM)
	cases := map[string]string{"wrong token": "mfd_not-a-token", "read token": ""}
	readTok, err := c.client(t, c.servers[0]).Tokens.CreateToken(context.Background(), &meshfedv1.CreateTokenRequest{Kind: meshfedv1.TokenKind_TOKEN_KIND_READ})
	if err != nil {
		t.Fatal(err)
	}
	cases["read token"] = readTok.Secret
	for name, tok := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(t, "s4")
			cfg.JoinAddrs = []string{c.servers[0].cfg.APIAddr}
			cfg.JoinToken = tok
			cfg.CAFile = caFile
			srv, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err = srv.Run(ctx)
			if err == nil || ctx.Err() != nil {
				t.Fatalf("join with %s: got %v, want a refusal", name, err)
			}
			if code := status.Code(unwrapStatus(err)); code != codes.Unauthenticated && code != codes.PermissionDenied {
				t.Fatalf("join with %s: %v", name, err)
			}
		})
	}
	t.Run("missing token", func(t *testing.T) {
		cfg := testConfig(t, "s5")
		cfg.JoinAddrs = []string{c.servers[0].cfg.APIAddr}
		cfg.CAFile = caFile
		srv, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Run(context.Background()); err == nil {
			t.Fatal("join without a token started")
		}
	})
	members, err := c.client(t, c.servers[0]).Cluster.ListMembers(context.Background(), &meshfedv1.ListMembersRequest{})
	if err != nil || len(members.Members) != 1 {
		t.Fatalf("members after refused joins: %v %v", members, err)
	}
}

// unwrapStatus finds a gRPC status inside a wrapped error.
func unwrapStatus(err error) error {
	for e := err; e != nil; {
		if _, ok := status.FromError(e); ok {
			return e
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	return err
}

// cutProxy forwards TCP to target until cut, then drops everything: open
// connections are closed and new ones are accepted and never answered.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.setCut(true) })
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

// dial is the cut-off server's own dialer: while cut, it refuses, and a cut
// closes what it opened, so the server loses its outbound paths too.
func (p *cutProxy) dial(ctx context.Context, addr string) (net.Conn, error) {
	p.mu.Lock()
	cut := p.cut
	p.mu.Unlock()
	if cut {
		return nil, fmt.Errorf("dial %s: network cut by test", addr)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
	return c, nil
}

func (p *cutProxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns = append(p.conns, in)
		cut := p.cut
		p.mu.Unlock()
		if cut {
			continue // held open, never answered, closed on the next cut or cleanup
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, out)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(out, in); out.Close() }()
		go func() { _, _ = io.Copy(in, out); in.Close() }()
	}
}

func TestPartitionedFollowerRefusesWritesAndConsistentReads(t *testing.T) {
	c := startTestCluster(t, 2)
	// The third server is reached by the others only through a proxy we can cut.
	jt, err := c.client(t, c.servers[0]).Tokens.CreateToken(context.Background(), &meshfedv1.CreateTokenRequest{Kind: meshfedv1.TokenKind_TOKEN_KIND_SERVER_JOIN, MaxUses: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, "s3")
	proxy := newCutProxy(t, cfg.RaftAddr)
	cfg.RaftAdvertiseAddr = proxy.addr()
	cfg.dial = proxy.dial
	cfg.JoinAddrs = []string{c.servers[0].cfg.APIAddr}
	cfg.JoinToken = jt.Secret
	cfg.CAFile = t.TempDir() + "/ca.pem"
	writeFile(t, cfg.CAFile, c.caPEM)
	s3 := startServer(t, cfg)
	waitReady(t, s3, 30*time.Second)
	c.servers = append(c.servers, s3)
	c.waitMembers(t, 3)
	for c.leader(t) == s3 {
		// Make sure the server we cut off is a follower.
		if err := s3.srv.raft.LeadershipTransfer().Error(); err != nil {
			t.Fatal(err)
		}
	}
	c.createWithRetry(t, "before-cut")
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := c.client(t, s3).Catalog.GetService(context.Background(), &meshfedv1.GetRequest{Name: "before-cut"})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("s3 never applied the first write: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	proxy.setCut(true)
	cl := c.client(t, s3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = cl.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("during-cut", 80)})
	if code := status.Code(err); code != codes.Unavailable {
		t.Fatalf("write on the cut-off follower: %v, want Unavailable", err)
	}
	_, err = cl.Catalog.GetService(ctx, &meshfedv1.GetRequest{Name: "before-cut", Read: &meshfedv1.ReadOptions{Consistent: true}})
	if code := status.Code(err); code != codes.Unavailable {
		t.Fatalf("consistent read on the cut-off follower: %v, want Unavailable", err)
	}
	// Stale reads still work there, and the majority keeps working.
	if _, err := cl.Catalog.GetService(ctx, &meshfedv1.GetRequest{Name: "before-cut"}); err != nil {
		t.Fatalf("stale read on the cut-off follower: %v", err)
	}
	maj := c.client(t, c.leader(t))
	if _, err := maj.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("majority", 80)}); err != nil {
		t.Fatalf("majority write: %v", err)
	}
	if _, err := maj.Catalog.GetService(ctx, &meshfedv1.GetRequest{Name: "majority", Read: &meshfedv1.ReadOptions{Consistent: true}}); err != nil {
		t.Fatalf("majority consistent read: %v", err)
	}
	if _, err := c.client(t, s3).Catalog.GetService(ctx, &meshfedv1.GetRequest{Name: "during-cut"}); status.Code(err) != codes.NotFound {
		t.Fatalf("refused write was applied: %v", err)
	}

	proxy.setCut(false)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := cl.Catalog.GetService(ctx, &meshfedv1.GetRequest{Name: "majority", Read: &meshfedv1.ReadOptions{Consistent: true}})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healed follower never served the majority's write: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestJoinThroughFollowerAndWrongCluster(t *testing.T) {
	c := startTestCluster(t, 2)
	ctx := context.Background()
	admin := c.client(t, c.leader(t))
	caFile := t.TempDir() + "/ca.pem"
	writeFile(t, caFile, c.caPEM)
	newToken := func() *meshfedv1.Token {
		jt, err := admin.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{Kind: meshfedv1.TokenKind_TOKEN_KIND_SERVER_JOIN, MaxUses: 1})
		if err != nil {
			t.Fatal(err)
		}
		return jt
	}

	// A server configured for another cluster is refused before it is
	// added or its token is spent.
	jt := newToken()
	cfg := testConfig(t, "s3")
	cfg.Cluster = "elsewhere"
	cfg.JoinAddrs, cfg.JoinToken, cfg.CAFile = []string{c.leader(t).cfg.APIAddr}, jt.Secret, caFile
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Run(ctx); status.Code(unwrapStatus(err)) != codes.FailedPrecondition {
		t.Fatalf("join of another cluster: %v", err)
	}
	got, err := admin.Tokens.GetToken(ctx, &meshfedv1.GetRequest{Name: jt.Meta.Name})
	if err != nil || got.Uses != 0 {
		t.Fatalf("token after refused join: %v %v", got, err)
	}
	if n := len(raftServers(t, c.leader(t))); n != 2 {
		t.Fatalf("%d voters after refused join", n)
	}

	// Joining through a follower works: it forwards the call to the leader.
	cfg = testConfig(t, "s3")
	cfg.JoinAddrs, cfg.JoinToken, cfg.CAFile = []string{c.follower(t).cfg.APIAddr}, jt.Secret, caFile
	s3 := startServer(t, cfg)
	waitReady(t, s3, 30*time.Second)
	c.servers = append(c.servers, s3)
	c.waitMembers(t, 3)
}
