package ca

import (
	"crypto/x509"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/authority"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

const (
	prepared = meshfedv1.AuthorityState_AUTHORITY_STATE_PREPARED
	retiring = meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRING
	retired  = meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRED
)

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// TestRotation walks two authorities through prepare, activate and retire.
func TestRotation(t *testing.T) {
	a, b := newAuthority(t, "old", 0), newAuthority(t, "new", 0)
	rootA, rootB := rootOf(t, a), rootOf(t, b)
	id := workloadID(t, "default", "web")
	c := newCA(t, fixedClock(testNow))

	if got := c.Bundle(); got != nil {
		t.Errorf("Bundle before SetAuthorities = %v, want nil", got)
	}
	if got := c.ActiveID(); got != "" {
		t.Errorf("ActiveID before SetAuthorities = %q", got)
	}

	steps := []struct {
		name       string
		auths      []*meshfedv1.StoredAuthority
		wantActive string
		wantIssuer *x509.Certificate
		wantBundle []*x509.Certificate
	}{
		{"single", []*meshfedv1.StoredAuthority{active(a)}, "old", intermediateOf(t, a), []*x509.Certificate{rootA}},
		{"prepare", []*meshfedv1.StoredAuthority{active(a), withState(b, prepared)}, "old", intermediateOf(t, a), []*x509.Certificate{rootA, rootB}},
		{"activate", []*meshfedv1.StoredAuthority{withState(a, retiring), active(b)}, "new", intermediateOf(t, b), []*x509.Certificate{rootA, rootB}},
		{"retire", []*meshfedv1.StoredAuthority{withState(a, retired), active(b)}, "new", intermediateOf(t, b), []*x509.Certificate{rootB}},
		{"roll back", []*meshfedv1.StoredAuthority{active(a), withState(b, retiring)}, "old", intermediateOf(t, a), []*x509.Certificate{rootA, rootB}},
	}
	var embedded *authority.Authority
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if err := c.SetAuthorities(s.auths); err != nil {
				t.Fatal(err)
			}
			if embedded == nil {
				embedded = c.auth
			} else if c.auth != embedded {
				t.Error("SetAuthorities rebuilt the embedded authority")
			}
			if got := c.ActiveID(); got != s.wantActive {
				t.Errorf("ActiveID = %q, want %q", got, s.wantActive)
			}
			if got := c.Bundle(); !sameCerts(got, s.wantBundle) {
				t.Errorf("Bundle has %d roots, want %d (or different ones)", len(got), len(s.wantBundle))
			}
			chain := sign(t, c, id, 0)
			if !chain[1].Equal(s.wantIssuer) {
				t.Errorf("signed by %q, want %q", chain[1].Subject, s.wantIssuer.Subject)
			}
			if err := chain[0].CheckSignatureFrom(s.wantIssuer); err != nil {
				t.Errorf("leaf not signed by the active intermediate: %v", err)
			}
			verify(t, chain, c.Bundle(), testNow)
		})
	}
}

// TestCrossSignedChain checks that, once the new authority is cross-signed
// by the old root, its leaves verify against either root alone.
func TestCrossSignedChain(t *testing.T) {
	a, b := newAuthority(t, "old", 0), newAuthority(t, "new", 0)
	if err := CrossSign(b, a, testNow); err != nil {
		t.Fatal(err)
	}
	c := newCA(t, fixedClock(testNow))
	if err := c.SetAuthorities([]*meshfedv1.StoredAuthority{withState(a, retiring), active(b)}); err != nil {
		t.Fatal(err)
	}
	chain := sign(t, c, workloadID(t, "default", "web"), 0)
	if len(chain) != 3 {
		t.Fatalf("chain has %d certificates, want leaf, intermediate, cross-signed intermediate", len(chain))
	}
	for name, root := range map[string]*x509.Certificate{"old root": rootOf(t, a), "new root": rootOf(t, b)} {
		t.Run(name, func(t *testing.T) {
			verify(t, chain, []*x509.Certificate{root}, testNow)
		})
	}

	noRootKey := proto.Clone(a).(*meshfedv1.StoredAuthority)
	noRootKey.RootKey = nil
	if err := CrossSign(b, noRootKey, testNow); !errors.Is(err, ErrInvalidAuthority) {
		t.Errorf("cross-signing without the root key: err = %v, want ErrInvalidAuthority", err)
	}
}

