package controlplane

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/ca"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// testWatcher is a workload that watches the bundle the way the client
// library does: it acknowledges every bundle and, when the active authority
// is not the one of its SVID, renews and acknowledges again.
type testWatcher struct {
	t   *testing.T
	c   *testCluster
	ts  *testServer
	mu  sync.Mutex
	svd *meshfedv1.SVIDResponse
	// bundles records every bundle received.
	bundles []*meshfedv1.WatchBundleResponse
	renewed int
}

func startTestWatcher(t *testing.T, c *testCluster, ts *testServer, id string) (*testWatcher, func()) {
	t.Helper()
	tok := workloadToken(t, c, id, 1, time.Minute)
	key := newKey(t)
	resp, err := workloadClient(t, c, ts, "", nil).Workload.Attest(context.Background(), &meshfedv1.AttestRequest{Token: tok.Secret, Csr: csrFor(t, key, nil)})
	if err != nil {
		t.Fatal(err)
	}
	w := &testWatcher{t: t, c: c, ts: ts, svd: resp}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		cl := workloadClient(t, c, ts, resp.GetCertificateChainPem(), key)
		stream, err := cl.Workload.WatchBundle(ctx)
		if err != nil {
			return
		}
		if err := stream.Send(&meshfedv1.WatchBundleRequest{SvidAuthorityId: resp.GetAuthorityId()}); err != nil {
			return
		}
		for {
			b, err := stream.Recv()
			if err != nil {
				return
			}
			w.mu.Lock()
			w.bundles = append(w.bundles, b)
			cur := w.svd
			w.mu.Unlock()
			if b.GetActiveAuthorityId() != cur.GetAuthorityId() {
				key2 := newKey(t)
				wl := workloadClient(t, c, ts, cur.GetCertificateChainPem(), key)
				r2, err := wl.Workload.Renew(ctx, &meshfedv1.RenewRequest{Csr: csrFor(t, key2, nil)})
				if err != nil {
					t.Errorf("renewing after activation: %v", err)
					return
				}
				key = key2
				w.mu.Lock()
				w.svd = r2
				w.renewed++
				w.mu.Unlock()
				cur = r2
			}
			if err := stream.Send(&meshfedv1.WatchBundleRequest{AckSequence: b.GetBundle().GetSequence(), SvidAuthorityId: cur.GetAuthorityId()}); err != nil {
				return
			}
		}
	}()
	return w, func() { cancel(); <-done }
}

func (w *testWatcher) current() *meshfedv1.SVIDResponse {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.svd
}

// rotate runs a rotation request to its end and returns the progress.
func rotate(t *testing.T, cl meshfedv1.CAServiceClient, req *meshfedv1.RotateCARequest) ([]*meshfedv1.RotateCAProgress, error) {
	t.Helper()
	stream, err := cl.RotateCA(context.Background(), req)
	if err != nil {
		return nil, err
	}
	var out []*meshfedv1.RotateCAProgress
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, p)
	}
}

func authorityIn(st *meshfedv1.CAStatus, state meshfedv1.AuthorityState) []*meshfedv1.Authority {
	var out []*meshfedv1.Authority
	for _, a := range st.GetAuthorities() {
		if a.GetState() == state {
			out = append(out, a)
		}
	}
	return out
}

