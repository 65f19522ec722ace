package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// ImportParams is an operator's own CA material (a plug-in CA).
type ImportParams struct {
	TrustDomain spiffeid.TrustDomain
	// RootPEM is the root certificate.
	RootPEM string
	// IntermediatePEM is an intermediate signed by the root (possibly with
	// further intermediates between it and the root, issuing one first).
	// When empty, KeyPEM is the root's key and an intermediate is made here.
	IntermediatePEM string
	// KeyPEM is the PKCS#8 private key of the intermediate, or of the root
	// when IntermediatePEM is empty.
	KeyPEM string
	// IntermediateTTL bounds a generated intermediate (DefaultIntermediateTTL
	// when zero).
	IntermediateTTL time.Duration
	Now             time.Time
}

// ImportAuthority checks an operator's CA material and returns it as an
// external authority, state UNSPECIFIED for the caller to set. The material
// must be usable now: certificates unexpired, CA flags and key usage that
// allow signing, the key matching the certificate it belongs to.
func ImportAuthority(p ImportParams) (*meshfedv1.StoredAuthority, error) {
	if p.Now.IsZero() {
		p.Now = time.Now()
	}
	roots, err := tlsutil.ParseCertificatesPEM([]byte(p.RootPEM))
	if err != nil {
		return nil, fmt.Errorf("%w: root_pem: %w", ErrInvalidAuthority, err)
	}
	if len(roots) != 1 {
		return nil, fmt.Errorf("%w: root_pem: want 1 certificate, got %d", ErrInvalidAuthority, len(roots))
	}
	root := roots[0]
	if err := checkSigningCA("root_pem", root, p.Now); err != nil {
		return nil, err
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("%w: root_pem: not self-signed: %w", ErrInvalidAuthority, err)
	}
	key, err := ParsePrivateKey([]byte(p.KeyPEM))
	if err != nil {
		return nil, fmt.Errorf("private_key_pem: %w", err)
	}
	alg, err := algorithmOf(key.Public())
	if err != nil {
		return nil, fmt.Errorf("%w: private_key_pem: %w", ErrInvalidAuthority, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: private_key_pem: %w", ErrInvalidKey, err)
	}

	id := randomID()
	sa := &meshfedv1.StoredAuthority{
		Meta: &meshfedv1.Meta{Name: id},
		Authority: &meshfedv1.Authority{
			Id: id, KeyAlgorithm: alg, External: true,
			RootPem:      string(tlsutil.EncodeCertificatesPEM([]*x509.Certificate{root})),
			RootNotAfter: timestamppb.New(root.NotAfter),
		},
	}

	if p.IntermediatePEM == "" {
		// The operator's root signs an intermediate made here, which is
		// then renewed at half life like a generated one.
		if _, err := parseKeyFor(keyDER, root); err != nil {
			return nil, fmt.Errorf("%w: private_key_pem does not belong to the root: %w", ErrInvalidAuthority, err)
		}
		sa.RootKey = keyDER
		out, err := RenewIntermediate(sa, p.TrustDomain, p.IntermediateTTL, p.Now)
		if err != nil {
			return nil, err
		}
		return out, nil
	}

	chain, err := tlsutil.ParseCertificatesPEM([]byte(p.IntermediatePEM))
	if err != nil {
		return nil, fmt.Errorf("%w: intermediate_pem: %w", ErrInvalidAuthority, err)
	}
	for i, cert := range chain {
		if err := checkSigningCA(fmt.Sprintf("intermediate_pem certificate %d", i), cert, p.Now); err != nil {
			return nil, err
		}
	}
	if _, err := parseKeyFor(keyDER, chain[0]); err != nil {
		return nil, fmt.Errorf("%w: private_key_pem does not belong to the intermediate: %w", ErrInvalidAuthority, err)
	}
	sa.Authority.IntermediatePem = string(tlsutil.EncodeCertificatesPEM(chain))
	sa.Authority.IntermediateNotAfter = timestamppb.New(chain[0].NotAfter)
	sa.IntermediateKey = keyDER
	// parseAuthority checks that the chain leads to the root.
	if _, err := parseAuthority(sa); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidAuthority, err)
	}
	return sa, nil
}

// checkSigningCA reports whether cert can sign certificates at now.
func checkSigningCA(field string, cert *x509.Certificate, now time.Time) error {
	switch {
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return fmt.Errorf("%w: %s: not a CA certificate", ErrInvalidAuthority, field)
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return fmt.Errorf("%w: %s: key usage does not allow signing certificates", ErrInvalidAuthority, field)
	case now.Before(cert.NotBefore):
		return fmt.Errorf("%w: %s: not valid before %s", ErrInvalidAuthority, field, cert.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(cert.NotAfter):
		return fmt.Errorf("%w: %s: expired at %s", ErrInvalidAuthority, field, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// algorithmOf names the algorithm of a CA key; only the algorithms the CA
// settings offer are accepted.
func algorithmOf(pub crypto.PublicKey) (meshfedv1.KeyAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256, nil
		case elliptic.P384():
			return meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P384, nil
		}
		return 0, fmt.Errorf("ECDSA curve %s is not supported (P-256 or P-384)", k.Curve.Params().Name)
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_2048, nil
		case 4096:
			return meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_4096, nil
		}
		return 0, fmt.Errorf("RSA keys of %d bits are not supported (2048 or 4096)", k.N.BitLen())
	}
	return 0, fmt.Errorf("key type %T is not supported", pub)
}
