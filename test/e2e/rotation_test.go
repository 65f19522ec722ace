package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/svidclient"
	"github.com/meshfed/meshfed/internal/testharness"
)

// workload is one workload built on the client library.
type workload struct {
	id spiffeid.ID
	cl *svidclient.Client
}

func startWorkload(t *testing.T, c *testharness.Cluster, sa string, run bool) *workload {
	t.Helper()
	id := spiffeid.RequireFromString("spiffe://east.mesh/ns/default/sa/" + sa)
	// Retried: a busy machine can cost the young cluster an election.
	var tok *meshfedv1.Token
	if err := testharness.Poll(30*time.Second, func() error {
		var err error
		tok, err = c.Client(t, c.Leader()).Tokens.CreateToken(context.Background(), &meshfedv1.CreateTokenRequest{
			Kind: meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN, SpiffeId: id.String(), MaxUses: 1, Ttl: durationpb.New(time.Minute)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, s := range c.Servers {
		addrs = append(addrs, s.APIAddr)
	}
	cl, err := svidclient.New(svidclient.Config{Addrs: addrs, CAFile: c.CAFile, Token: tok.Secret, RenewJitter: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if run {
		err = cl.Start(context.Background())
		t.Cleanup(func() { cl.Close() })
	} else {
		err = cl.Attest(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	return &workload{id: id, cl: cl}
}

// handshakeLoad has a client workload open new mTLS connections to a server
// workload, each a full handshake, until stopped.
type handshakeLoad struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
}

func (l *handshakeLoad) fail(err error) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, err.Error())
	}
	l.mu.Unlock()
}

// serveMTLS accepts connections with cfg and answers each with one byte.
func serveMTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				if err := conn.(*tls.Conn).Handshake(); err == nil {
					_, _ = conn.Write([]byte{1})
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// dialOnce opens one connection, completes the handshake both ways (the
// byte arrives only if the server accepted the client) and closes it.
func dialOnce(addr string, cfg *tls.Config) error {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(conn, b); err != nil {
		return fmt.Errorf("server refused the client: %w", err)
	}
	return nil
}

func (l *handshakeLoad) run(ctx context.Context, addr string, cfg *tls.Config, workers int) func() {
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := dialOnce(addr, cfg); err != nil {
					l.fail(err)
				} else {
					l.ok.Add(1)
				}
			}
		}()
	}
	return wg.Wait
}

type staticSVID struct{ s *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.s, nil }

func caStatus(t *testing.T, c *testharness.Cluster) *meshfedv1.CAStatus {
	t.Helper()
	out, errOut, err := c.RunCLI(t, "ca", "status", "-o", "json")
	if err != nil {
		t.Fatalf("ca status: %v\n%s", err, errOut)
	}
	var st struct {
		Authorities []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"authorities"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("ca status output: %v\n%s", err, out)
	}
	res := &meshfedv1.CAStatus{}
	for _, a := range st.Authorities {
		res.Authorities = append(res.Authorities, &meshfedv1.Authority{Id: a.ID, State: meshfedv1.AuthorityState(meshfedv1.AuthorityState_value[a.State])})
	}
	return res
}

func activeID(st *meshfedv1.CAStatus) string {
	for _, a := range st.GetAuthorities() {
		if a.GetState() == meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE {
			return a.GetId()
		}
	}
	return ""
}

// TestRotationUnderLoad rotates the CA with "meshfed ca rotate" twice
// while two workloads built on the client library open new mTLS
// connections to each other continuously: no handshake may fail.
func TestRotationUnderLoad(t *testing.T) {
	c := testharness.StartCluster(t, 3, testharness.ClusterOptions{LogLevel: "info"})
	a := startWorkload(t, c, "a", true)
	b := startWorkload(t, c, "b", true)
	oldActive := activeID(caStatus(t, c))

	addr := serveMTLS(t, a.cl.ServerTLSConfig(tlsconfig.AuthorizeID(b.id)))
	ctx, cancel := context.WithCancel(context.Background())
	load := &handshakeLoad{}
	wait := load.run(ctx, addr, b.cl.ClientTLSConfig(tlsconfig.AuthorizeID(a.id)), 4)
	stopped := false
	stopLoad := func() {
		if !stopped {
			stopped = true
			cancel()
			wait()
		}
	}
	defer stopLoad()
	if err := testharness.Poll(20*time.Second, func() error {
		if load.ok.Load() < 100 {
			return fmt.Errorf("%d handshakes so far, %d failed", load.ok.Load(), load.failed.Load())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// 1. The whole sequence in one command.
	start, okBefore := time.Now(), load.ok.Load()
	out, errOut, err := c.RunCLI(t, "ca", "rotate", "--timeout", "2m")
	if err != nil {
		t.Fatalf("ca rotate: %v\n%s\n%s", err, out, errOut)
	}
	for _, want := range []string{"prepared authority", "is active", "is retired"} {
		if !strings.Contains(out, want) {
			t.Fatalf("ca rotate progress lacks %q:\n%s", want, out)
		}
	}
	elapsed := time.Since(start)
	rate := float64(load.ok.Load()-okBefore) / elapsed.Seconds()
	t.Logf("rotation took %s at %.0f new mTLS connections/s", elapsed.Round(time.Millisecond), rate)
	if rate < 200 {
		t.Errorf("only %.0f handshakes/s during the rotation; the check needs at least 200", rate)
	}
	firstNew := activeID(caStatus(t, c))
	if firstNew == "" || firstNew == oldActive {
		t.Fatalf("active authority after the rotation: %q (was %q)", firstNew, oldActive)
	}
	if st := a.cl.Status(); st.AuthorityID != firstNew {
		t.Fatalf("workload a holds an SVID of %s after the rotation, want %s", st.AuthorityID, firstNew)
	}

	// 2. Step by step. absent attests, then goes away before prepare: it
	// keeps only the bundle it had, with nothing but the current root.
	absent := startWorkload(t, c, "absent", false)
	absentSVID, err := absent.cl.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	absentBundle, err := absent.cl.GetX509BundleForTrustDomain(absent.id.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	absent.cl.Close()
	oldRoots := absentBundle.X509Authorities()

	for _, step := range []string{"prepare", "activate"} {
		if out, errOut, err := c.RunCLI(t, "ca", "rotate", "--step", step, "--timeout", "1m"); err != nil {
			t.Fatalf("%s: %v\n%s%s", step, err, out, errOut)
		}
	}
	// A workload attested after activate gets an SVID of the new authority,
	// which the absent workload, with only the old root, still accepts.
	late := startWorkload(t, c, "late", false)
	lateSVID, _ := late.cl.GetX509SVID()
	if late.cl.Status().AuthorityID == firstNew {
		t.Fatal("an SVID issued after activate comes from the old authority")
	}
	absentAddr := serveMTLS(t, tlsconfig.MTLSServerConfig(staticSVID{absentSVID}, absentBundle, tlsconfig.AuthorizeID(late.id)))
	if err := dialOnce(absentAddr, late.cl.ClientTLSConfig(tlsconfig.AuthorizeID(absent.id))); err != nil {
		t.Fatalf("a workload that missed prepare refused a peer issued after activate: %v", err)
	}
	if !chainsTo(lateSVID.Certificates, oldRoots) {
		t.Fatal("an SVID issued between activate and retire does not chain to the old root")
	}
	late.cl.Close()

	if out, errOut, err := c.RunCLI(t, "ca", "rotate", "--step", "retire", "--timeout", "1m"); err != nil {
		t.Fatalf("retire: %v\n%s%s", err, out, errOut)
	}
	// After retire, new SVIDs chain only to the new root.
	after := startWorkload(t, c, "after", false)
	afterSVID, _ := after.cl.GetX509SVID()
	afterBundle, _ := after.cl.GetX509BundleForTrustDomain(after.id.TrustDomain())
	after.cl.Close()
	if chainsTo(afterSVID.Certificates, oldRoots) {
		t.Fatal("an SVID issued after retire still chains to the retired root")
	}
	if !chainsTo(afterSVID.Certificates, afterBundle.X509Authorities()) || len(afterBundle.X509Authorities()) != 1 {
		t.Fatalf("after retire the bundle has %d roots and the SVID must chain to it", len(afterBundle.X509Authorities()))
	}

	stopLoad()
	t.Logf("%d handshakes in all, %d failed", load.ok.Load(), load.failed.Load())
	if n := load.failed.Load(); n > 0 {
		t.Fatalf("%d handshakes failed during the rotations, first errors: %v", n, load.errs)
	}
}

// chainsTo reports whether an SVID chain verifies against one of roots.
func chainsTo(chain []*x509.Certificate, roots []*x509.Certificate) bool {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// TestRotationSurvivesLeaderKill kills the leader between prepare and
// activate: "meshfed ca rotate" run meanwhile waits for the dead server,
// and completes once it is back. Restarting every server keeps the CA.
func TestRotationSurvivesLeaderKill(t *testing.T) {
	c := testharness.StartCluster(t, 3, testharness.ClusterOptions{LogLevel: "info"})
	before := caStatus(t, c)
	if out, errOut, err := c.RunCLI(t, "ca", "rotate", "--step", "prepare"); err != nil {
		t.Fatalf("prepare: %v\n%s%s", err, out, errOut)
	}
	leader := c.Leader()
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}

	// The rest of the rotation, started while a server is dead: activate
	// cannot confirm the dead server's watchers, so it waits.
	type result struct {
		out, errOut string
		err         error
	}
	done := make(chan result, 1)
	go func() {
		out, errOut, err := c.RunCLI(t, "ca", "rotate", "--timeout", "90s")
		done <- result{out, errOut, err}
	}()
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	if err := leader.WaitReady(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(100 * time.Second):
		t.Fatal("ca rotate did not finish")
	}
	if r.err != nil {
		t.Fatalf("ca rotate after the leader was killed: %v\n%s\n%s", r.err, r.out, r.errOut)
	}
	t.Logf("ca rotate printed:\n%s", r.out)
	if !strings.Contains(r.out, "resuming") || !strings.Contains(r.out, "is retired") {
		t.Fatalf("ca rotate did not resume and finish:\n%s", r.out)
	}
	after := caStatus(t, c)
	if len(after.GetAuthorities()) != len(before.GetAuthorities())+1 || activeID(after) == activeID(before) {
		t.Fatalf("authorities after the rotation: %v (before: %v)", after.GetAuthorities(), before.GetAuthorities())
	}

	// Restarting every server keeps the CA: no new root appears.
	for _, s := range c.Servers {
		if err := s.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range c.Servers {
		if err := s.WaitReady(60 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	again := caStatus(t, c)
	if len(again.GetAuthorities()) != len(after.GetAuthorities()) || activeID(again) != activeID(after) {
		t.Fatalf("authorities after restarting every server: %v, want %v", again.GetAuthorities(), after.GetAuthorities())
	}
	w := startWorkload(t, c, "web", false)
	if got := w.cl.Status().AuthorityID; got != activeID(after) {
		t.Fatalf("after the restarts SVIDs come from %q, want %q", got, activeID(after))
	}
	w.cl.Close()
}
