package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

func TestSignEveryAlgorithm(t *testing.T) {
	id := workloadID(t, "default", "web")
	for _, alg := range allAlgorithms {
		t.Run(alg.String(), func(t *testing.T) {
			sa := cachedAuthority(t, alg)
			c := newCA(t, fixedClock(testNow))
			if err := c.SetAuthorities([]*meshfedv1.StoredAuthority{active(sa)}); err != nil {
				t.Fatal(err)
			}
			chain := sign(t, c, id, 0)
			if len(chain) != 2 {
				t.Fatalf("chain has %d certificates, want leaf and intermediate", len(chain))
			}
			if !chain[1].Equal(intermediateOf(t, sa)) {
				t.Error("chain[1] is not the intermediate")
			}
			if got := verify(t, chain, c.Bundle(), testNow); got != id {
				t.Errorf("verified ID = %s, want %s", got, id)
			}
		})
	}
}

func newCSR(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestSignLeafShape(t *testing.T) {
	c := newCA(t, fixedClock(testNow))
	if err := c.SetAuthorities([]*meshfedv1.StoredAuthority{active(cachedAuthority(t, meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256))}); err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTrue, err := asn1.Marshal(struct {
		IsCA       bool `asn1:"optional"`
		MaxPathLen int  `asn1:"optional,default:-1"`
	}{IsCA: true, MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	evil, _ := url.Parse("spiffe://example.org/ns/kube-system/sa/admin")
	foreign, _ := url.Parse("spiffe://other.org/ns/default/sa/web")
	want := workloadID(t, "default", "web")

	tests := []struct {
		name         string
		key          crypto.Signer
		csr          x509.CertificateRequest
		dnsNames     []string
		ips          []net.IP
		wantKeyUsage x509.KeyUsage
		wantCN       string
	}{
		{
			name:         "ECDSA workload",
			key:          ecKey,
			wantKeyUsage: x509.KeyUsageDigitalSignature,
		},
		{
			name:         "RSA key may encipher keys",
			key:          rsaKey,
			wantKeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		},
		{
			name:         "Ed25519",
			key:          edKey,
			wantKeyUsage: x509.KeyUsageDigitalSignature,
		},
		{
			name: "CSR asking for another identity, SANs and CA:true is ignored",
			key:  ecKey,
			csr: x509.CertificateRequest{
				Subject:        pkix.Name{CommonName: "admin", Organization: []string{"evil"}},
				URIs:           []*url.URL{evil, foreign},
				DNSNames:       []string{"evil.example"},
				EmailAddresses: []string{"root@example.org"},
				IPAddresses:    []net.IP{net.ParseIP("10.9.9.9")},
				ExtraExtensions: []pkix.Extension{
					{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: caTrue},
				},
			},
			dnsNames:     []string{"web.default.svc", "web"},
			ips:          []net.IP{net.ParseIP("10.0.0.7").To4()},
			wantKeyUsage: x509.KeyUsageDigitalSignature,
			wantCN:       "web.default.svc",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := c.Sign(SignParams{CSR: newCSR(t, tt.key, &tt.csr), ID: want, DNSNames: tt.dnsNames, IPs: tt.ips})
			if err != nil {
				t.Fatal(err)
			}
			leaf := chain[0]
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want.String() {
				t.Errorf("URIs = %v, want [%s]", leaf.URIs, want)
			}
			if !slices.Equal(leaf.DNSNames, tt.dnsNames) {
				t.Errorf("DNS names = %v, want %v", leaf.DNSNames, tt.dnsNames)
			}
			if !slices.EqualFunc(leaf.IPAddresses, tt.ips, net.IP.Equal) {
				t.Errorf("IPs = %v, want %v", leaf.IPAddresses, tt.ips)
			}
			if len(leaf.EmailAddresses) != 0 {
				t.Errorf("emails = %v, want none", leaf.EmailAddresses)
			}
			if leaf.Subject.CommonName != tt.wantCN || len(leaf.Subject.Organization) != 0 {
				t.Errorf("subject = %q, want CN %q only", leaf.Subject, tt.wantCN)
			}
			if leaf.IsCA || !leaf.BasicConstraintsValid {
				t.Errorf("IsCA = %v, BasicConstraintsValid = %v; want a non-CA leaf", leaf.IsCA, leaf.BasicConstraintsValid)
			}
			if leaf.KeyUsage != tt.wantKeyUsage {
				t.Errorf("key usage = %b, want %b", leaf.KeyUsage, tt.wantKeyUsage)
			}
			wantEKU := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
			if !slices.Equal(leaf.ExtKeyUsage, wantEKU) {
				t.Errorf("ext key usage = %v, want %v", leaf.ExtKeyUsage, wantEKU)
			}
			seen := map[string]int{}
			for _, e := range leaf.Extensions {
				seen[e.Id.String()]++
			}
			for oid, n := range seen {
				if n > 1 {
					t.Errorf("extension %s appears %d times", oid, n)
				}
			}
			if !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.key.Public()) {
				t.Error("leaf does not carry the CSR's key")
			}
			if got := verify(t, chain, c.Bundle(), testNow); got != want {
				t.Errorf("verified ID = %s, want %s", got, want)
			}
		})
	}
}

func TestSignRejects(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	weakRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	good := newCSR(t, ecKey, &x509.CertificateRequest{})
	badSig := slices.Clone(good)
	badSig[len(badSig)-1] ^= 0xff
	id := workloadID(t, "default", "web")
	foreign := spiffeid.RequireFromString("spiffe://other.org/ns/default/sa/web")

	tests := []struct {
		name    string
		params  SignParams
		wantErr error
	}{
		{"bad CSR signature", SignParams{CSR: badSig, ID: id}, ErrInvalidCSR},
		{"CSR is not DER", SignParams{CSR: []byte("not a csr"), ID: id}, ErrInvalidCSR},
		{"RSA key too short", SignParams{CSR: newCSR(t, weakRSA, &x509.CertificateRequest{}), ID: id}, ErrInvalidCSR},
		{"unsupported curve", SignParams{CSR: newCSR(t, p224, &x509.CertificateRequest{}), ID: id}, ErrInvalidCSR},
		{"no ID", SignParams{CSR: good}, ErrInvalidID},
		{"ID of another trust domain", SignParams{CSR: good, ID: foreign}, ErrInvalidID},
		{"negative TTL", SignParams{CSR: good, ID: id, TTL: -time.Second}, ErrInvalidParams},
		{"empty DNS name", SignParams{CSR: good, ID: id, DNSNames: []string{"a", ""}}, ErrInvalidParams},
		{"malformed IP", SignParams{CSR: good, ID: id, IPs: []net.IP{{1, 2, 3}}}, ErrInvalidParams},
	}

	c := newCA(t, fixedClock(testNow))
	if _, err := c.Sign(SignParams{CSR: good, ID: id}); !errors.Is(err, ErrNoActiveAuthority) {
		t.Fatalf("Sign before SetAuthorities: err = %v, want ErrNoActiveAuthority", err)
	}
	if err := c.SetAuthorities([]*meshfedv1.StoredAuthority{active(cachedAuthority(t, meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256))}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := c.Sign(tt.params)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if chain != nil {
				t.Errorf("got a chain with the error")
			}
		})
	}
}