func TestSetAuthoritiesRejects(t *testing.T) {
	a, b := newAuthority(t, "a", 0), newAuthority(t, "b", 0)
	mutate := func(sa *meshfedv1.StoredAuthority, f func(*meshfedv1.StoredAuthority)) *meshfedv1.StoredAuthority {
		c := proto.Clone(sa).(*meshfedv1.StoredAuthority)
		f(c)
		return c
	}
	tests := []struct {
		name    string
		auths   []*meshfedv1.StoredAuthority
		wantErr error
	}{
		{"empty", nil, ErrNoActiveAuthority},
		{"none active", []*meshfedv1.StoredAuthority{withState(a, prepared)}, ErrNoActiveAuthority},
		{"two active", []*meshfedv1.StoredAuthority{active(a), active(b)}, ErrMultipleActiveAuthorities},
		{"state unspecified", []*meshfedv1.StoredAuthority{active(a), b}, ErrInvalidAuthority},
		{"no authority message", []*meshfedv1.StoredAuthority{active(a), {}}, ErrInvalidAuthority},
		{"duplicate ID", []*meshfedv1.StoredAuthority{active(a), withState(a, prepared)}, ErrInvalidAuthority},
		{"key does not parse", []*meshfedv1.StoredAuthority{mutate(active(a), func(s *meshfedv1.StoredAuthority) {
			s.IntermediateKey = []byte("garbage")
		})}, ErrInvalidAuthority},
		{"key of another authority", []*meshfedv1.StoredAuthority{mutate(active(a), func(s *meshfedv1.StoredAuthority) {
			s.IntermediateKey = b.IntermediateKey
		})}, ErrInvalidAuthority},
		{"root key of another authority", []*meshfedv1.StoredAuthority{mutate(active(a), func(s *meshfedv1.StoredAuthority) {
			s.RootKey = b.RootKey
		})}, ErrInvalidAuthority},
		{"active without intermediate key", []*meshfedv1.StoredAuthority{mutate(active(a), func(s *meshfedv1.StoredAuthority) {
			s.IntermediateKey = nil
		})}, ErrInvalidAuthority},
		{"intermediate of another root", []*meshfedv1.StoredAuthority{mutate(active(a), func(s *meshfedv1.StoredAuthority) {
			s.Authority.IntermediatePem = b.Authority.IntermediatePem
			s.IntermediateKey = b.IntermediateKey
		})}, ErrInvalidAuthority},
		{"root does not parse", []*meshfedv1.StoredAuthority{mutate(active(a), func(s *meshfedv1.StoredAuthority) {
			s.Authority.RootPem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
		})}, ErrInvalidAuthority},
		{"bad prepared authority", []*meshfedv1.StoredAuthority{active(a), mutate(withState(b, prepared), func(s *meshfedv1.StoredAuthority) {
			s.Authority.RootPem = ""
		})}, ErrInvalidAuthority},
		{"cross-signed certificate of another key", []*meshfedv1.StoredAuthority{mutate(active(a), func(s *meshfedv1.StoredAuthority) {
			s.Authority.CrossSignedIntermediatePem = b.Authority.IntermediatePem
		})}, ErrInvalidAuthority},
	}

	// Each failure must leave the previous authorities in place.
	c := newCA(t, fixedClock(testNow))
	if err := c.SetAuthorities([]*meshfedv1.StoredAuthority{withState(b, retiring), active(a)}); err != nil {
		t.Fatal(err)
	}
	wantBundle := c.Bundle()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := c.SetAuthorities(tt.auths); !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if c.ActiveID() != "a" || !sameCerts(c.Bundle(), wantBundle) {
				t.Errorf("failed SetAuthorities changed state: active %q", c.ActiveID())
			}
			chain := sign(t, c, workloadID(t, "default", "web"), 0)
			verify(t, chain, wantBundle, testNow)
		})
	}

	t.Run("retired authorities are not parsed", func(t *testing.T) {
		broken := mutate(withState(b, retired), func(s *meshfedv1.StoredAuthority) {
			s.Authority.RootPem = ""
			s.IntermediateKey = []byte("garbage")
		})
		if err := c.SetAuthorities([]*meshfedv1.StoredAuthority{active(a), broken}); err != nil {
			t.Fatal(err)
		}
		if got := c.Bundle(); len(got) != 1 || !got[0].Equal(rootOf(t, a)) {
			t.Errorf("bundle has %d roots, want only a's", len(got))
		}
	})
}

// TestConcurrentSignAndRotate signs while authorities swap. The old
// intermediate expires long before the requested lifetime, so a leaf clamped
// against one intermediate but signed by the other would outlive its issuer.
func TestConcurrentSignAndRotate(t *testing.T) {
	a, b := newAuthority(t, "short", 3*time.Hour), newAuthority(t, "long", 0)
	sets := [][]*meshfedv1.StoredAuthority{
		{active(a), withState(b, prepared)},
		{withState(a, retiring), active(b)},
	}
	c := newCA(t, fixedClock(testNow))
	if err := c.SetAuthorities(sets[0]); err != nil {
		t.Fatal(err)
	}
	roots := []*x509.Certificate{rootOf(t, a), rootOf(t, b)}
	id := workloadID(t, "default", "web")
	csr, _, err := NewServerCSR(id, nil, nil)
	if err != nil {
		t.Fatal(err)
	}

	const signers, perSigner, swaps = 4, 25, 100
	var wg sync.WaitGroup
	errs := make(chan error, signers*perSigner+swaps)
	chains := make(chan []*x509.Certificate, signers*perSigner)
	for range signers {
		wg.Go(func() {
			for range perSigner {
				chain, err := c.Sign(SignParams{CSR: csr, ID: id, TTL: 10 * time.Hour})
				if err != nil {
					errs <- err
					continue
				}
				chains <- chain
			}
		})
	}
	wg.Go(func() {
		for i := range swaps {
			if err := c.SetAuthorities(sets[i%2]); err != nil {
				errs <- err
			}
			_ = c.Bundle()
			_ = c.ActiveID()
		}
	})
	wg.Wait()
	close(errs)
	close(chains)
	for err := range errs {
		t.Error(err)
	}
	for chain := range chains {
		leaf, issuer := chain[0], chain[1]
		if err := leaf.CheckSignatureFrom(issuer); err != nil {
			t.Fatalf("leaf not signed by the intermediate in its chain: %v", err)
		}
		if leaf.NotAfter.After(issuer.NotAfter) {
			t.Fatalf("leaf expires %v, after its intermediate %v", leaf.NotAfter, issuer.NotAfter)
		}
		verify(t, chain, roots, testNow)
	}
}
