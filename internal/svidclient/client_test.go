package svidclient_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/svidclient"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

const (
	webToken = "web-secret"
	webID    = "spiffe://test.mesh/ns/default/sa/web"
	dbToken  = "db-secret"
	dbID     = "spiffe://test.mesh/ns/default/sa/db"
)

// testLogger writes the client's log to the test's log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// fastConfig is a Config for b's servers with short timeouts and backoff.
func fastConfig(t testing.TB, b *fakeBackend, token string, addrs ...string) svidclient.Config {
	b.mu.Lock()
	roots := b.rootsLocked()
	b.mu.Unlock()
	return svidclient.Config{
		Addrs:          addrs,
		CARoots:        roots,
		Token:          token,
		Logger:         testLogger(t),
		RequestTimeout: 2 * time.Second,
		MinBackoff:     20 * time.Millisecond,
		MaxBackoff:     200 * time.Millisecond,
		RenewJitter:    50 * time.Millisecond,
	}
}

// started returns a started client; it is closed when the test ends.
func started(t testing.TB, cfg svidclient.Config) *svidclient.Client {
	t.Helper()
	c, err := svidclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The deadline bounds the first attestation only: background renewal
	// stops on Close.
	if err := c.Attest(ctx); err != nil {
		t.Fatalf("Attest: %v", err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond until it holds or 10 seconds have passed.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func leafOf(t testing.TB, c *svidclient.Client) *x509.Certificate {
	t.Helper()
	s, err := c.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return s.Certificates[0]
}

func TestAttestVerifyAndRenew(t *testing.T) {
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	s := b.serve(t, "s1")
	c := started(t, fastConfig(t, b, webToken, s.addr))

	svid, err := c.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, c)
	if err != nil {
		t.Fatalf("the SVID does not verify against the client's own bundle: %v", err)
	}
	if id.String() != webID || svid.ID.String() != webID {
		t.Errorf("SVID for %s (%s), want %s", id, svid.ID, webID)
	}
	pub, ok := svid.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(svid.Certificates[0].PublicKey) {
		t.Error("the certificate is not for the locally generated key")
	}
	// The attestation request carried no SAN: the server chose the ID.
	b.mu.Lock()
	if n := len(b.lastCSR.URIs) + len(b.lastCSR.DNSNames); n != 0 {
		t.Errorf("attestation CSR carries %d SANs, want none", n)
	}
	b.mu.Unlock()
	st := c.Status()
	if st.ID != svid.ID || st.AuthorityID != "a1" || !st.ExpiresAt.Equal(svid.Certificates[0].NotAfter) {
		t.Errorf("status %+v", st)
	}
	// Half life, jittered earlier by at most a tenth, counted from receipt.
	life := time.Until(st.ExpiresAt)
	if until := time.Until(st.RenewAt); until > life/2+time.Second || until < life*2/5-time.Second {
		t.Errorf("renewal in %s for a lifetime of %s", until, life)
	}

	events, stop := c.Subscribe()
	defer stop()
	if err := c.Renew(context.Background()); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	renewed := leafOf(t, c)
	if renewed.SerialNumber.Cmp(svid.Certificates[0].SerialNumber) == 0 {
		t.Error("renewal kept the same certificate")
	}
	if got, _ := x509svid.IDFromCert(renewed); got != svid.ID {
		t.Errorf("renewed SVID for %s, want %s", got, svid.ID)
	}
	if renewed.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(svid.Certificates[0].PublicKey) {
		t.Error("renewal reused the key")
	}
	select {
	case ev := <-events:
		if ev&svidclient.EventSVID == 0 {
			t.Errorf("event %v, want svid", ev)
		}
	case <-time.After(5 * time.Second):
		t.Error("no event after the renewal")
	}
	if attests, renews := b.counts(); attests != 1 || renews != 1 {
		t.Errorf("%d attestations and %d renewals, want 1 and 1", attests, renews)
	}
}

func describeKey(k crypto.Signer) string {
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		return fmt.Sprintf("%T %s", k, k.Curve.Params().Name)
	case *rsa.PrivateKey:
		return fmt.Sprintf("%T %d", k, k.N.BitLen())
	}
	return fmt.Sprintf("%T", k)
}

func TestKeyAlgorithms(t *testing.T) {
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	s := b.serve(t, "s1")
	for _, tt := range []struct {
		alg  meshfedv1.KeyAlgorithm
		want string
	}{
		{meshfedv1.KeyAlgorithm_KEY_ALGORITHM_UNSPECIFIED, "*ecdsa.PrivateKey P-256"},
		{meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256, "*ecdsa.PrivateKey P-256"},
		{meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P384, "*ecdsa.PrivateKey P-384"},
		{meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_2048, "*rsa.PrivateKey 2048"},
	} {
		t.Run(tt.alg.String(), func(t *testing.T) {
			cfg := fastConfig(t, b, webToken, s.addr)
			cfg.KeyAlgorithm = tt.alg
			c, err := svidclient.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Attest(context.Background()); err != nil {
				t.Fatal(err)
			}
			svid, _ := c.GetX509SVID()
			if got := describeKey(svid.PrivateKey); got != tt.want {
				t.Errorf("key %s, want %s", got, tt.want)
			}
		})
	}
	if _, err := svidclient.New(svidclient.Config{Addrs: []string{s.addr}, CARoots: []*x509.Certificate{{}}, Token: "x", KeyAlgorithm: 99}); err == nil {
		t.Error("an unknown key algorithm was accepted")
	}
}

func TestRefusedTokenIsPermanent(t *testing.T) {
	b := newFakeBackend(t)
	s1 := b.serve(t, "s1")
	s2 := b.serve(t, "s2")
	c, err := svidclient.New(fastConfig(t, b, "wrong", s1.addr, s2.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = c.Start(ctx)
	if !errors.Is(err, svidclient.ErrRefused) {
		t.Fatalf("Start = %v, want ErrRefused", err)
	}
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "invalid workload-join token") {
		t.Errorf("error %q does not carry the server's status", err)
	}
	if ctx.Err() != nil {
		t.Error("Start retried until the deadline")
	}
	if attests, _ := b.counts(); attests != 1 {
		t.Errorf("%d attestation attempts, want 1", attests)
	}
	if _, err := c.GetX509SVID(); !errors.Is(err, svidclient.ErrNoSVID) {
		t.Errorf("GetX509SVID = %v, want ErrNoSVID", err)
	}
}

func TestExpectedIDMismatchIsRefused(t *testing.T) {
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	s := b.serve(t, "s1")
	cfg := fastConfig(t, b, webToken, s.addr)
	cfg.ExpectedID = spiffeid.RequireFromString(dbID)
	c, err := svidclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Attest(context.Background()); !errors.Is(err, svidclient.ErrRefused) || status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Attest = %v, want PERMISSION_DENIED", err)
	}
	// With the right ID the CSR asks for it.
	cfg.ExpectedID = spiffeid.RequireFromString(webID)
	c, _ = svidclient.New(cfg)
	if err := c.Attest(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.lastCSR.URIs) != 1 || b.lastCSR.URIs[0].String() != webID {
		t.Errorf("CSR SANs %v, want %s", b.lastCSR.URIs, webID)
	}
}

func TestFailover(t *testing.T) {
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	s1 := b.serve(t, "s1")
	s2 := b.serve(t, "s2")

	t.Run("unreachable first server", func(t *testing.T) {
		c := started(t, fastConfig(t, b, webToken, deadAddr(t), s2.addr))
		// The bundle stream starts with the server that answered.
		b.waitAck(t, "on s2", func(a ack) bool { return a.server == "s2" })
		if err := c.Renew(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unavailable answers", func(t *testing.T) {
		b.set(func() { b.unavailable = 3 })
		c, err := svidclient.New(fastConfig(t, b, webToken, s1.addr, s2.addr))
		if err != nil {
			t.Fatal(err)
		}
		// s1, s2, (backoff) s1 refuse; s2 answers.
		if err := c.Attest(context.Background()); err != nil {
			t.Fatal(err)
		}
		if b.takeUnavailable() {
			t.Error("the client gave up before using every UNAVAILABLE answer")
		}
	})
	t.Run("server stopped after attestation", func(t *testing.T) {
		s3 := b.serve(t, "s3")
		s4 := b.serve(t, "s4")
		c := started(t, fastConfig(t, b, webToken, s3.addr, s4.addr))
		b.waitAck(t, "on s3", func(a ack) bool { return a.server == "s3" })
		s3.stop()
		// Renewal and the bundle stream both move to s4.
		if err := c.Renew(context.Background()); err != nil {
			t.Fatal(err)
		}
		b.waitAck(t, "on s4", func(a ack) bool { return a.server == "s4" })
	})
}

func TestGivesUpWhenContextEnds(t *testing.T) {
	b := newFakeBackend(t)
	c, err := svidclient.New(fastConfig(t, b, webToken, deadAddr(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = c.Start(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "last error: attestation via") {
		t.Fatalf("Start = %v, want the deadline and the last connection error", err)
	}
	c.Close()
}

func TestBundleAcknowledgementsAndRotation(t *testing.T) {
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	s := b.serve(t, "s1")
	c := started(t, fastConfig(t, b, webToken, s.addr))
	events, stop := c.Subscribe()
	defer stop()

	b.waitAck(t, "of sequence 1 by an a1 SVID", func(a ack) bool {
		return a.req.GetAckSequence() == 1 && a.req.GetSvidAuthorityId() == "a1"
	})

	// prepare: a second root joins the bundle; nothing is renewed.
	a2 := newTestAuthority(t, "a2")
	b.prepare(a2)
	b.waitAck(t, "of sequence 2", func(a ack) bool { return a.req.GetAckSequence() == 2 && a.req.GetSvidAuthorityId() == "a1" })
	bundle, err := c.GetX509BundleForTrustDomain(testTD)
	if err != nil || !bundle.HasX509Authority(a2.root) || !bundle.HasX509Authority(b.authorities[0].root) {
		t.Fatalf("bundle after prepare: %v, %v", bundle, err)
	}
	if st := c.Status(); st.BundleSequence != 2 || st.AuthorityID != "a1" {
		t.Errorf("status after prepare %+v", st)
	}
	waitEvent(t, events, svidclient.EventBundle)
	if _, renews := b.counts(); renews != 0 {
		t.Errorf("%d renewals after prepare, want 0", renews)
	}

	// activate: the client renews (after its jitter) onto a2 and says so.
	b.activate(a2)
	b.waitAck(t, "by an a2 SVID", func(a ack) bool { return a.req.GetSvidAuthorityId() == "a2" })
	st := c.Status()
	if st.AuthorityID != "a2" || st.ActiveAuthorityID != "a2" || st.BundleSequence != 3 {
		t.Errorf("status after activate %+v", st)
	}
	if _, _, err := x509svid.Verify(leafChain(t, c), c); err != nil {
		t.Errorf("the a2 SVID does not verify: %v", err)
	}
	if !st.RenewAt.After(time.Now().Add(10 * time.Minute)) {
		t.Errorf("after moving to the active authority the next renewal is at half life, got %s", st.RenewAt)
	}
}

func leafChain(t testing.TB, c *svidclient.Client) []*x509.Certificate {
	s, err := c.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return s.Certificates
}

func waitEvent(t testing.TB, events <-chan svidclient.Event, want svidclient.Event) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev&want != 0 {
				return
			}
		case <-deadline:
			t.Fatalf("no %v event", want)
		}
	}
}

func TestRenewsAtHalfLife(t *testing.T) {
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	b.set(func() { b.ttl = 2 * time.Second })
	s := b.serve(t, "s1")
	c := started(t, fastConfig(t, b, webToken, s.addr))
	first := leafOf(t, c)
	acked := b.waitAck(t, "of the first SVID", func(a ack) bool { return a.req.GetAckSequence() == 1 })
	start := time.Now()
	waitFor(t, "an automatic renewal", func() bool { return leafOf(t, c).SerialNumber.Cmp(first.SerialNumber) != 0 })
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("renewed %s after attestation, want about half of 2s", d)
	}
	// A new acknowledgement follows each renewal.
	b.waitAck(t, "after the renewal", func(a ack) bool { return a.n > acked.n && a.req.GetAckSequence() == 1 })
}

func TestMutualTLSBetweenWorkloads(t *testing.T) {
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	b.addToken(dbToken, dbID)
	b.addToken("evil", "spiffe://test.mesh/ns/default/sa/evil")
	s := b.serve(t, "s1")
	db := started(t, fastConfig(t, b, dbToken, s.addr))
	web := started(t, fastConfig(t, b, webToken, s.addr))
	evil := started(t, fastConfig(t, b, "evil", s.addr))

	addr := serveTLS(t, db.ServerTLSConfig(tlsconfig.AuthorizeID(spiffeid.RequireFromString(webID))))
	dbAuth := tlsconfig.AuthorizeID(spiffeid.RequireFromString(dbID))

	if err := handshake(addr, web.ClientTLSConfig(dbAuth)); err != nil {
		t.Fatalf("web to db: %v", err)
	}
	if err := handshake(addr, evil.ClientTLSConfig(dbAuth)); err == nil {
		t.Fatal("db accepted a client that is not web")
	}
	// The client side checks the server's ID too.
	if err := handshake(addr, web.ClientTLSConfig(tlsconfig.AuthorizeID(spiffeid.RequireFromString(webID)))); err == nil {
		t.Fatal("web accepted db as a server with web's ID")
	}
	if err := handshake(addr, web.ClientTLSConfig(nil)); err == nil {
		t.Fatal("a nil authorizer accepted a server")
	}
	cfg := web.ClientTLSConfig(dbAuth)
	if cfg.MinVersion != tls.VersionTLS13 {
		t.Errorf("MinVersion %x", cfg.MinVersion)
	}
	// Renewal changes the presented certificate on the next handshake.
	if err := web.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := handshake(addr, web.ClientTLSConfig(dbAuth)); err != nil {
		t.Fatalf("after renewal: %v", err)
	}
}

// serveTLS accepts TLS connections with cfg, completing the handshake and
// writing "ok"; it stops when the test ends.
func serveTLS(t testing.TB, cfg *tls.Config) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			if conn.(*tls.Conn).Handshake() == nil {
				io.WriteString(conn, "ok")
			}
			conn.Close()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return l.Addr().String()
}

