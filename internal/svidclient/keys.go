package svidclient

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/url"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// checkKeyAlgorithm rejects algorithms generateKey does not know.
func checkKeyAlgorithm(alg meshfedv1.KeyAlgorithm) error {
	switch alg {
	case meshfedv1.KeyAlgorithm_KEY_ALGORITHM_UNSPECIFIED,
		meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256,
		meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P384,
		meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_2048,
		meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_4096:
		return nil
	}
	return fmt.Errorf("unsupported key algorithm %v", alg)
}

// generateKey makes a new private key; unspecified means ECDSA P-256.
func generateKey(alg meshfedv1.KeyAlgorithm) (crypto.Signer, error) {
	switch alg {
	case meshfedv1.KeyAlgorithm_KEY_ALGORITHM_UNSPECIFIED, meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, checkKeyAlgorithm(alg)
}

// newCSR makes a key and a PKCS#10 request (DER) for it. Without an id the
// request carries no SAN at all and the server fills in the identity the
// token (or the presented SVID) is bound to; with one, its only SAN is id.
func newCSR(alg meshfedv1.KeyAlgorithm, id spiffeid.ID) (crypto.Signer, []byte, error) {
	key, err := generateKey(alg)
	if err != nil {
		return nil, nil, fmt.Errorf("generating the SVID key: %w", err)
	}
	var tmpl x509.CertificateRequest
	if !id.IsZero() {
		u, err := url.Parse(id.String())
		if err != nil {
			return nil, nil, err
		}
		tmpl.URIs = []*url.URL{u}
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &tmpl, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the certificate request: %w", err)
	}
	return key, csr, nil
}

// publicKeyEqual reports whether a certificate's key is key's public half.
func publicKeyEqual(key crypto.Signer, pub crypto.PublicKey) bool {
	k, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(pub)
}

// marshalKeyPEM encodes key as a PKCS#8 "PRIVATE KEY" PEM block.
func marshalKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
