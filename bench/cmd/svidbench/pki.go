package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"time"
)

// workloadKey is one simulated workload's private key. The same keys serve
// both systems, so that both sign requests from the same key material.
type workloadKey struct {
	key *ecdsa.PrivateKey
}

func newWorkloadKeys(n int) ([]workloadKey, error) {
	keys := make([]workloadKey, n)
	for i := range keys {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		keys[i] = workloadKey{k}
	}
	return keys, nil
}

// workloadID is the SPIFFE ID of workload i in trust domain td.
func workloadID(td string, i int) string {
	return fmt.Sprintf("spiffe://%s/ns/bench/sa/w%d", td, i)
}

// csrDER returns a PKCS#10 request with no subject and one URI SAN, id:
// what both systems accept for a SPIFFE SVID.
func csrDER(key crypto.Signer, id string) ([]byte, error) {
	u, err := url.Parse(id)
	if err != nil {
		return nil, err
	}
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
}

// freshCSR makes a new workload key and its CSR for id.
func freshCSR(id string) ([]byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return csrDER(k, id)
}

// parseChainPEM decodes every certificate of a PEM chain, leaf first.
func parseChainPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in PEM")
	}
	return out, nil
}

// checkSVID verifies that chainPEM is a client-usable SVID for id whose key
// is key's, chaining to a root in bundlePEM, and returns it as a TLS
// certificate.
func checkSVID(chainPEM, bundlePEM []byte, id string, key *ecdsa.PrivateKey) (tls.Certificate, *x509.Certificate, error) {
	chain, err := parseChainPEM(chainPEM)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("certificate chain: %w", err)
	}
	roots, err := parseChainPEM(bundlePEM)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("bundle: %w", err)
	}
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rp.AddCert(r)
	}
	for _, c := range chain[1:] {
		ip.AddCert(c)
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: rp, Intermediates: ip,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("SVID does not verify as a client certificate: %w", err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		return tls.Certificate{}, nil, fmt.Errorf("SVID names %v, want exactly %s", leaf.URIs, id)
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return tls.Certificate{}, nil, errors.New("SVID is not for the workload's key")
	}
	tc := tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, leaf, nil
}

// caPair is a root and an intermediate for step-ca, made like meshfed's:
// ECDSA P-256, path length 1 under the root.
type caPair struct {
	rootPEM, interPEM, interKeyPEM []byte
}

func newCAPair(name string) (*caPair, error) {
	now := time.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	rootTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name + " Root CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return nil, err
	}
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	interTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name + " Intermediate CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, root, &interKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(interKey)
	if err != nil {
		return nil, err
	}
	return &caPair{
		rootPEM:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}),
		interPEM:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: interDER}),
		interKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}

// hasCertificatePEM is the per-request check of a response: the full parse
// and verification is done once per workload in setup, so that the load
// generator spends its CPU on requests.
func hasCertificatePEM(s string) bool {
	return strings.HasPrefix(s, "-----BEGIN CERTIFICATE-----")
}