// handshake connects and reads the server's "ok", which only comes after
// both sides accepted each other.
func handshake(addr string, cfg *tls.Config) error {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	if conn.ConnectionState().Version != tls.VersionTLS13 {
		return errors.New("not TLS 1.3")
	}
	return nil
}

func TestWriteFiles(t *testing.T) {
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	s := b.serve(t, "s1")
	c, err := svidclient.New(fastConfig(t, b, webToken, s.addr))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "certs")
	if _, err := c.WriteFiles(dir); !errors.Is(err, svidclient.ErrNoSVID) {
		t.Errorf("WriteFiles before attestation = %v", err)
	}
	if err := c.Attest(context.Background()); err != nil {
		t.Fatal(err)
	}
	files, err := c.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	if files.SVID != filepath.Join(dir, "svid.pem") || files.Key != filepath.Join(dir, "key.pem") || files.Bundle != filepath.Join(dir, "bundle.pem") {
		t.Errorf("files %+v", files)
	}
	for path, mode := range map[string]os.FileMode{files.SVID: 0o644, files.Key: 0o600, files.Bundle: 0o644} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", path, fi.Mode().Perm(), mode)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Errorf("dir holds %d entries, want the 3 files (no temporaries)", len(entries))
	}
	// The files load with go-spiffe and the key is PKCS#8.
	svid, err := x509svid.Load(files.SVID, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := os.ReadFile(files.Key)
	if !strings.HasPrefix(string(keyPEM), "-----BEGIN PRIVATE KEY-----") {
		t.Errorf("key.pem is not PKCS#8: %.40s", keyPEM)
	}
	roots, err := tlsutil.LoadCertificatesFile(files.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	set := x509bundle.FromX509Authorities(testTD, roots)
	if _, _, err := x509svid.Verify(svid.Certificates, set); err != nil {
		t.Errorf("svid.pem does not verify against bundle.pem: %v", err)
	}
	// Writing again replaces the files.
	if err := c.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	again, _ := x509svid.Load(files.SVID, files.Key)
	if again.Certificates[0].Equal(svid.Certificates[0]) {
		t.Error("WriteFiles after a renewal kept the old certificate")
	}
}

func TestCloseStopsEverything(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	s := b.serve(t, "s1")
	c, err := svidclient.New(fastConfig(t, b, webToken, s.addr))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	b.waitAck(t, "from the running client", func(a ack) bool { return a.req.GetAckSequence() == 1 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v after cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if err := c.Start(context.Background()); !errors.Is(err, svidclient.ErrClosed) {
		t.Errorf("Start after Close = %v", err)
	}
	// The last SVID stays readable.
	if _, err := c.GetX509SVID(); err != nil {
		t.Error(err)
	}
	s.stop()
}

// TestRetiredRootAttestsAgain: a forced rotation drops the root of the
// SVID from the bundle at once. The SVID can no longer authenticate, so the
// client attests again with its token, without waiting for its jitter.
func TestRetiredRootAttestsAgain(t *testing.T) {
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	s := b.serve(t, "s1")
	cfg := fastConfig(t, b, webToken, s.addr)
	// Far longer than the test: only the lost trust can explain a new SVID.
	cfg.RenewJitter = time.Hour
	c := started(t, cfg)
	b.waitAck(t, "of the first bundle", func(a ack) bool { return a.req.GetAckSequence() == 1 })

	a2 := newTestAuthority(t, "a2")
	b.activateAndRetire(a2)
	waitFor(t, "an SVID from a2", func() bool { return c.Status().AuthorityID == "a2" })
	if attests, renews := b.counts(); attests != 2 || renews != 0 {
		t.Errorf("%d attestations and %d renewals, want 2 and 0", attests, renews)
	}
	if _, _, err := x509svid.Verify(leafChain(t, c), c); err != nil {
		t.Errorf("the new SVID does not verify against the new bundle: %v", err)
	}
	b.waitAck(t, "by an a2 SVID", func(a ack) bool { return a.req.GetSvidAuthorityId() == "a2" })
}

// TestRenewalRefusedAttestsAgain: when the servers no longer accept the
// SVID as a client certificate, Renew falls back to the token.
func TestRenewalRefusedAttestsAgain(t *testing.T) {
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	s := b.serve(t, "s1")
	c, err := svidclient.New(fastConfig(t, b, webToken, s.addr))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Attest(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := leafOf(t, c)
	b.set(func() { b.refuseRenew = true })
	if err := c.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	if attests, renews := b.counts(); attests != 2 || renews != 1 {
		t.Errorf("%d attestations and %d renewals, want 2 and 1", attests, renews)
	}
	if leafOf(t, c).Equal(first) {
		t.Error("the SVID did not change")
	}
	// Without uses left on the token the refusal is returned.
	b.set(func() { delete(b.tokens, webToken) })
	if err := c.Renew(context.Background()); !errors.Is(err, svidclient.ErrRefused) || status.Code(err) != codes.Unauthenticated {
		t.Errorf("Renew = %v, want the attestation's refusal", err)
	}
}

func TestOlderBundleWaitsForGrace(t *testing.T) {
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	s := b.serve(t, "s1")
	cfg := fastConfig(t, b, webToken, s.addr)
	cfg.StaleBundleGrace = 300 * time.Millisecond
	c := started(t, cfg)

	b.setSequence(5, nil)
	first := b.waitAck(t, "of sequence 5", func(a ack) bool { return a.req.GetAckSequence() == 5 })
	// A lower sequence (a lagging server, a restored snapshot) is not
	// applied at once: the client keeps acknowledging what it trusts.
	a2 := newTestAuthority(t, "a2")
	start := time.Now()
	b.setSequence(3, a2)
	b.waitAck(t, "of sequence 5 again", func(a ack) bool { return a.n > first.n && a.req.GetAckSequence() == 5 })
	bundle, _ := c.GetX509BundleForTrustDomain(testTD)
	if bundle.HasX509Authority(a2.root) && time.Since(start) < cfg.StaleBundleGrace {
		t.Fatal("the older bundle was applied at once")
	}
	// With no newer bundle in the grace period, it is applied.
	b.waitAck(t, "of sequence 3", func(a ack) bool { return a.req.GetAckSequence() == 3 })
	if time.Since(start) < cfg.StaleBundleGrace {
		t.Error("the older bundle was applied before the grace period")
	}
	bundle, _ = c.GetX509BundleForTrustDomain(testTD)
	if !bundle.HasX509Authority(a2.root) || c.Status().BundleSequence != 3 {
		t.Errorf("after the grace period: sequence %d, has a2 %v", c.Status().BundleSequence, bundle.HasX509Authority(a2.root))
	}
}

func TestExpiredSVIDAttestsAgain(t *testing.T) {
	b := newFakeBackend(t)
	b.addToken(webToken, webID)
	b.set(func() { b.ttl = 2 * time.Second })
	s := b.serve(t, "s1")
	c := started(t, fastConfig(t, b, webToken, s.addr))
	first := leafOf(t, c)
	// Every renewal fails until well after the SVID expired.
	b.set(func() { b.downUntil = first.NotAfter.Add(300 * time.Millisecond) })
	waitFor(t, "a second attestation", func() bool {
		attests, _ := b.counts()
		return attests == 2
	})
	waitFor(t, "a new SVID", func() bool { return leafOf(t, c).NotAfter.After(first.NotAfter) })
	if _, _, err := x509svid.Verify(leafChain(t, c), c); err != nil {
		t.Errorf("the new SVID does not verify: %v", err)
	}
}