func TestRotationWithWatchers(t *testing.T) {
	c := startTestCluster(t, 3)
	ctx := context.Background()
	// Watchers on a follower and on the leader: propagation is counted
	// across servers.
	w1, stop1 := startTestWatcher(t, c, c.follower(t), webID)
	defer stop1()
	w2, stop2 := startTestWatcher(t, c, c.leader(t), dbID)
	defer stop2()

	admin := c.client(t, c.follower(t))
	before, err := admin.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	oldActive := authorityIn(before, meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE)
	if len(oldActive) != 1 {
		t.Fatalf("before rotation: %v", before)
	}
	oldRoot := certs(t, oldActive[0].GetRootPem())[0]

	// Through a follower: the stream is forwarded to the leader.
	progress, err := rotate(t, admin.CA, &meshfedv1.RotateCARequest{Timeout: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatalf("rotation: %v (progress %v)", err, progress)
	}
	var msgs []string
	for _, p := range progress {
		msgs = append(msgs, p.GetMessage())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"prepared authority", "is active", "is retired"} {
		if !strings.Contains(all, want) {
			t.Fatalf("progress lacks %q:\n%s", want, all)
		}
	}
	final := progress[len(progress)-1].GetStatus()
	if final == nil {
		t.Fatal("the last progress message carries no status")
	}
	newActive := authorityIn(final, meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE)
	retired := authorityIn(final, meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRED)
	if len(newActive) != 1 || len(retired) != 1 || retired[0].GetId() != oldActive[0].GetId() || newActive[0].GetId() == oldActive[0].GetId() {
		t.Fatalf("after rotation: %v", final)
	}
	// The watchers acknowledge the bundle without the old root. Read from
	// the leader from here on: a follower may not have applied the retire.
	// New connections must trust the new root: servers no longer present a
	// chain to the retired one.
	refreshCA(t, c, admin)
	admin = c.client(t, c.leader(t))
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := admin.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if st.GetWatchers() == 2 && st.GetWatchersCurrent() == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watchers %d, current %d; want 2 and 2", st.GetWatchers(), st.GetWatchersCurrent())
		}
		time.Sleep(50 * time.Millisecond)
	}
	newRoot := certs(t, newActive[0].GetRootPem())[0]

	// Both watchers moved to the new authority and saw the new root
	// before it signed anything.
	for _, w := range []*testWatcher{w1, w2} {
		if w.current().GetAuthorityId() != newActive[0].GetId() {
			t.Fatalf("watcher still holds an SVID of %s", w.current().GetAuthorityId())
		}
		w.mu.Lock()
		sawBothRoots := false
		for _, b := range w.bundles {
			if len(b.GetBundle().GetRootsPem()) == 2 && b.GetActiveAuthorityId() == oldActive[0].GetId() {
				sawBothRoots = true
			}
		}
		w.mu.Unlock()
		if !sawBothRoots {
			t.Fatal("a watcher never saw the bundle with both roots while the old authority was active")
		}
	}

	// The bundle now holds only the new root, and new SVIDs chain to it
	// alone.
	tb, err := admin.CA.GetTrustBundle(ctx, &meshfedv1.GetTrustBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if roots := tb.GetBundles()[0].GetRootsPem(); len(roots) != 1 || !certs(t, roots[0])[0].Equal(newRoot) {
		t.Fatalf("bundle after retire: %v", roots)
	}
	chain := certs(t, w1.current().GetCertificateChainPem())
	if !verifiesAgainst(chain, newRoot) {
		t.Fatal("an SVID issued after activation does not verify against the new root")
	}
	key := newKey(t)
	resp, err := workloadClient(t, c, c.servers[0], "", nil).Workload.Attest(ctx, &meshfedv1.AttestRequest{
		Token: workloadToken(t, c, webID, 1, time.Minute).Secret, Csr: csrFor(t, key, nil)})
	if err != nil {
		t.Fatal(err)
	}
	chain = certs(t, resp.GetCertificateChainPem())
	if len(chain) != 2 || !verifiesAgainst(chain, newRoot) || verifiesAgainst(chain, oldRoot) {
		t.Fatalf("an SVID issued after retire has %d certificates; it must chain only to the new root", len(chain))
	}

	// No server trusts the retired root any more, or presents a chain to
	// it: a client that knows only the old root cannot connect.
	for _, ts := range c.servers {
		deadline := time.Now().Add(10 * time.Second)
		for {
			trusted := slices.ContainsFunc(ts.srv.tls.Roots(), oldRoot.Equal)
			presented := chainsToRoot(ts.srv.tls.Certificate(), oldRoot)
			if !trusted && !presented {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s after retire: trusts the old root %v, presents a chain to it %v", ts.cfg.NodeID, trusted, presented)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Every server moved its own certificate to the new authority and the
	// cluster still replicates.
	for _, ts := range c.servers {
		if got := ts.srv.ownCertAuthority(); got != newActive[0].GetId() {
			t.Fatalf("%s presents a certificate of %q", ts.cfg.NodeID, got)
		}
	}
	if _, err := c.client(t, c.follower(t)).Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svcNamed("after-rotation")}); err != nil {
		t.Fatal(err)
	}

	// Nothing is left to retire or activate.
	_, err = rotate(t, admin.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_RETIRE})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = rotate(t, admin.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE})
	wantCode(t, err, codes.FailedPrecondition)
}

