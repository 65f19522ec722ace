package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// minRSABits is the smallest RSA key a leaf may have.
const minRSABits = 2048

// SignParams describes a leaf certificate. The same request serves server
// certificates and workload SVIDs; only the ID differs.
type SignParams struct {
	// CSR is a PKCS#10 request in DER. Only its public key is used, once its
	// signature has verified: the CA decides everything else.
	CSR []byte
	// ID is the only URI SAN of the leaf; URI SANs in the CSR are ignored.
	ID       spiffeid.ID
	DNSNames []string
	IPs      []net.IP
	// TTL defaults to DefaultSVIDTTL and is clamped so that the leaf never
	// outlives the intermediate.
	TTL time.Duration
}

// Sign issues a leaf certificate and returns the chain: the leaf, the
// intermediate, and, when the active authority has been cross-signed by the
// previous root, the cross-signed intermediate.
func (c *CA) Sign(p SignParams) ([]*x509.Certificate, error) {
	chain, _, err := c.sign(p, nil)
	return chain, err
}

// Issued is a signed leaf and the authority that signed it.
type Issued struct {
	// Chain is the leaf, then the certificates up to (not including) the
	// root, as Sign returns them.
	Chain []*x509.Certificate
	// AuthorityID names the authority whose intermediate signed the leaf.
	AuthorityID string
}

// WorkloadParams describes a workload SVID request.
type WorkloadParams struct {
	// CSR is a PKCS#10 request in DER, checked with CheckWorkloadCSR.
	CSR []byte
	// ID is the identity the caller was granted: the SVID's only URI SAN.
	ID spiffeid.ID
	// AllowedDNSNames are the DNS SANs the CSR may ask for.
	AllowedDNSNames []string
	// TTL is the SVID lifetime (DefaultSVIDTTL when zero), capped by the
	// intermediate's expiry.
	TTL time.Duration
}

// SignWorkload checks a workload's CSR against the identity it was granted
// and issues its SVID. Unlike Sign, it refuses a CSR that asks for anything
// beyond that identity, so that a refused request is visible to the
// workload instead of being silently narrowed.
func (c *CA) SignWorkload(p WorkloadParams) (*Issued, error) {
	csr, err := x509.ParseCertificateRequest(p.CSR)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCSR, err)
	}
	if err := CheckWorkloadCSR(csr, p.ID, p.AllowedDNSNames); err != nil {
		return nil, err
	}
	chain, id, err := c.sign(SignParams{CSR: p.CSR, ID: p.ID, DNSNames: csr.DNSNames, TTL: p.TTL}, csr)
	if err != nil {
		return nil, err
	}
	return &Issued{Chain: chain, AuthorityID: id}, nil
}

// oidBasicConstraints is the X.509 basicConstraints extension.
var oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}

// CheckWorkloadCSR reports whether csr may become an SVID for id: its URI
// SANs are none (the CA fills in id) or exactly id; every DNS SAN is in
// allowedDNS; it has no IP or email SANs; and it does not ask to be a CA.
func CheckWorkloadCSR(csr *x509.CertificateRequest, id spiffeid.ID, allowedDNS []string) error {
	switch len(csr.URIs) {
	case 0:
	case 1:
		if csr.URIs[0].String() != id.String() {
			return fmt.Errorf("%w: URI SAN %q is not the granted identity %q", ErrInvalidCSR, csr.URIs[0].String(), id)
		}
	default:
		return fmt.Errorf("%w: %d URI SANs; an SVID has exactly one", ErrInvalidCSR, len(csr.URIs))
	}
	for _, name := range csr.DNSNames {
		if !slices.Contains(allowedDNS, name) {
			return fmt.Errorf("%w: DNS SAN %q is not allowed for %s", ErrInvalidCSR, name, id)
		}
	}
	if len(csr.IPAddresses) > 0 {
		return fmt.Errorf("%w: IP SANs are not allowed in an SVID", ErrInvalidCSR)
	}
	if len(csr.EmailAddresses) > 0 {
		return fmt.Errorf("%w: email SANs are not allowed in an SVID", ErrInvalidCSR)
	}
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidBasicConstraints) {
			continue
		}
		var bc struct {
			IsCA       bool `asn1:"optional"`
			MaxPathLen int  `asn1:"optional,default:-1"`
		}
		if _, err := asn1.Unmarshal(ext.Value, &bc); err != nil {
			return fmt.Errorf("%w: basicConstraints: %w", ErrInvalidCSR, err)
		}
		if bc.IsCA {
			return fmt.Errorf("%w: the request asks for a CA certificate", ErrInvalidCSR)
		}
	}
	return nil
}

