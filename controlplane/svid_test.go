package controlplane

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

const (
	webID = "spiffe://test.mesh/ns/default/sa/web"
	dbID  = "spiffe://test.mesh/ns/default/sa/db"
)

// workloadToken creates a workload-join token bound to id.
func workloadToken(t *testing.T, c *testCluster, id string, uses uint32, ttl time.Duration) *meshfedv1.Token {
	t.Helper()
	tok, err := c.client(t, c.servers[0]).Tokens.CreateToken(context.Background(), &meshfedv1.CreateTokenRequest{
		Kind: meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN, SpiffeId: id, MaxUses: uses, Ttl: durationpb.New(ttl)})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// csrFor makes a CSR for key, with the given extensions applied to the
// template by edit (nil: no SAN at all).
func csrFor(t *testing.T, key crypto.Signer, edit func(*x509.CertificateRequest)) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// verifySVID checks resp with go-spiffe against its own bundle and returns
// the leaf.
func verifySVID(t *testing.T, resp *meshfedv1.SVIDResponse, wantID string) *x509.Certificate {
	t.Helper()
	chain, err := tlsutil.ParseCertificatesPEM([]byte(resp.GetCertificateChainPem()))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := tlsutil.ParseCertificatesPEM([]byte(resp.GetBundlePem()))
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("test.mesh")
	id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, roots))
	if err != nil {
		t.Fatalf("SVID does not verify against the bundle: %v", err)
	}
	if id.String() != wantID || resp.GetSpiffeId() != wantID {
		t.Fatalf("SVID is for %s (response says %s), want %s", id, resp.GetSpiffeId(), wantID)
	}
	if len(chain[0].URIs) != 1 {
		t.Fatalf("SVID has %d URI SANs", len(chain[0].URIs))
	}
	return chain[0]
}

