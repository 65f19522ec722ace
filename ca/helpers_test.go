package ca

import (
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

func TestMain(m *testing.M) {
	// glog, linked in through smallstep's dependencies, starts its flush
	// daemon from init; nothing in this package starts goroutines.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"))
}

var (
	testTD = spiffeid.RequireTrustDomainFromString("example.org")
	// testNow is whole seconds because certificates carry no finer times.
	testNow = time.Now().Truncate(time.Second)
)

var allAlgorithms = []meshfedv1.KeyAlgorithm{
	meshfedv1.KeyAlgorithm_KEY_ALGORITHM_UNSPECIFIED,
	meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256,
	meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P384,
	meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_2048,
	meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_4096,
}

// generated caches one authority per algorithm: RSA-4096 keys take seconds.
var generated struct {
	sync.Mutex
	m map[meshfedv1.KeyAlgorithm]*meshfedv1.StoredAuthority
}

// cachedAuthority returns a copy of the cached authority for alg, generated
// at testNow with default lifetimes.
func cachedAuthority(t *testing.T, alg meshfedv1.KeyAlgorithm) *meshfedv1.StoredAuthority {
	t.Helper()
	generated.Lock()
	defer generated.Unlock()
	if generated.m == nil {
		generated.m = make(map[meshfedv1.KeyAlgorithm]*meshfedv1.StoredAuthority)
	}
	sa, ok := generated.m[alg]
	if !ok {
		var err error
		sa, err = GenerateAuthority(GenerateParams{TrustDomain: testTD, KeyAlgorithm: alg, Now: testNow})
		if err != nil {
			t.Fatalf("GenerateAuthority(%v): %v", alg, err)
		}
		generated.m[alg] = sa
	}
	return proto.Clone(sa).(*meshfedv1.StoredAuthority)
}

// newAuthority generates a fresh ECDSA P-256 authority.
func newAuthority(t *testing.T, id string, intermediateTTL time.Duration) *meshfedv1.StoredAuthority {
	t.Helper()
	sa, err := GenerateAuthority(GenerateParams{TrustDomain: testTD, ID: id, Now: testNow, IntermediateTTL: intermediateTTL})
	if err != nil {
		t.Fatalf("GenerateAuthority: %v", err)
	}
	return sa
}

func withState(sa *meshfedv1.StoredAuthority, s meshfedv1.AuthorityState) *meshfedv1.StoredAuthority {
	c := proto.Clone(sa).(*meshfedv1.StoredAuthority)
	c.Authority.State = s
	return c
}

func active(sa *meshfedv1.StoredAuthority) *meshfedv1.StoredAuthority {
	return withState(sa, meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE)
}

func newCA(t *testing.T, now func() time.Time) *CA {
	t.Helper()
	c, err := New(Config{TrustDomain: testTD, Now: now})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func workloadID(t *testing.T, ns, sa string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromSegments(testTD, "ns", ns, "sa", sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func certs(t *testing.T, pemData string) []*x509.Certificate {
	t.Helper()
	c, err := tlsutil.ParseCertificatesPEM([]byte(pemData))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func rootOf(t *testing.T, sa *meshfedv1.StoredAuthority) *x509.Certificate {
	t.Helper()
	return certs(t, sa.GetAuthority().GetRootPem())[0]
}

func intermediateOf(t *testing.T, sa *meshfedv1.StoredAuthority) *x509.Certificate {
	t.Helper()
	return certs(t, sa.GetAuthority().GetIntermediatePem())[0]
}

// sign signs a fresh server-style CSR for id.
func sign(t *testing.T, c *CA, id spiffeid.ID, ttl time.Duration) []*x509.Certificate {
	t.Helper()
	csr, _, err := NewServerCSR(id, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.Sign(SignParams{CSR: csr, ID: id, TTL: ttl})
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return chain
}

// verify checks chain at time at with go-spiffe against roots and with
// crypto/x509 for both server and client use, and returns the SPIFFE ID.
func verify(t *testing.T, chain []*x509.Certificate, roots []*x509.Certificate, at time.Time) spiffeid.ID {
	t.Helper()
	id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(testTD, roots), x509svid.WithTime(at))
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	opts := x509.VerifyOptions{
		Roots:         x509.NewCertPool(),
		Intermediates: x509.NewCertPool(),
		CurrentTime:   at,
	}
	for _, r := range roots {
		opts.Roots.AddCert(r)
	}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		opts.KeyUsages = []x509.ExtKeyUsage{usage}
		if _, err := chain[0].Verify(opts); err != nil {
			t.Fatalf("x509 Verify for %v: %v", usage, err)
		}
	}
	return id
}