func chainsToRoot(chain []*x509.Certificate, root *x509.Certificate) bool {
	return len(chain) > 0 && verifiesAgainst(chain, root)
}

func verifiesAgainst(chain []*x509.Certificate, root *x509.Certificate) bool {
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

func certs(t *testing.T, pemData string) []*x509.Certificate {
	t.Helper()
	out, err := tlsutil.ParseCertificatesPEM([]byte(pemData))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func svcNamed(name string) *meshfedv1.Service {
	return &meshfedv1.Service{Meta: &meshfedv1.Meta{Namespace: "default", Name: name}, Port: 80, Protocol: meshfedv1.Protocol_PROTOCOL_HTTP}
}

func TestBundleEndpoint(t *testing.T) {
	c := startTestCluster(t, 1)
	ts := c.servers[0]
	roots, err := tlsutil.ParseCertificatesPEM(c.caPEM)
	if err != nil {
		t.Fatal(err)
	}
	td := ts.srv.td
	url := "https://" + ts.cfg.HTTPAddr + BundleEndpointPath
	fetch := func() *spiffebundle.Bundle {
		t.Helper()
		b, err := federation.FetchBundle(context.Background(), td, url,
			federation.WithSPIFFEAuth(x509bundle.FromX509Authorities(td, roots), spiffeid.RequireFromPath(td, "/meshfed/server/s1")))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := fetch()
	if len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(roots[0]) {
		t.Fatalf("bundle endpoint roots %d, want the cluster root", len(b.X509Authorities()))
	}
	seq, ok := b.SequenceNumber()
	hint, hok := b.RefreshHint()
	if !ok || seq == 0 || !hok || hint != bundleRefreshHint {
		t.Fatalf("sequence %d (%v), refresh hint %s (%v)", seq, ok, hint, hok)
	}

	// prepare adds the new root and bumps the sequence.
	if _, err := rotate(t, c.client(t, ts).CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_PREPARE}); err != nil {
		t.Fatal(err)
	}
	b = fetch()
	seq2, _ := b.SequenceNumber()
	if len(b.X509Authorities()) != 2 || seq2 <= seq {
		t.Fatalf("after prepare: %d roots, sequence %d (was %d)", len(b.X509Authorities()), seq2, seq)
	}

	// The wrong endpoint ID is refused by the client (https_spiffe).
	_, err = federation.FetchBundle(context.Background(), td, url,
		federation.WithSPIFFEAuth(x509bundle.FromX509Authorities(td, roots), spiffeid.RequireFromPath(td, "/meshfed/server/other")))
	if err == nil {
		t.Fatal("fetch with another endpoint ID succeeded")
	}
}

func TestActivateWaitsForWatchers(t *testing.T) {
	c := startTestCluster(t, 1)
	ctx := context.Background()
	ts := c.servers[0]
	admin := c.client(t, ts)

	// A watcher that never acknowledges anything.
	tok := workloadToken(t, c, webID, 1, time.Minute)
	key := newKey(t)
	resp, err := workloadClient(t, c, ts, "", nil).Workload.Attest(ctx, &meshfedv1.AttestRequest{Token: tok.Secret, Csr: csrFor(t, key, nil)})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := workloadClient(t, c, ts, resp.GetCertificateChainPem(), key).Workload.WatchBundle(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}

	if _, err := rotate(t, admin.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_PREPARE}); err != nil {
		t.Fatal(err)
	}
	// A second prepare is refused while one is pending.
	_, err = rotate(t, admin.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_PREPARE})
	wantCode(t, err, codes.FailedPrecondition)

	progress, err := rotate(t, admin.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE, Timeout: durationpb.New(time.Second)})
	wantCode(t, err, codes.DeadlineExceeded)
	if len(progress) == 0 || !strings.Contains(progress[0].GetMessage(), "0 of 1 watchers") {
		t.Fatalf("progress while waiting: %v", progress)
	}
	st, err := admin.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(authorityIn(st, meshfedv1.AuthorityState_AUTHORITY_STATE_PREPARED)) != 1 || st.GetRotationStep() != "activate" || st.GetWatchers() != 1 || st.GetWatchersCurrent() != 0 {
		t.Fatalf("a timed-out activate changed the authorities: %v", st)
	}

	// Bad requests.
	_, err = rotate(t, admin.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep(42)})
	wantCode(t, err, codes.InvalidArgument)
	_, err = rotate(t, admin.CA, &meshfedv1.RotateCARequest{Timeout: durationpb.New(-time.Second)})
	wantCode(t, err, codes.InvalidArgument)
	_, err = rotate(t, c.clientWithToken(t, ts, readToken(t, c)).CA, &meshfedv1.RotateCARequest{})
	wantCode(t, err, codes.PermissionDenied)

	// --force activates anyway; then the silent watcher's SVID holds up
	// retire until forced too.
	if _, err := rotate(t, admin.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE, Force: true}); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&meshfedv1.WatchBundleRequest{SvidAuthorityId: resp.GetAuthorityId()}); err != nil {
		t.Fatal(err)
	}
	oldID := resp.GetAuthorityId()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := admin.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		counted := false
		for _, a := range st.GetAuthorities() {
			counted = counted || (a.GetId() == oldID && a.GetWatcherSvids() == 1)
		}
		if counted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watcher's SVID is not counted under %s: %v", oldID, st.GetAuthorities())
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, err = rotate(t, admin.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_RETIRE, Timeout: durationpb.New(time.Second)})
	wantCode(t, err, codes.DeadlineExceeded)
	if _, err := rotate(t, admin.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_RETIRE, Force: true}); err != nil {
		t.Fatal(err)
	}
	st, err = admin.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(authorityIn(st, meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRED)) != 1 || st.GetRotationStep() != "" {
		t.Fatalf("after forced retire: %v", st)
	}
	// The retired authority's SVID can no longer renew.
	_, err = workloadClient(t, c, ts, resp.GetCertificateChainPem(), key).Workload.Renew(ctx, &meshfedv1.RenewRequest{Csr: csrFor(t, newKey(t), nil)})
	if code := status.Code(err); code != codes.Unauthenticated && code != codes.Unavailable {
		t.Fatalf("renewal with a retired authority's SVID: %v", err)
	}
}