// sign issues a leaf and names the authority that signed it. csr is p.CSR
// already parsed, or nil.
func (c *CA) sign(p SignParams, csr *x509.CertificateRequest) ([]*x509.Certificate, string, error) {
	if p.ID.IsZero() {
		return nil, "", fmt.Errorf("%w: id is required", ErrInvalidID)
	}
	if !p.ID.MemberOf(c.td) {
		return nil, "", fmt.Errorf("%w: %q is not in trust domain %q", ErrInvalidID, p.ID, c.td)
	}
	ttl := p.TTL
	switch {
	case ttl < 0:
		return nil, "", fmt.Errorf("%w: TTL %s is negative", ErrInvalidParams, ttl)
	case ttl == 0:
		ttl = DefaultSVIDTTL
	}
	for i, name := range p.DNSNames {
		if name == "" {
			return nil, "", fmt.Errorf("%w: DNS name %d is empty", ErrInvalidParams, i)
		}
	}
	for i, ip := range p.IPs {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, "", fmt.Errorf("%w: IP %d is not an IP address", ErrInvalidParams, i)
		}
	}
	if csr == nil {
		var err error
		if csr, err = x509.ParseCertificateRequest(p.CSR); err != nil {
			return nil, "", fmt.Errorf("%w: %w", ErrInvalidCSR, err)
		}
	}
	// The CSR's signature is the proof that the caller holds the key.
	if err := csr.CheckSignature(); err != nil {
		return nil, "", fmt.Errorf("%w: signature: %w", ErrInvalidCSR, err)
	}
	keyUsage, err := leafKeyUsage(csr)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrInvalidCSR, err)
	}

	c.mu.RLock()
	defer c.mu.RUnlock()
	s := c.cur.Load()
	if s == nil {
		return nil, "", ErrNoActiveAuthority
	}
	issuer := s.chain[0]
	now := c.now()
	if !now.Before(issuer.NotAfter) {
		return nil, "", fmt.Errorf("%w: authority %q expired at %s", ErrAuthorityExpired, s.activeID, issuer.NotAfter.UTC().Format(time.RFC3339))
	}
	// The leaf lives ttl, but never past the intermediate. smallstep dates
	// the leaf from the real clock (below), so the cap is counted from it
	// too: counted from c.now(), which tests fix, a capped leaf could
	// outlive its intermediate by however far the two clocks are apart.
	signNow := time.Now()
	lifetime := minTime(signNow.Add(ttl), issuer.NotAfter).Sub(signNow)
	if lifetime <= 0 {
		return nil, "", fmt.Errorf("%w: authority %q expires now", ErrAuthorityExpired, s.activeID)
	}
	var rawSubject []byte
	if len(p.DNSNames) > 0 {
		var err error
		if rawSubject, err = asn1.Marshal(pkix.Name{CommonName: p.DNSNames[0]}.ToRDNSequence()); err != nil {
			return nil, "", fmt.Errorf("%w: subject: %w", ErrInvalidParams, err)
		}
	}
	// The leaf is issued through the authority's rekey path: smallstep
	// makes a certificate from this template with the CSR's key, the
	// template's lifetime (NotAfter - NotBefore, less the authority's
	// one-minute backdate, which it puts back) and nothing else of the
	// CSR. Its Sign path would parse the CSR into a template of its own and
	// verify the CSR's signature twice more; the signature was checked
	// above.
	tmpl := &x509.Certificate{
		RawSubject:            rawSubject,
		URIs:                  []*url.URL{p.ID.URL()},
		DNSNames:              slices.Clone(p.DNSNames),
		IPAddresses:           slices.Clone(p.IPs),
		NotBefore:             signNow,
		NotAfter:              signNow.Add(lifetime + backdate),
		KeyUsage:              keyUsage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		SerialNumber:          big.NewInt(0),
	}
	chain, err := c.auth.RenewContext(context.Background(), tmpl, csr.PublicKey)
	if err != nil {
		var sc interface{ StatusCode() int }
		if errors.As(err, &sc) && sc.StatusCode() == http.StatusBadRequest {
			return nil, "", fmt.Errorf("%w: %w", ErrInvalidCSR, err)
		}
		return nil, "", fmt.Errorf("signing certificate for %s: %w", p.ID, err)
	}
	c.log.Debug("issued certificate", "id", p.ID.String(), "authority", s.activeID,
		"serial", chain[0].SerialNumber.Text(16), "not_after", chain[0].NotAfter)
	return chain, s.activeID, nil
}

// leafKeyUsage checks that the CSR's key is strong enough for a leaf and
// returns the key usage that fits it: RSA keys may also encipher keys.
func leafKeyUsage(csr *x509.CertificateRequest) (x509.KeyUsage, error) {
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return x509.KeyUsageDigitalSignature, nil
		}
		return 0, fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return 0, fmt.Errorf("RSA key of %d bits is shorter than %d", k.N.BitLen(), minRSABits)
		}
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, nil
	case ed25519.PublicKey:
		return x509.KeyUsageDigitalSignature, nil
	default:
		return 0, fmt.Errorf("unsupported key type %T", csr.PublicKey)
	}
}
