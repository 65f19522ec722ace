package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func TestGenerateAuthority(t *testing.T) {
	for _, alg := range allAlgorithms {
		t.Run(alg.String(), func(t *testing.T) {
			sa := cachedAuthority(t, alg)
			a := sa.GetAuthority()

			wantAlg := alg
			if alg == meshfedv1.KeyAlgorithm_KEY_ALGORITHM_UNSPECIFIED {
				wantAlg = meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256
			}
			if a.GetKeyAlgorithm() != wantAlg {
				t.Errorf("key_algorithm = %v, want %v", a.GetKeyAlgorithm(), wantAlg)
			}
			if a.GetState() != meshfedv1.AuthorityState_AUTHORITY_STATE_UNSPECIFIED {
				t.Errorf("state = %v, want UNSPECIFIED", a.GetState())
			}
			if !strings.HasPrefix(a.GetId(), "ca-") || sa.GetMeta().GetName() != a.GetId() {
				t.Errorf("id = %q, meta.name = %q", a.GetId(), sa.GetMeta().GetName())
			}

			root, inter := rootOf(t, sa), intermediateOf(t, sa)
			if err := root.CheckSignatureFrom(root); err != nil {
				t.Errorf("root is not self-signed: %v", err)
			}
			if err := inter.CheckSignatureFrom(root); err != nil {
				t.Errorf("intermediate is not signed by root: %v", err)
			}
			for name, c := range map[string]*x509.Certificate{"root": root, "intermediate": inter} {
				if !c.IsCA || !c.BasicConstraintsValid {
					t.Errorf("%s is not a CA", name)
				}
				if c.KeyUsage&x509.KeyUsageCertSign == 0 {
					t.Errorf("%s lacks keyCertSign", name)
				}
				if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://example.org" {
					t.Errorf("%s URIs = %v, want [spiffe://example.org]", name, c.URIs)
				}
			}
			if inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
				t.Errorf("intermediate path length = %d (zero %v), want 0", inter.MaxPathLen, inter.MaxPathLenZero)
			}
			if got, want := root.NotAfter, testNow.Add(DefaultRootTTL); !got.Equal(want) {
				t.Errorf("root NotAfter = %v, want %v", got, want)
			}
			if got, want := inter.NotAfter, testNow.Add(DefaultIntermediateTTL); !got.Equal(want) {
				t.Errorf("intermediate NotAfter = %v, want %v", got, want)
			}
			if !a.GetRootNotAfter().AsTime().Equal(root.NotAfter) || !a.GetIntermediateNotAfter().AsTime().Equal(inter.NotAfter) {
				t.Errorf("not_after fields %v, %v disagree with the certificates", a.GetRootNotAfter().AsTime(), a.GetIntermediateNotAfter().AsTime())
			}

			for name, k := range map[string]struct {
				der  []byte
				cert *x509.Certificate
			}{"root": {sa.GetRootKey(), root}, "intermediate": {sa.GetIntermediateKey(), inter}} {
				key, err := parseKeyFor(k.der, k.cert)
				if err != nil {
					t.Fatalf("%s key: %v", name, err)
				}
				if got := describeKey(key.Public()); got != wantAlg {
					t.Errorf("%s key is %v, want %v", name, got, wantAlg)
				}
			}
		})
	}
}

func describeKey(pub any) meshfedv1.KeyAlgorithm {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256
		case elliptic.P384():
			return meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P384
		}
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_2048
		case 4096:
			return meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_4096
		}
	}
	return meshfedv1.KeyAlgorithm_KEY_ALGORITHM_UNSPECIFIED
}

func TestGenerateAuthorityParams(t *testing.T) {
	tests := []struct {
		name             string
		params           GenerateParams
		wantRootTTL      time.Duration
		wantIntermediate time.Duration
		wantID           string
	}{
		{
			name:             "explicit lifetimes and ID",
			params:           GenerateParams{TrustDomain: testTD, RootTTL: 48 * time.Hour, IntermediateTTL: 6 * time.Hour, ID: "primary"},
			wantRootTTL:      48 * time.Hour,
			wantIntermediate: 6 * time.Hour,
			wantID:           "primary",
		},
		{
			name:             "intermediate never outlives root",
			params:           GenerateParams{TrustDomain: testTD, RootTTL: time.Hour, IntermediateTTL: 10 * time.Hour},
			wantRootTTL:      time.Hour,
			wantIntermediate: time.Hour,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.params.Now = testNow
			sa, err := GenerateAuthority(tt.params)
			if err != nil {
				t.Fatal(err)
			}
			if got := rootOf(t, sa).NotAfter.Sub(testNow); got != tt.wantRootTTL {
				t.Errorf("root lifetime = %s, want %s", got, tt.wantRootTTL)
			}
			if got := intermediateOf(t, sa).NotAfter.Sub(testNow); got != tt.wantIntermediate {
				t.Errorf("intermediate lifetime = %s, want %s", got, tt.wantIntermediate)
			}
			if tt.wantID != "" && sa.GetAuthority().GetId() != tt.wantID {
				t.Errorf("id = %q, want %q", sa.GetAuthority().GetId(), tt.wantID)
			}
		})
	}

	t.Run("random IDs differ", func(t *testing.T) {
		a, b := newAuthority(t, "", 0), newAuthority(t, "", 0)
		if a.GetAuthority().GetId() == b.GetAuthority().GetId() {
			t.Errorf("two authorities share ID %q", a.GetAuthority().GetId())
		}
		if rootOf(t, a).Subject.String() == rootOf(t, b).Subject.String() {
			t.Errorf("two roots share subject %q", rootOf(t, a).Subject)
		}
	})
}

func TestGenerateAuthorityRejects(t *testing.T) {
	tests := []struct {
		name   string
		params GenerateParams
	}{
		{"no trust domain", GenerateParams{}},
		{"negative root TTL", GenerateParams{TrustDomain: testTD, RootTTL: -time.Hour}},
		{"negative intermediate TTL", GenerateParams{TrustDomain: testTD, IntermediateTTL: -time.Hour}},
		{"unknown key algorithm", GenerateParams{TrustDomain: testTD, KeyAlgorithm: meshfedv1.KeyAlgorithm(99)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := GenerateAuthority(tt.params); !errors.Is(err, ErrInvalidParams) {
				t.Errorf("err = %v, want ErrInvalidParams", err)
			}
		})
	}
}

func TestNewRejectsMissingTrustDomain(t *testing.T) {
	if _, err := New(Config{TrustDomain: spiffeid.TrustDomain{}}); !errors.Is(err, ErrInvalidParams) {
		t.Errorf("err = %v, want ErrInvalidParams", err)
	}
}
