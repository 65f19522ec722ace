package ca

import (
	"crypto/x509"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.step.sm/crypto/x509util"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// IntermediateNeedsRenewal reports whether an authority's intermediate has
// passed half of its lifetime, when it is renewed so that every certificate
// it signed can still be renewed under the next one before it expires.
func IntermediateNeedsRenewal(a *meshfedv1.StoredAuthority, now time.Time) (bool, error) {
	certs, err := tlsutil.ParseCertificatesPEM([]byte(a.GetAuthority().GetIntermediatePem()))
	if err != nil {
		return false, fmt.Errorf("%w: intermediate: %v", ErrInvalidAuthority, err)
	}
	return !now.Before(RenewalTime(certs[0])), nil
}

// RenewalTime is when a certificate issued here should be replaced: half way
// between its issuance and its expiry. Issuance is NotBefore plus the
// backdate every certificate gets, so short lifetimes are not skewed by it.
func RenewalTime(c *x509.Certificate) time.Time {
	issued := c.NotBefore.Add(backdate)
	if !issued.Before(c.NotAfter) {
		issued = c.NotBefore
	}
	return issued.Add(c.NotAfter.Sub(issued) / 2)
}

// RenewIntermediate returns a copy of a with a new intermediate (and key)
// signed by the same root, valid for ttl (0: DefaultIntermediateTTL) but
// never past the root. Certificates signed by the old intermediate keep
// verifying against the root, so renewal needs no propagation step.
func RenewIntermediate(a *meshfedv1.StoredAuthority, td spiffeid.TrustDomain, ttl time.Duration, now time.Time) (*meshfedv1.StoredAuthority, error) {
	if ttl == 0 {
		ttl = DefaultIntermediateTTL
	}
	if ttl < 0 {
		return nil, fmt.Errorf("%w: intermediate TTL %s is negative", ErrInvalidParams, ttl)
	}
	roots, err := tlsutil.ParseCertificatesPEM([]byte(a.GetAuthority().GetRootPem()))
	if err != nil {
		return nil, fmt.Errorf("%w: root: %v", ErrInvalidAuthority, err)
	}
	root := roots[0]
	if len(a.GetRootKey()) == 0 {
		return nil, fmt.Errorf("%w: authority %s has no root key (an imported intermediate cannot be renewed here)", ErrInvalidAuthority, a.GetAuthority().GetId())
	}
	rootKey, err := parseKeyFor(a.GetRootKey(), root)
	if err != nil {
		return nil, fmt.Errorf("%w: root key: %v", ErrInvalidKey, err)
	}
	alg := a.GetAuthority().GetKeyAlgorithm()
	intKey, err := generateKey(alg)
	if err != nil {
		return nil, err
	}
	id := a.GetAuthority().GetId()
	tmpl := caTemplate(td, "intermediate", id, td.ID().URL(), now.Add(-backdate), minTime(now.Add(ttl), root.NotAfter))
	tmpl.MaxPathLen = 0
	tmpl.MaxPathLenZero = true
	inter, err := x509util.CreateCertificate(tmpl, root, intKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("creating intermediate certificate: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(intKey)
	if err != nil {
		return nil, fmt.Errorf("encoding intermediate key: %w", err)
	}
	out := proto.Clone(a).(*meshfedv1.StoredAuthority)
	out.Authority.IntermediatePem = string(tlsutil.EncodeCertificatesPEM([]*x509.Certificate{inter}))
	out.Authority.IntermediateNotAfter = timestamppb.New(inter.NotAfter)
	// A cross-signature belonged to the old intermediate's key.
	out.Authority.CrossSignedIntermediatePem = ""
	out.IntermediateKey = der
	return out, nil
}
