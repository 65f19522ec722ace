package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/x509util"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// GenerateParams describes a new authority.
type GenerateParams struct {
	TrustDomain spiffeid.TrustDomain
	// KeyAlgorithm of both keys; UNSPECIFIED means ECDSA P-256.
	KeyAlgorithm meshfedv1.KeyAlgorithm
	// RootTTL defaults to DefaultRootTTL.
	RootTTL time.Duration
	// IntermediateTTL defaults to DefaultIntermediateTTL; the intermediate
	// never outlives the root.
	IntermediateTTL time.Duration
	// Now defaults to time.Now().
	Now time.Time
	// ID of the authority; empty means a random one.
	ID string
}

// GenerateAuthority creates a self-signed root and an intermediate signed by
// it, both CAs carrying the trust domain's SPIFFE ID as URI SAN, and returns
// them with their PKCS#8 DER private keys. The state is left UNSPECIFIED for
// the caller to set.
func GenerateAuthority(p GenerateParams) (*meshfedv1.StoredAuthority, error) {
	if p.TrustDomain.IsZero() {
		return nil, fmt.Errorf("%w: trust domain is required", ErrInvalidParams)
	}
	if p.RootTTL < 0 {
		return nil, fmt.Errorf("%w: root TTL %s is negative", ErrInvalidParams, p.RootTTL)
	}
	if p.IntermediateTTL < 0 {
		return nil, fmt.Errorf("%w: intermediate TTL %s is negative", ErrInvalidParams, p.IntermediateTTL)
	}
	if p.RootTTL == 0 {
		p.RootTTL = DefaultRootTTL
	}
	if p.IntermediateTTL == 0 {
		p.IntermediateTTL = DefaultIntermediateTTL
	}
	if p.Now.IsZero() {
		p.Now = time.Now()
	}
	if p.KeyAlgorithm == meshfedv1.KeyAlgorithm_KEY_ALGORITHM_UNSPECIFIED {
		p.KeyAlgorithm = meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256
	}
	if p.ID == "" {
		p.ID = randomID()
	}

	rootKey, err := generateKey(p.KeyAlgorithm)
	if err != nil {
		return nil, err
	}
	intKey, err := generateKey(p.KeyAlgorithm)
	if err != nil {
		return nil, err
	}
	tdURI := p.TrustDomain.ID().URL()
	notBefore := p.Now.Add(-backdate)

	rootTmpl := caTemplate(p.TrustDomain, "root", p.ID, tdURI, notBefore, p.Now.Add(p.RootTTL))
	rootTmpl.MaxPathLen = 1
	root, err := x509util.CreateCertificate(rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("creating root certificate: %w", err)
	}

	intTmpl := caTemplate(p.TrustDomain, "intermediate", p.ID, tdURI, notBefore, minTime(p.Now.Add(p.IntermediateTTL), root.NotAfter))
	intTmpl.MaxPathLen = 0
	intTmpl.MaxPathLenZero = true
	intermediate, err := x509util.CreateCertificate(intTmpl, root, intKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("creating intermediate certificate: %w", err)
	}

	rootDER, err := x509.MarshalPKCS8PrivateKey(rootKey)
	if err != nil {
		return nil, fmt.Errorf("encoding root key: %w", err)
	}
	intDER, err := x509.MarshalPKCS8PrivateKey(intKey)
	if err != nil {
		return nil, fmt.Errorf("encoding intermediate key: %w", err)
	}

	return &meshfedv1.StoredAuthority{
		Meta: &meshfedv1.Meta{Name: p.ID},
		Authority: &meshfedv1.Authority{
			Id:                   p.ID,
			KeyAlgorithm:         p.KeyAlgorithm,
			RootPem:              string(tlsutil.EncodeCertificatesPEM([]*x509.Certificate{root})),
			IntermediatePem:      string(tlsutil.EncodeCertificatesPEM([]*x509.Certificate{intermediate})),
			RootNotAfter:         timestamppb.New(root.NotAfter),
			IntermediateNotAfter: timestamppb.New(intermediate.NotAfter),
		},
		RootKey:         rootDER,
		IntermediateKey: intDER,
	}, nil
}

// CrossSign issues a certificate for a's intermediate (same subject and key)
// signed by by's root, and stores it in a's cross_signed_intermediate_pem.
// Leaves signed while a is active then carry a chain that verifies against
// either root, so holders of only by's root keep trusting them during a
// rotation. The certificate does not outlive by's root or a's intermediate.
func CrossSign(a, by *meshfedv1.StoredAuthority, now time.Time) error {
	pa, err := parseAuthority(a)
	if err != nil {
		return fmt.Errorf("%w: authority %q: %w", ErrInvalidAuthority, a.GetAuthority().GetId(), err)
	}
	pb, err := parseAuthority(by)
	if err != nil {
		return fmt.Errorf("%w: authority %q: %w", ErrInvalidAuthority, by.GetAuthority().GetId(), err)
	}
	if pb.rootKey == nil {
		return fmt.Errorf("%w: authority %q has no root key to cross-sign with", ErrInvalidAuthority, by.GetAuthority().GetId())
	}
	if now.IsZero() {
		now = time.Now()
	}
	inter := pa.chain[0]
	tmpl := &x509.Certificate{
		Subject:               inter.Subject,
		RawSubject:            inter.RawSubject,
		URIs:                  inter.URIs,
		NotBefore:             now.Add(-backdate),
		NotAfter:              minTime(inter.NotAfter, pb.root.NotAfter),
		KeyUsage:              inter.KeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            inter.MaxPathLen,
		MaxPathLenZero:        inter.MaxPathLenZero,
		SubjectKeyId:          inter.SubjectKeyId,
	}
	cross, err := x509util.CreateCertificate(tmpl, pb.root, inter.PublicKey, pb.rootKey)
	if err != nil {
		return fmt.Errorf("cross-signing intermediate: %w", err)
	}
	a.Authority.CrossSignedIntermediatePem = string(tlsutil.EncodeCertificatesPEM([]*x509.Certificate{cross}))
	return nil
}

func caTemplate(td spiffeid.TrustDomain, kind, id string, uri *url.URL, notBefore, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject: pkix.Name{
			Organization: []string{"meshfed"},
			CommonName:   fmt.Sprintf("%s %s CA %s", td.Name(), kind, id),
		},
		URIs:                  []*url.URL{uri},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

func generateKey(alg meshfedv1.KeyAlgorithm) (crypto.Signer, error) {
	var (
		key crypto.Signer
		err error
	)
	switch alg {
	case meshfedv1.KeyAlgorithm_KEY_ALGORITHM_UNSPECIFIED, meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256:
		key, err = keyutil.GenerateSigner("EC", "P-256", 0)
	case meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P384:
		key, err = keyutil.GenerateSigner("EC", "P-384", 0)
	case meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_2048:
		key, err = keyutil.GenerateSigner("RSA", "", 2048)
	case meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_4096:
		key, err = keyutil.GenerateSigner("RSA", "", 4096)
	default:
		return nil, fmt.Errorf("%w: key algorithm %v is not supported", ErrInvalidParams, alg)
	}
	if err != nil {
		return nil, fmt.Errorf("generating %v key: %w", alg, err)
	}
	return key, nil
}

// randomID starts with a letter so that it is a valid resource name.
func randomID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // never fails since Go 1.24
	return "ca-" + hex.EncodeToString(b)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