// TestSignTTL checks leaf lifetimes. The authority's signer stamps leaves
// with the real clock, so the authorities are made to expire relative to
// it.
func TestSignTTL(t *testing.T) {
	sa := cachedAuthority(t, meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256)
	// An authority whose intermediate ends in 30 minutes, and one that has
	// ended.
	ending, err := GenerateAuthority(GenerateParams{TrustDomain: testTD, ID: "ending", Now: time.Now().Add(-DefaultIntermediateTTL + 30*time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	ended, err := GenerateAuthority(GenerateParams{TrustDomain: testTD, ID: "ended", Now: time.Now().Add(-DefaultIntermediateTTL - time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	id := workloadID(t, "default", "web")

	tests := []struct {
		name    string
		sa      *meshfedv1.StoredAuthority
		ttl     time.Duration
		wantTTL time.Duration // 0: until the intermediate's end
		wantErr error
	}{
		{name: "default is the SVID TTL", sa: sa, wantTTL: DefaultSVIDTTL},
		{name: "requested TTL", sa: sa, ttl: 2 * time.Hour, wantTTL: 2 * time.Hour},
		{name: "server TTL", sa: sa, ttl: DefaultServerCertTTL, wantTTL: DefaultServerCertTTL},
		{name: "clamped to the intermediate", sa: sa, ttl: 1000 * time.Hour},
		{name: "clamped near the intermediate's end", sa: ending, ttl: time.Hour},
		{name: "intermediate expired", sa: ended, ttl: time.Hour, wantErr: ErrAuthorityExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCA(t, nil)
			if err := c.SetAuthorities([]*meshfedv1.StoredAuthority{active(tt.sa)}); err != nil {
				t.Fatal(err)
			}
			csr, _, err := NewServerCSR(id, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			before := time.Now().Truncate(time.Second)
			chain, err := c.Sign(SignParams{CSR: csr, ID: id, TTL: tt.ttl})
			after := time.Now()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			leaf := chain[0]
			inter := intermediateOf(t, tt.sa)
			if tt.wantTTL == 0 {
				if !leaf.NotAfter.Equal(inter.NotAfter) {
					t.Errorf("NotAfter = %v, want the intermediate's %v", leaf.NotAfter, inter.NotAfter)
				}
			} else if leaf.NotAfter.Before(before.Add(tt.wantTTL)) || leaf.NotAfter.After(after.Add(tt.wantTTL)) {
				t.Errorf("NotAfter = %v, want %s after signing (%v to %v)", leaf.NotAfter, tt.wantTTL, before, after)
			}
			if leaf.NotAfter.After(inter.NotAfter) {
				t.Errorf("the leaf outlives its intermediate: %v > %v", leaf.NotAfter, inter.NotAfter)
			}
			if leaf.NotBefore.Before(before.Add(-backdate)) || leaf.NotBefore.After(after.Add(-backdate)) {
				t.Errorf("NotBefore = %v, want a minute before signing (%v to %v)", leaf.NotBefore, before, after)
			}
			verify(t, chain, c.Bundle(), after)
		})
	}
}

// TestServerCertificatesMutualTLS checks that server certificates work with
// the TLS configurations the Raft port uses.
func TestServerCertificatesMutualTLS(t *testing.T) {
	c := newCA(t, nil)
	sa := newAuthority(t, "live", 0)
	// Generated at testNow: the handshake runs on the real clock, later.
	if err := c.SetAuthorities([]*meshfedv1.StoredAuthority{active(sa)}); err != nil {
		t.Fatal(err)
	}
	source := func(node string) *tlsutil.Source {
		id, err := mfid.Server(testTD, node)
		if err != nil {
			t.Fatal(err)
		}
		csr, key, err := NewServerCSR(id, []string{node + ".example.org"}, []net.IP{net.IPv6loopback})
		if err != nil {
			t.Fatal(err)
		}
		chain, err := c.Sign(SignParams{CSR: csr, ID: id, DNSNames: []string{node + ".example.org"}, IPs: []net.IP{net.IPv6loopback}, TTL: DefaultServerCertTTL})
		if err != nil {
			t.Fatal(err)
		}
		src := tlsutil.NewSource(c.Bundle())
		if err := src.SetCertificate(chain, key); err != nil {
			t.Fatal(err)
		}
		return src
	}
	srvConn, cliConn := net.Pipe()
	defer srvConn.Close()
	defer cliConn.Close()
	srv := tls.Server(srvConn, tlsutil.PeerMTLSServer(source("node-1"), testTD))
	cli := tls.Client(cliConn, tlsutil.PeerMTLSClient(source("node-2"), testTD))

	done := make(chan error, 1)
	go func() { done <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	peer := srv.ConnectionState().PeerCertificates[0]
	if got := peer.URIs[0].String(); got != "spiffe://example.org/meshfed/server/node-2" {
		t.Errorf("server saw client %s", got)
	}
}

func TestNewServerCSR(t *testing.T) {
	id, err := mfid.Server(testTD, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	dns := []string{"node-1.example.org"}
	ips := []net.IP{net.ParseIP("192.0.2.1").To4()}
	der, key, err := NewServerCSR(id, dns, ips)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatal(err)
	}
	if pub, ok := key.Public().(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("key is %T, want ECDSA P-256", key.Public())
	}
	if !csr.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("CSR does not carry the key")
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
		t.Errorf("URIs = %v, want [%s]", csr.URIs, id)
	}
	if !slices.Equal(csr.DNSNames, dns) || !slices.EqualFunc(csr.IPAddresses, ips, net.IP.Equal) {
		t.Errorf("SANs = %v %v, want %v %v", csr.DNSNames, csr.IPAddresses, dns, ips)
	}
	if _, _, err := NewServerCSR(spiffeid.ID{}, nil, nil); !errors.Is(err, ErrInvalidID) {
		t.Errorf("empty ID: err = %v, want ErrInvalidID", err)
	}
}
