package ca

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

func TestRenewIntermediateKeepsRootAndOldLeaves(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("renew.mesh")
	now := time.Now()
	a, err := GenerateAuthority(GenerateParams{TrustDomain: td, IntermediateTTL: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	a.Authority.State = meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE
	if due, err := IntermediateNeedsRenewal(a, now); err != nil || due {
		t.Fatalf("fresh intermediate due for renewal: %v %v", due, err)
	}
	if due, _ := IntermediateNeedsRenewal(a, now.Add(31*time.Minute)); !due {
		t.Fatal("intermediate past half life not due")
	}
	c, err := New(Config{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetAuthorities([]*meshfedv1.StoredAuthority{a}); err != nil {
		t.Fatal(err)
	}
	id, _ := mfid.Server(td, "s1")
	sign := func() []*x509.Certificate {
		csr, _, err := NewServerCSR(id, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		chain, err := c.Sign(SignParams{CSR: csr, ID: id, TTL: 2 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return chain
	}
	old := sign()

	renewed, err := RenewIntermediate(a, td, 2*time.Hour, now.Add(31*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Authority.RootPem != a.Authority.RootPem || string(renewed.RootKey) != string(a.RootKey) {
		t.Fatal("root changed")
	}
	if renewed.Authority.IntermediatePem == a.Authority.IntermediatePem || string(renewed.IntermediateKey) == string(a.IntermediateKey) {
		t.Fatal("intermediate or its key not replaced")
	}
	if err := c.SetAuthorities([]*meshfedv1.StoredAuthority{renewed}); err != nil {
		t.Fatal(err)
	}
	fresh := sign()
	if fresh[1].Equal(old[1]) {
		t.Fatal("new leaves still signed by the old intermediate")
	}
	roots, _ := tlsutil.ParseCertificatesPEM([]byte(a.Authority.RootPem))
	pool := x509.NewCertPool()
	pool.AddCert(roots[0])
	for name, chain := range map[string][]*x509.Certificate{"old": old, "fresh": fresh} {
		inter := x509.NewCertPool()
		inter.AddCert(chain[1])
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now.Add(32 * time.Minute), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("%s leaf does not verify against the root: %v", name, err)
		}
	}
	// The old leaf was capped at the old intermediate's expiry.
	if old[0].NotAfter.After(old[1].NotAfter) {
		t.Fatal("leaf outlives its intermediate")
	}
}
