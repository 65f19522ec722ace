// Package ca owns the cluster's certificate authority: it generates the key
// material of authorities (a root and an intermediate), signs server
// certificates and workload SVIDs with the active intermediate, and answers
// which roots make up the trust bundle. Authorities themselves live in
// replicated state; this package only turns them into a signer and a bundle.
package ca

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smallstep/certificates/authority"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.step.sm/crypto/keyutil"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

const (
	// DefaultRootTTL is the lifetime of a generated root.
	DefaultRootTTL = 10 * 365 * 24 * time.Hour
	// DefaultIntermediateTTL is the lifetime of a generated intermediate;
	// it is renewed at half life.
	DefaultIntermediateTTL = 30 * 24 * time.Hour
	// DefaultSVIDTTL is the lifetime of a workload SVID; proxies renew at
	// half life.
	DefaultSVIDTTL = time.Hour
	// DefaultServerCertTTL is the lifetime of a control plane server's
	// certificate.
	DefaultServerCertTTL = 24 * time.Hour
)

// backdate moves NotBefore into the past so that a certificate is usable at
// once by peers whose clocks run slightly behind the issuing server's.
const backdate = time.Minute

// Config configures a CA.
type Config struct {
	// TrustDomain is the only trust domain the CA issues identities in.
	TrustDomain spiffeid.TrustDomain
	// Logger receives rotation and issuance events; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// CA signs certificates with the active authority's intermediate. It wraps
// smallstep's embedded authority, whose signer is a function reading the
// active intermediate, so SetAuthorities swaps signers without rebuilding it.
// A CA is safe for concurrent use.
type CA struct {
	td  spiffeid.TrustDomain
	log *slog.Logger
	now func() time.Time

	// mu orders rotation against issuance. Sign holds it for reading across
	// the whole smallstep call, so the intermediate that bounded the leaf's
	// lifetime is the one the signer function then hands out; SetAuthorities
	// holds it for writing while it swaps.
	mu sync.RWMutex
	// auth is built by the first SetAuthorities, because NewEmbedded refuses
	// to start without a root and the roots arrive with replicated state.
	// It is never rebuilt. The roots it was built with serve only smallstep
	// features this package does not use (root lookup, x5c tokens); Bundle
	// is the trust bundle.
	auth *authority.Authority
	// cur is read without mu by the signer function, Bundle and ActiveID.
	cur atomic.Pointer[state]
}

// state is one immutable view of the installed authorities.
type state struct {
	activeID string
	// chain is what the active authority signs with: its intermediate first,
	// then any certificates between it and the root, then the intermediate
	// cross-signed by the previous root, if any.
	chain  []*x509.Certificate
	signer crypto.Signer
	roots  []*x509.Certificate
	// retired are the roots of retired authorities.
	retired []*x509.Certificate
	// bundlePEM is roots, PEM-encoded once for every response that carries
	// the bundle.
	bundlePEM string
	// issuers maps the subject key ID of each authority's current
	// intermediate to the authority's ID.
	issuers map[string]string
}

// New returns a CA that cannot sign until SetAuthorities is called.
func New(cfg Config) (*CA, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, fmt.Errorf("%w: trust domain is required", ErrInvalidParams)
	}
	c := &CA{td: cfg.TrustDomain, log: cfg.Logger, now: cfg.Now}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// SetAuthorities installs the full set of authorities from replicated state.
// The ACTIVE one signs; the trust bundle is the roots of every authority that
// is not RETIRED. On error nothing changes.
func (c *CA) SetAuthorities(auths []*meshfedv1.StoredAuthority) error {
	next, err := newState(auths)
	if err != nil {
		return err
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.auth == nil {
		a, err := authority.NewEmbedded(
			authority.WithX509SignerFunc(c.signer),
			authority.WithX509RootCerts(next.roots...),
			authority.WithQuietInit(),
		)
		if err != nil {
			return fmt.Errorf("starting signing authority: %w", err)
		}
		c.auth = a
	}
	prev := c.cur.Swap(next)
	if prev == nil || prev.activeID != next.activeID {
		var prevID string
		if prev != nil {
			prevID = prev.activeID
		}
		c.log.Info("active certificate authority changed",
			"previous", prevID, "active", next.activeID, "roots", len(next.roots),
			"intermediate_not_after", next.chain[0].NotAfter)
	}
	return nil
}

// signer is the smallstep signer function.
func (c *CA) signer() ([]*x509.Certificate, crypto.Signer, error) {
	s := c.cur.Load()
	if s == nil {
		return nil, nil, ErrNoActiveAuthority
	}
	return slices.Clone(s.chain), s.signer, nil
}

// Bundle returns the roots of every authority that is not retired, or nil
// before SetAuthorities.
func (c *CA) Bundle() []*x509.Certificate {
	s := c.cur.Load()
	if s == nil {
		return nil
	}
	return slices.Clone(s.roots)
}

// ActiveChain returns what the active authority signs with: its
// intermediate, any certificates up to its root, and the cross-signed
// intermediate during a rotation; nil before SetAuthorities.
func (c *CA) ActiveChain() []*x509.Certificate {
	s := c.cur.Load()
	if s == nil {
		return nil
	}
	return slices.Clone(s.chain)
}

// Retired returns the roots of retired authorities, which nothing may
// trust any more.
func (c *CA) Retired() []*x509.Certificate {
	s := c.cur.Load()
	if s == nil {
		return nil
	}
	return slices.Clone(s.retired)
}

// BundlePEM returns Bundle as PEM, or "" before SetAuthorities.
func (c *CA) BundlePEM() string {
	s := c.cur.Load()
	if s == nil {
		return ""
	}
	return s.bundlePEM
}

// ActiveID returns the ID of the authority that signs, or "" before
// SetAuthorities.
func (c *CA) ActiveID() string {
	s := c.cur.Load()
	if s == nil {
		return ""
	}
	return s.activeID
}

// AuthorityOf returns the ID of the authority whose current intermediate
// issued leaf, or "" when none of the installed ones did (an older
// intermediate, or a retired authority).
func (c *CA) AuthorityOf(leaf *x509.Certificate) string {
	s := c.cur.Load()
	if s == nil || len(leaf.AuthorityKeyId) == 0 {
		return ""
	}
	return s.issuers[string(leaf.AuthorityKeyId)]
}

// newState parses and checks every authority that is not retired.
func newState(auths []*meshfedv1.StoredAuthority) (*state, error) {
	s := &state{issuers: map[string]string{}}
	seen := make(map[string]bool, len(auths))
	for i, sa := range auths {
		a := sa.GetAuthority()
		if a == nil {
			return nil, fmt.Errorf("%w: authorities[%d] has no authority", ErrInvalidAuthority, i)
		}
		id := a.GetId()
		if id == "" {
			return nil, fmt.Errorf("%w: authorities[%d] has no id", ErrInvalidAuthority, i)
		}
		if seen[id] {
			return nil, fmt.Errorf("%w: authority %q appears twice", ErrInvalidAuthority, id)
		}
		seen[id] = true

		switch a.GetState() {
		case meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRED:
			if roots, err := tlsutil.ParseCertificatesPEM([]byte(a.GetRootPem())); err == nil {
				s.retired = append(s.retired, roots...)
			}
			continue
		case meshfedv1.AuthorityState_AUTHORITY_STATE_PREPARED,
			meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE,
			meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRING:
		default:
			return nil, fmt.Errorf("%w: authority %q has state %v", ErrInvalidAuthority, id, a.GetState())
		}

		p, err := parseAuthority(sa)
		if err != nil {
			return nil, fmt.Errorf("%w: authority %q: %w", ErrInvalidAuthority, id, err)
		}
		s.roots = append(s.roots, p.root)
		if skid := p.chain[0].SubjectKeyId; len(skid) > 0 {
			s.issuers[string(skid)] = id
		}

		if a.GetState() != meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE {
			continue
		}
		if s.activeID != "" {
			return nil, fmt.Errorf("%w: %q and %q", ErrMultipleActiveAuthorities, s.activeID, id)
		}
		if p.intermediateKey == nil {
			return nil, fmt.Errorf("%w: active authority %q has no intermediate key", ErrInvalidAuthority, id)
		}
		s.activeID = id
		s.chain = p.chain
		s.signer = p.intermediateKey
	}
	if s.activeID == "" {
		return nil, ErrNoActiveAuthority
	}
	s.bundlePEM = string(tlsutil.EncodeCertificatesPEM(s.roots))
	return s, nil
}

// parsedAuthority is the decoded form of a StoredAuthority.
type parsedAuthority struct {
	root            *x509.Certificate
	rootKey         crypto.Signer // nil for an imported root without its key
	chain           []*x509.Certificate
	intermediateKey crypto.Signer // nil when not stored
}

// parseAuthority decodes sa and checks that its parts belong together: the
// intermediate chains to the root, a cross-signed intermediate carries the
// intermediate's subject and key, and each key matches its certificate.
func parseAuthority(sa *meshfedv1.StoredAuthority) (*parsedAuthority, error) {
	a := sa.GetAuthority()
	roots, err := tlsutil.ParseCertificatesPEM([]byte(a.GetRootPem()))
	if err != nil {
		return nil, fmt.Errorf("root_pem: %w", err)
	}
	if len(roots) != 1 {
		return nil, fmt.Errorf("root_pem: want 1 certificate, got %d", len(roots))
	}
	root := roots[0]
	if !root.IsCA {
		return nil, fmt.Errorf("root_pem: certificate is not a CA")
	}

	// intermediate_pem may hold a chain (an imported intermediate below
	// another intermediate): the issuing certificate comes first.
	chain, err := tlsutil.ParseCertificatesPEM([]byte(a.GetIntermediatePem()))
	if err != nil {
		return nil, fmt.Errorf("intermediate_pem: %w", err)
	}
	for i, cert := range chain {
		parent := root
		if i+1 < len(chain) {
			parent = chain[i+1]
		}
		if err := cert.CheckSignatureFrom(parent); err != nil {
			return nil, fmt.Errorf("intermediate_pem: certificate %d is not issued by its parent: %w", i, err)
		}
	}

	if cs := a.GetCrossSignedIntermediatePem(); cs != "" {
		cross, err := tlsutil.ParseCertificatesPEM([]byte(cs))
		if err != nil {
			return nil, fmt.Errorf("cross_signed_intermediate_pem: %w", err)
		}
		if len(cross) != 1 {
			return nil, fmt.Errorf("cross_signed_intermediate_pem: want 1 certificate, got %d", len(cross))
		}
		if !keyutil.Equal(cross[0].PublicKey, chain[0].PublicKey) ||
			string(cross[0].RawSubject) != string(chain[0].RawSubject) {
			return nil, fmt.Errorf("cross_signed_intermediate_pem: subject or key differs from the intermediate")
		}
		chain = append(chain, cross[0])
	}

	p := &parsedAuthority{root: root, chain: chain}
	if der := sa.GetRootKey(); len(der) > 0 {
		if p.rootKey, err = parseKeyFor(der, root); err != nil {
			return nil, fmt.Errorf("root_key: %w", err)
		}
	}
	if der := sa.GetIntermediateKey(); len(der) > 0 {
		if p.intermediateKey, err = parseKeyFor(der, chain[0]); err != nil {
			return nil, fmt.Errorf("intermediate_key: %w", err)
		}
	}
	return p, nil
}

// parseKeyFor parses a PKCS#8 DER key and checks it belongs to cert.
func parseKeyFor(der []byte, cert *x509.Certificate) (crypto.Signer, error) {
	key, err := parsePKCS8(der)
	if err != nil {
		return nil, err
	}
	if err := keyutil.VerifyPair(cert.PublicKey, key); err != nil {
		return nil, err
	}
	return key, nil
}