// workloadClient connects to ts presenting chain/key as the client
// certificate (nil chain: no client certificate).
func workloadClient(t *testing.T, c *testCluster, ts *testServer, chainPEM string, key crypto.Signer) *client.Client {
	t.Helper()
	roots, err := tlsutil.ParseCertificatesPEM(c.caPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tlsutil.APIClient(roots)
	if chainPEM != "" {
		chain, err := tlsutil.ParseCertificatesPEM([]byte(chainPEM))
		if err != nil {
			t.Fatal(err)
		}
		cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
		for _, c := range chain {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	conn, err := grpc.NewClient(ts.cfg.APIAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return client.FromConn(conn)
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want %v", err, code)
	}
}

func TestAttestAndRenew(t *testing.T) {
	c := startTestCluster(t, 3)
	ctx := context.Background()
	tok := workloadToken(t, c, webID, 1, time.Minute)

	// Attest through a follower: the call is forwarded to the leader,
	// which spends the token's one use.
	f := c.follower(t)
	anon := workloadClient(t, c, f, "", nil)
	key := newKey(t)
	resp, err := anon.Workload.Attest(ctx, &meshfedv1.AttestRequest{Token: tok.Secret, Csr: csrFor(t, key, nil)})
	if err != nil {
		t.Fatal(err)
	}
	leaf := verifySVID(t, resp, webID)
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatal("the SVID does not carry the workload's key")
	}
	if resp.GetAuthorityId() == "" {
		t.Fatal("response does not name the authority")
	}
	if leaf.IsCA {
		t.Fatal("an SVID must not be a CA")
	}

	// The token had one use.
	_, err = anon.Workload.Attest(ctx, &meshfedv1.AttestRequest{Token: tok.Secret, Csr: csrFor(t, newKey(t), nil)})
	wantCode(t, err, codes.PermissionDenied)

	// Renew on every server, with the SVID as the client certificate: a
	// new certificate for the same ID and the new key.
	for _, ts := range c.servers {
		wl := workloadClient(t, c, ts, resp.GetCertificateChainPem(), key)
		key2 := newKey(t)
		r2, err := wl.Workload.Renew(ctx, &meshfedv1.RenewRequest{Csr: csrFor(t, key2, func(r *x509.CertificateRequest) {
			r.URIs = []*url.URL{spiffeid.RequireFromString(webID).URL()}
		})})
		if err != nil {
			t.Fatalf("renew on %s: %v", ts.cfg.NodeID, err)
		}
		l2 := verifySVID(t, r2, webID)
		if !l2.PublicKey.(*ecdsa.PublicKey).Equal(key2.Public()) || l2.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
			t.Fatal("renewal did not issue a new certificate for the new key")
		}

		// The same SVID cannot become another identity.
		_, err = wl.Workload.Renew(ctx, &meshfedv1.RenewRequest{Csr: csrFor(t, newKey(t), func(r *x509.CertificateRequest) {
			r.URIs = []*url.URL{spiffeid.RequireFromString(dbID).URL()}
		})})
		wantCode(t, err, codes.InvalidArgument)
	}

	// Renew without a client certificate is refused.
	_, err = anon.Workload.Renew(ctx, &meshfedv1.RenewRequest{Csr: csrFor(t, newKey(t), nil)})
	wantCode(t, err, codes.Unauthenticated)
}

func TestAttestRejects(t *testing.T) {
	c := startTestCluster(t, 1)
	ctx := context.Background()
	s := c.servers[0]
	anon := workloadClient(t, c, s, "", nil)
	web := spiffeid.RequireFromString(webID)
	db := spiffeid.RequireFromString(dbID)
	caExt := func() pkix.Extension {
		v, err := asn1.Marshal(struct{ IsCA bool }{true})
		if err != nil {
			t.Fatal(err)
		}
		return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: v}
	}

	revoked := workloadToken(t, c, webID, 0, time.Minute)
	if _, err := c.client(t, s).Tokens.DeleteToken(ctx, &meshfedv1.DeleteRequest{Name: revoked.GetMeta().GetName()}); err != nil {
		t.Fatal(err)
	}
	expired := workloadToken(t, c, webID, 0, time.Second)

	tests := []struct {
		name  string
		token func() string
		edit  func(*x509.CertificateRequest)
		csr   []byte
		code  codes.Code
	}{
		{name: "other identity in the CSR", edit: func(r *x509.CertificateRequest) { r.URIs = []*url.URL{db.URL()} }, code: codes.InvalidArgument},
		{name: "two URI SANs", edit: func(r *x509.CertificateRequest) { r.URIs = []*url.URL{web.URL(), db.URL()} }, code: codes.InvalidArgument},
		{name: "extra DNS SAN", edit: func(r *x509.CertificateRequest) { r.DNSNames = []string{"evil.example"} }, code: codes.InvalidArgument},
		{name: "IP SAN", edit: func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)} }, code: codes.InvalidArgument},
		{name: "CA flag", edit: func(r *x509.CertificateRequest) { r.ExtraExtensions = []pkix.Extension{caExt()} }, code: codes.InvalidArgument},
		{name: "garbage CSR", csr: []byte("not a csr"), code: codes.InvalidArgument},
		{name: "unknown token", token: func() string { return "mfd_doesnotexist" }, code: codes.Unauthenticated},
		{name: "revoked token", token: func() string { return revoked.Secret }, code: codes.Unauthenticated},
		{name: "admin token", token: func() string { return c.token }, code: codes.PermissionDenied},
		{name: "no token", token: func() string { return "" }, code: codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := workloadToken(t, c, webID, 1, time.Minute)
			secret := tok.Secret
			if tc.token != nil {
				secret = tc.token()
			}
			csr := tc.csr
			if csr == nil {
				csr = csrFor(t, newKey(t), tc.edit)
			}
			_, err := anon.Workload.Attest(ctx, &meshfedv1.AttestRequest{Token: secret, Csr: csr})
			wantCode(t, err, tc.code)
			// A refused request does not spend the token.
			got, err := c.client(t, s).Tokens.GetToken(ctx, &meshfedv1.GetRequest{Name: tok.GetMeta().GetName()})
			if err != nil {
				t.Fatal(err)
			}
			if got.GetUses() != 0 {
				t.Fatalf("refused attestation spent a use: uses=%d", got.GetUses())
			}
		})
	}

	t.Run("expired token", func(t *testing.T) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := anon.Workload.Attest(ctx, &meshfedv1.AttestRequest{Token: expired.Secret, Csr: csrFor(t, newKey(t), nil)})
			if status.Code(err) == codes.Unauthenticated {
				return
			}
			if err != nil && status.Code(err) != codes.OK {
				t.Fatalf("unexpected error: %v", err)
			}
			if time.Now().After(deadline) {
				t.Fatal("an expired token still attests")
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("token bound to a server identity", func(t *testing.T) {
		_, err := c.client(t, s).Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{
			Kind: meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN, SpiffeId: "spiffe://test.mesh/meshfed/server/s9"})
		wantCode(t, err, codes.InvalidArgument)
		_, err = c.client(t, s).Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{
			Kind: meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN, SpiffeId: "spiffe://other.mesh/ns/default/sa/web"})
		wantCode(t, err, codes.InvalidArgument)
	})

	t.Run("server certificate cannot renew", func(t *testing.T) {
		srvChain := s.srv.tls.Certificate()
		cl := workloadClient(t, c, s, string(tlsutil.EncodeCertificatesPEM(srvChain)), s.srv.id.key)
		_, err := cl.Workload.Renew(ctx, &meshfedv1.RenewRequest{Csr: csrFor(t, newKey(t), nil)})
		wantCode(t, err, codes.PermissionDenied)
	})
}

