package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// haproxyTrustDomain names the SPIFFE IDs of the HAProxy pair's
// certificates. HAProxy does not read them (it checks the chain and, on the
// server side, the subject CN); they make the certificates look like the
// SVIDs meshfed-proxy presents.
const haproxyTrustDomain = "bench.mesh"

// pkiFiles are the PEM files the HAProxy pair is configured with: a CA and
// one certificate (with its key in the same file, as HAProxy's crt wants)
// per side.
type pkiFiles struct {
	ca, client, server string
}

// writePKI makes an ECDSA P-256 CA and two leaves signed by it, SPIFFE
// style (one URI SAN each), the key type meshfed's SVIDs have.
func writePKI(dir string) (*pkiFiles, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "proxybench CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	f := &pkiFiles{
		ca:     filepath.Join(dir, "ca.pem"),
		client: filepath.Join(dir, "client.pem"),
		server: filepath.Join(dir, "server.pem"),
	}
	if err := os.WriteFile(f.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		return nil, err
	}
	for _, l := range []struct{ name, path string }{{"client", f.client}, {"server", f.server}} {
		data, err := leafPEM(ca, caKey, l.name, now)
		if err != nil {
			return nil, fmt.Errorf("%s certificate: %w", l.name, err)
		}
		if err := os.WriteFile(l.path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// leafPEM is the certificate and PKCS#8 key of spiffe://bench.mesh/ns/default/sa/<name>.
func leafPEM(ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, now time.Time) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	id, err := url.Parse(fmt.Sprintf("spiffe://%s/ns/default/sa/%s", haproxyTrustDomain, name))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...), nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}
