package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.step.sm/crypto/keyutil"
)

// pemTypePrivateKey is the PEM block type of a PKCS#8 private key.
const pemTypePrivateKey = "PRIVATE KEY"

// NewServerCSR generates a fresh ECDSA P-256 key and a CSR for a server
// identity with the given DNS names and IPs. The key never leaves the caller;
// the CSR's SANs are informative only, since Sign sets the leaf's SANs itself.
func NewServerCSR(id spiffeid.ID, dnsNames []string, ips []net.IP) (csrDER []byte, key crypto.Signer, err error) {
	if id.IsZero() {
		return nil, nil, fmt.Errorf("%w: id is required", ErrInvalidID)
	}
	key, err = keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		return nil, nil, fmt.Errorf("generating server key: %w", err)
	}
	csrDER, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs:        []*url.URL{id.URL()},
		DNSNames:    dnsNames,
		IPAddresses: ips,
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating certificate request: %w", err)
	}
	return csrDER, key, nil
}

// MarshalPrivateKey encodes key as a PKCS#8 PEM block. Writing it with
// restrictive permissions is the caller's job.
func MarshalPrivateKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemTypePrivateKey, Bytes: der}), nil
}

// ParsePrivateKey decodes the first PEM block of data, which must be a
// PKCS#8 private key.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("%w: no PEM block found", ErrInvalidKey)
	}
	if b.Type != pemTypePrivateKey {
		return nil, fmt.Errorf("%w: PEM block is %q, want %q (PKCS#8)", ErrInvalidKey, b.Type, pemTypePrivateKey)
	}
	return parsePKCS8(b.Bytes)
}

func parsePKCS8(der []byte) (crypto.Signer, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %T cannot sign", ErrInvalidKey, k)
	}
	return s, nil
}