func readToken(t *testing.T, c *testCluster) string {
	t.Helper()
	tok, err := c.client(t, c.servers[0]).Tokens.CreateToken(context.Background(), &meshfedv1.CreateTokenRequest{Kind: meshfedv1.TokenKind_TOKEN_KIND_READ})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Secret
}

// operatorCA makes a root and, signed by it, an intermediate, as an
// operator's own PKI would, returning PEMs.
func operatorCA(t *testing.T, notAfter time.Time) (rootPEM, rootKeyPEM, interPEM, interKeyPEM string) {
	t.Helper()
	rootKey, interKey := newKey(t), newKey(t)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "operator root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, MaxPathLen: 2}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	interTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "operator intermediate"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, MaxPathLenZero: true}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, root, interKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(interDER)
	keyPEM := func(k crypto.Signer) string {
		p, err := ca.MarshalPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return string(p)
	}
	return string(tlsutil.EncodeCertificatesPEM([]*x509.Certificate{root})), keyPEM(rootKey),
		string(tlsutil.EncodeCertificatesPEM([]*x509.Certificate{inter})), keyPEM(interKey)
}

func TestImportAuthority(t *testing.T) {
	c := startTestCluster(t, 1)
	ctx := context.Background()
	ts := c.servers[0]
	admin := c.client(t, ts)
	rootPEM, rootKey, interPEM, interKey := operatorCA(t, time.Now().Add(24*time.Hour))
	otherRoot, otherRootKey, _, _ := operatorCA(t, time.Now().Add(24*time.Hour))
	expRoot, expRootKey, _, _ := operatorCA(t, time.Now().Add(-time.Minute))

	bad := []struct {
		name string
		req  *meshfedv1.ImportAuthorityRequest
	}{
		{"no root", &meshfedv1.ImportAuthorityRequest{PrivateKeyPem: rootKey}},
		{"no key", &meshfedv1.ImportAuthorityRequest{RootPem: rootPEM}},
		{"key of another root", &meshfedv1.ImportAuthorityRequest{RootPem: rootPEM, PrivateKeyPem: otherRootKey}},
		{"intermediate of another root", &meshfedv1.ImportAuthorityRequest{RootPem: otherRoot, IntermediatePem: interPEM, PrivateKeyPem: interKey}},
		{"root key for the intermediate", &meshfedv1.ImportAuthorityRequest{RootPem: rootPEM, IntermediatePem: interPEM, PrivateKeyPem: rootKey}},
		{"expired root", &meshfedv1.ImportAuthorityRequest{RootPem: expRoot, PrivateKeyPem: expRootKey}},
		{"garbage", &meshfedv1.ImportAuthorityRequest{RootPem: "not pem", PrivateKeyPem: "not pem"}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := admin.CA.ImportAuthority(ctx, tc.req)
			wantCode(t, err, codes.InvalidArgument)
		})
	}
	st, err := admin.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetAuthorities()) != 1 {
		t.Fatalf("refused imports left authorities behind: %v", st.GetAuthorities())
	}

	// An intermediate signed by the operator's root, with its key: the root
	// key never reaches the cluster.
	au, err := admin.CA.ImportAuthority(ctx, &meshfedv1.ImportAuthorityRequest{RootPem: rootPEM, IntermediatePem: interPEM, PrivateKeyPem: interKey})
	if err != nil {
		t.Fatal(err)
	}
	if !au.GetExternal() || au.GetState() != meshfedv1.AuthorityState_AUTHORITY_STATE_PREPARED {
		t.Fatalf("imported authority: %v", au)
	}
	if _, err := rotate(t, admin.CA, &meshfedv1.RotateCARequest{Timeout: durationpb.New(30 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	refreshCA(t, c, admin)
	resp, err := workloadClient(t, c, ts, "", nil).Workload.Attest(ctx, &meshfedv1.AttestRequest{
		Token: workloadToken(t, c, webID, 1, time.Minute).Secret, Csr: csrFor(t, newKey(t), nil)})
	if err != nil {
		t.Fatal(err)
	}
	opRoot := certs(t, rootPEM)[0]
	if chain := certs(t, resp.GetCertificateChainPem()); !verifiesAgainst(chain, opRoot) || resp.GetAuthorityId() != au.GetId() {
		t.Fatalf("SVID after rotating onto the imported CA does not chain to the operator's root (authority %s)", resp.GetAuthorityId())
	}

	// And off it again: a generated authority replaces the imported one.
	if _, err := rotate(t, admin.CA, &meshfedv1.RotateCARequest{Timeout: durationpb.New(30 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	// Clients verify servers against the current bundle: the bootstrap
	// root is gone.
	refreshCA(t, c, admin)
	resp, err = workloadClient(t, c, ts, "", nil).Workload.Attest(ctx, &meshfedv1.AttestRequest{
		Token: workloadToken(t, c, webID, 1, time.Minute).Secret, Csr: csrFor(t, newKey(t), nil)})
	if err != nil {
		t.Fatal(err)
	}
	if chain := certs(t, resp.GetCertificateChainPem()); verifiesAgainst(chain, opRoot) {
		t.Fatal("after rotating off the imported CA, SVIDs still chain to it")
	}

	// A root with its key: the cluster makes the intermediate.
	au2, err := admin.CA.ImportAuthority(ctx, &meshfedv1.ImportAuthorityRequest{RootPem: rootPEM, PrivateKeyPem: rootKey})
	if err != nil {
		t.Fatal(err)
	}
	if certs(t, au2.GetIntermediatePem())[0].CheckSignatureFrom(opRoot) != nil {
		t.Fatal("generated intermediate is not signed by the imported root")
	}
}

func TestRotationSurvivesLeaderLossAndRestarts(t *testing.T) {
	c := startTestCluster(t, 3)
	ctx := context.Background()

	if _, err := rotate(t, c.client(t, c.leader(t)).CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_PREPARE}); err != nil {
		t.Fatal(err)
	}
	// The leader dies between prepare and activate, then comes back.
	old := c.leader(t)
	old.stop()
	restarted := startServer(t, old.cfg)
	c.servers = replace(c.servers, old, restarted)
	waitReady(t, restarted, 30*time.Second)

	// Running the rotation again resumes at activate.
	adm := c.client(t, c.leader(t))
	progress, err := rotate(t, adm.CA, &meshfedv1.RotateCARequest{Timeout: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatalf("resumed rotation: %v (%v)", err, progress)
	}
	if !strings.Contains(progress[0].GetMessage(), "resuming") {
		t.Fatalf("rotation did not resume: first message %q", progress[0].GetMessage())
	}
	final := progress[len(progress)-1].GetStatus()
	active := authorityIn(final, meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE)
	if len(active) != 1 || len(authorityIn(final, meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRED)) != 1 || len(final.GetAuthorities()) != 2 {
		t.Fatalf("after the resumed rotation: %v", final.GetAuthorities())
	}
	// Every server signs with the same authority.
	for _, ts := range c.servers {
		deadline := time.Now().Add(10 * time.Second)
		for ts.srv.ca.ActiveID() != active[0].GetId() {
			if time.Now().After(deadline) {
				t.Fatalf("%s signs with %q, want %q", ts.cfg.NodeID, ts.srv.ca.ActiveID(), active[0].GetId())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Restarting every server keeps the CA: no new root appears.
	refreshCA(t, c, adm)
	for i, ts := range c.servers {
		ts.stop()
		c.servers[i] = startServer(t, ts.cfg)
	}
	for _, ts := range c.servers {
		waitReady(t, ts, 30*time.Second)
	}
	st, err := c.client(t, c.leader(t)).CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetAuthorities()) != 2 || authorityIn(st, meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE)[0].GetId() != active[0].GetId() {
		t.Fatalf("after restarting every server: %v", st.GetAuthorities())
	}
	resp, err := workloadClient(t, c, c.servers[1], "", nil).Workload.Attest(ctx, &meshfedv1.AttestRequest{
		Token: workloadToken(t, c, webID, 1, time.Minute).Secret, Csr: csrFor(t, newKey(t), nil)})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetAuthorityId() != active[0].GetId() {
		t.Fatalf("after restarts SVIDs come from %s", resp.GetAuthorityId())
	}
}

// refreshCA makes the test's clients trust the cluster's current bundle, as
// an operator does with "meshfed ca bundle > ca.pem" after a rotation.
func refreshCA(t *testing.T, c *testCluster, admin *client.Client) {
	t.Helper()
	tb, err := admin.CA.GetTrustBundle(context.Background(), &meshfedv1.GetTrustBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	c.caPEM = []byte(strings.Join(tb.GetBundles()[0].GetRootsPem(), ""))
}
