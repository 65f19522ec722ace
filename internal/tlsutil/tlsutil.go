// Package tlsutil is the one place meshfed builds TLS configurations. Every
// configuration is TLS 1.3 only and authenticates peers by SPIFFE ID against
// a trust bundle that can change at run time (CA rotation, restore).
package tlsutil

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	mfid "github.com/meshfed/meshfed/internal/spiffeid"
)

// Source holds this process' certificate and the roots it trusts. It is safe
// for concurrent use and may be updated while connections are being made.
type Source struct {
	mu    sync.RWMutex
	svid  *x509svid.SVID
	roots []*x509.Certificate
	// federated are the roots of peer trust domains, by trust domain name.
	federated map[string][]*x509.Certificate
}

var (
	_ x509svid.Source   = (*Source)(nil)
	_ x509bundle.Source = (*Source)(nil)
)

// NewSource returns a Source that trusts roots and has no certificate yet.
func NewSource(roots []*x509.Certificate) *Source {
	return &Source{roots: roots}
}

// SetCertificate replaces the certificate (leaf first, then intermediates)
// and its key. The leaf must carry exactly one SPIFFE ID.
func (s *Source) SetCertificate(chain []*x509.Certificate, key crypto.Signer) error {
	if len(chain) == 0 {
		return errors.New("empty certificate chain")
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return fmt.Errorf("reading SPIFFE ID of certificate: %w", err)
	}
	s.mu.Lock()
	s.svid = &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
	s.mu.Unlock()
	return nil
}

// SetRoots replaces the trusted roots.
func (s *Source) SetRoots(roots []*x509.Certificate) {
	s.mu.Lock()
	s.roots = roots
	s.mu.Unlock()
}

// Roots returns the trusted roots.
func (s *Source) Roots() []*x509.Certificate {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.roots
}

// Certificate returns the current certificate chain, or nil.
func (s *Source) Certificate() []*x509.Certificate {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil
	}
	return s.svid.Certificates
}

// GetX509SVID implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil, errors.New("no certificate yet")
	}
	return s.svid, nil
}

// SetFederated replaces the roots of peer trust domains (by name).
func (s *Source) SetFederated(bundles map[string][]*x509.Certificate) {
	s.mu.Lock()
	s.federated = bundles
	s.mu.Unlock()
}

// GetX509BundleForTrustDomain implements x509bundle.Source. A federated
// trust domain answers with its own roots; any other with this process'
// roots, and the authorizer decides which IDs are allowed.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if roots, ok := s.federated[td.Name()]; ok {
		return x509bundle.FromX509Authorities(td, roots), nil
	}
	if len(s.roots) == 0 {
		return nil, errors.New("no trusted roots")
	}
	return x509bundle.FromX509Authorities(td, s.roots), nil
}

func tls13(c *tls.Config) *tls.Config {
	c.MinVersion = tls.VersionTLS13
	return c
}

// PeerMTLSServer is for the Raft port: servers only, both sides authenticated.
func PeerMTLSServer(src *Source, td spiffeid.TrustDomain) *tls.Config {
	return tls13(tlsconfig.MTLSServerConfig(src, src, tlsconfig.AdaptMatcher(mfid.MatchServerOf(td))))
}

// PeerMTLSClient dials another server (Raft, forwarding, autopilot stats).
func PeerMTLSClient(src *Source, td spiffeid.TrustDomain) *tls.Config {
	return tls13(tlsconfig.MTLSClientConfig(src, src, tlsconfig.AdaptMatcher(mfid.MatchServerOf(td))))
}

// APIServer is for the API port: the server presents its certificate; a
// client certificate is optional (operators and workloads use bearer tokens)
// but, when given, must be a valid SPIFFE certificate from the bundle.
func APIServer(src *Source) *tls.Config {
	c := tls13(tlsconfig.TLSServerConfig(src))
	c.ClientAuth = tls.RequestClientCert
	verify := tlsconfig.VerifyPeerCertificate(src, tlsconfig.AuthorizeAny())
	c.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil
		}
		return verify(raw, chains)
	}
	return c
}

// APIClient dials the API as an operator or workload: it checks that the
// server holds a server identity issued under roots.
func APIClient(roots []*x509.Certificate) *tls.Config {
	return tls13(tlsconfig.TLSClientConfig(NewSource(roots), tlsconfig.AdaptMatcher(mfid.MatchServer())))
}

// PeerClient dials a server of a peer cluster: it verifies the server against
// the peer's roots and requires a server identity of the peer's trust domain.
// With src, it presents src's certificate (an established peering); without,
// none (first contact, proven by the peering secret instead).
func PeerClient(src *Source, peerTD spiffeid.TrustDomain, peerRoots []*x509.Certificate) *tls.Config {
	bundle := x509bundle.FromX509Authorities(peerTD, peerRoots)
	match := tlsconfig.AdaptMatcher(mfid.MatchServerOf(peerTD))
	if src == nil {
		return tls13(tlsconfig.TLSClientConfig(bundle, match))
	}
	return tls13(tlsconfig.MTLSClientConfig(src, bundle, match))
}

// ParseCertificatesPEM decodes every CERTIFICATE block of data.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
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
			return nil, fmt.Errorf("parsing certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// EncodeCertificatesPEM encodes certs as concatenated PEM blocks.
func EncodeCertificatesPEM(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// LoadCertificatesFile reads a PEM bundle from a file.
func LoadCertificatesFile(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading CA file: %w", err)
	}
	certs, err := ParseCertificatesPEM(data)
	if err != nil {
		return nil, fmt.Errorf("CA file %s: %w", path, err)
	}
	return certs, nil
}