func TestSVIDLifetimes(t *testing.T) {
	c := startTestCluster(t, 1)
	ctx := context.Background()
	s := c.servers[0]
	admin := c.client(t, s)
	anon := workloadClient(t, c, s, "", nil)

	lifetime := func(id string) time.Duration {
		t.Helper()
		tok := workloadToken(t, c, id, 1, time.Minute)
		resp, err := anon.Workload.Attest(ctx, &meshfedv1.AttestRequest{Token: tok.Secret, Csr: csrFor(t, newKey(t), nil)})
		if err != nil {
			t.Fatal(err)
		}
		leaf := verifySVID(t, resp, id)
		return time.Until(leaf.NotAfter)
	}
	near := func(got, want time.Duration) bool { return got > want-time.Minute && got <= want }

	if got := lifetime(webID); !near(got, time.Hour) {
		t.Fatalf("default SVID lifetime %s, want about 1h", got)
	}
	if _, err := admin.CA.UpdateCASettings(ctx, &meshfedv1.UpdateCASettingsRequest{Settings: &meshfedv1.CASettings{SvidTtl: durationpb.New(10 * time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	if got := lifetime(webID); !near(got, 10*time.Minute) {
		t.Fatalf("SVID lifetime %s after setting 10m", got)
	}
	// A registration overrides the lifetime and allows DNS names.
	if _, err := admin.Identity.CreateIdentity(ctx, &meshfedv1.CreateIdentityRequest{Identity: &meshfedv1.Identity{
		Meta: &meshfedv1.Meta{Name: "db"}, SvidTtl: durationpb.New(3 * time.Minute), DnsNames: []string{"db.internal"}}}); err != nil {
		t.Fatal(err)
	}
	if got := lifetime(dbID); !near(got, 3*time.Minute) {
		t.Fatalf("SVID lifetime %s for an identity registered with 3m", got)
	}
	tok := workloadToken(t, c, dbID, 1, time.Minute)
	resp, err := anon.Workload.Attest(ctx, &meshfedv1.AttestRequest{Token: tok.Secret, Csr: csrFor(t, newKey(t), func(r *x509.CertificateRequest) { r.DNSNames = []string{"db.internal"} })})
	if err != nil {
		t.Fatal(err)
	}
	if leaf := verifySVID(t, resp, dbID); len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "db.internal" {
		t.Fatalf("DNS names %v, want the registered db.internal", leaf.DNSNames)
	}

	// Bad registrations: a lifetime too short to use, an ID of another
	// trust domain or of the servers, an ID another registration holds.
	for _, bad := range []struct {
		in   *meshfedv1.Identity
		code codes.Code
	}{
		{&meshfedv1.Identity{Meta: &meshfedv1.Meta{Name: "short"}, SvidTtl: durationpb.New(time.Millisecond)}, codes.InvalidArgument},
		{&meshfedv1.Identity{Meta: &meshfedv1.Meta{Name: "other"}, SpiffeId: "spiffe://other.mesh/ns/default/sa/other"}, codes.InvalidArgument},
		{&meshfedv1.Identity{Meta: &meshfedv1.Meta{Name: "srv"}, SpiffeId: "spiffe://test.mesh/meshfed/server/s1"}, codes.InvalidArgument},
		{&meshfedv1.Identity{Meta: &meshfedv1.Meta{Name: "db2"}, ServiceAccount: "db"}, codes.AlreadyExists},
	} {
		_, err := admin.Identity.CreateIdentity(ctx, &meshfedv1.CreateIdentityRequest{Identity: bad.in})
		wantCode(t, err, bad.code)
	}

	// Bad settings are refused and change nothing.
	for _, bad := range []*meshfedv1.CASettings{
		{SvidTtl: durationpb.New(time.Second)},
		{KeyAlgorithm: meshfedv1.KeyAlgorithm(99)},
		{IntermediateTtl: durationpb.New(2 * time.Hour), SvidTtl: durationpb.New(2 * time.Hour)},
		{SvidTtl: durationpb.New(-time.Minute)},
	} {
		_, err := admin.CA.UpdateCASettings(ctx, &meshfedv1.UpdateCASettingsRequest{Settings: bad})
		wantCode(t, err, codes.InvalidArgument)
	}
	got, err := admin.CA.GetCASettings(ctx, &meshfedv1.GetCASettingsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetSvidTtl().AsDuration() != 10*time.Minute {
		t.Fatalf("settings changed by refused updates: %v", got)
	}
}
