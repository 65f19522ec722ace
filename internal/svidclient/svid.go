package svidclient

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// Attest obtains the first SVID with the workload-join token, retrying
// across servers until it succeeds, a server refuses (an error wrapping
// ErrRefused and the server's status), or ctx ends. It does nothing when
// the client already holds an SVID. Start calls it; call it alone to get an
// SVID once without background renewal (as "meshfed svid fetch" does).
func (c *Client) Attest(ctx context.Context) error {
	c.renewMu.Lock()
	defer c.renewMu.Unlock()
	c.mu.RLock()
	has := c.svid != nil
	c.mu.RUnlock()
	if has {
		return nil
	}
	return c.attest(ctx)
}

// attest runs the Attest RPC; renewMu is held. The key is made once and
// kept across attempts; only its CSR is ever sent.
func (c *Client) attest(ctx context.Context) error {
	key, csr, err := newCSR(c.cfg.KeyAlgorithm, c.cfg.ExpectedID)
	if err != nil {
		return err
	}
	return c.call(ctx, "attestation", nil, func(ctx context.Context, addr string, api meshfedv1.WorkloadIdentityServiceClient) error {
		resp, err := api.Attest(ctx, &meshfedv1.AttestRequest{Token: c.cfg.Token, Csr: csr})
		if err != nil {
			return err
		}
		return c.accept(addr, key, resp, "attested")
	})
}

// Renew replaces the SVID now with one for a new key, retrying across
// servers until it succeeds, a server refuses, the SVID expires, or ctx
// ends. The client renews on its own; Renew is for callers that want a new
// certificate at once. If the SVID has already expired, Renew attests
// again with the token instead.
func (c *Client) Renew(ctx context.Context) error {
	c.renewMu.Lock()
	defer c.renewMu.Unlock()
	return c.renew(ctx)
}

// renew runs the Renew RPC over mutual TLS with the current SVID; renewMu
// is held.
func (c *Client) renew(ctx context.Context) error {
	now := c.cfg.Now()
	c.mu.RLock()
	cur, own := c.svid, c.own
	c.mu.RUnlock()
	if cur == nil {
		return ErrNoSVID
	}
	// A certificate that expired, or whose root left the bundle (a forced
	// CA retirement), cannot authenticate any more: only the token can get
	// a new one. It may be used up; then this keeps failing until an
	// operator gives the workload a new token.
	left := cur.Certificates[0].NotAfter.Sub(now)
	if left <= 0 {
		c.log.Warn("the SVID expired before it could be renewed, attesting again with the token", "spiffe_id", cur.ID, "expired", cur.Certificates[0].NotAfter)
		return c.attest(ctx)
	}
	if err := verifyChain(cur.Certificates, own, now); err != nil {
		c.log.Warn("the trust bundle no longer trusts the SVID, attesting again with the token", "spiffe_id", cur.ID, "error", err)
		return c.attest(ctx)
	}
	// Past expiry no server accepts the certificate: stop retrying then.
	rctx, cancel := context.WithTimeout(ctx, left)
	defer cancel()
	key, csr, err := newCSR(c.cfg.KeyAlgorithm, cur.ID)
	if err != nil {
		return err
	}
	err = c.call(rctx, "renewal", cur, func(ctx context.Context, addr string, api meshfedv1.WorkloadIdentityServiceClient) error {
		resp, err := api.Renew(ctx, &meshfedv1.RenewRequest{Csr: csr})
		if err != nil {
			return err
		}
		return c.accept(addr, key, resp, "renewed")
	})
	if errors.Is(err, ErrRefused) && status.Code(err) == codes.Unauthenticated {
		// The servers no longer accept the certificate (its authority was
		// retired before the client heard of it): same as expiry.
		c.log.Warn("the servers no longer accept the SVID, attesting again with the token", "spiffe_id", cur.ID, "error", err)
		return c.attest(ctx)
	}
	return err
}

// accept checks an SVIDResponse for key and installs it: the leaf must be
// for key, name one SPIFFE ID (the expected one, and the one already held
// when renewing), and verify against the trust bundle.
func (c *Client) accept(addr string, key crypto.Signer, resp *meshfedv1.SVIDResponse, verb string) error {
	invalid := func(format string, args ...any) error {
		return &invalidResponseError{addr: addr, err: fmt.Errorf(format, args...)}
	}
	chain, err := tlsutil.ParseCertificatesPEM([]byte(resp.GetCertificateChainPem()))
	if err != nil {
		return invalid("certificate_chain_pem: %v", err)
	}
	leaf := chain[0]
	if !publicKeyEqual(key, leaf.PublicKey) {
		return invalid("the certificate is not for the key of the request")
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return invalid("certificate: %v", err)
	}
	if s := resp.GetSpiffeId(); s != "" && s != id.String() {
		return invalid("spiffe_id %q differs from the certificate's %q", s, id)
	}
	if want := c.cfg.ExpectedID; !want.IsZero() && id != want {
		return invalid("issued an SVID for %s, expected %s", id, want)
	}
	roots, err := tlsutil.ParseCertificatesPEM([]byte(resp.GetBundlePem()))
	if err != nil {
		return invalid("bundle_pem: %v", err)
	}
	now := c.cfg.Now()

	c.mu.Lock()
	cur, own := c.svid, c.own
	if cur != nil && cur.ID != id {
		c.mu.Unlock()
		return invalid("issued an SVID for %s, the client holds %s", id, cur.ID)
	}
	// The bundle stream is the authority on the trust bundle; a response
	// only adds the roots its chain needs, so that a server lagging behind
	// cannot bring back a retired root the stream already removed.
	newOwn := own
	if own == nil || own.TrustDomain() != id.TrustDomain() || verifyChain(chain, own, now) != nil {
		merged := roots
		if own != nil && own.TrustDomain() == id.TrustDomain() {
			merged = unionCerts(own.X509Authorities(), roots)
		}
		newOwn = x509bundle.FromX509Authorities(id.TrustDomain(), merged)
		if err := verifyChain(chain, newOwn, now); err != nil {
			c.mu.Unlock()
			return invalid("the certificate does not verify against the bundle: %v", err)
		}
	}
	ev := EventSVID
	c.svid = &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
	c.authorityID, c.td = resp.GetAuthorityId(), id.TrustDomain()
	if newOwn != own {
		c.own = newOwn
		ev |= EventBundle
	}
	if c.bundleSeq == 0 && len(resp.GetFederatedBundles()) > 0 {
		// Until the stream delivers them, the response's federated bundles
		// are the best known.
		c.federated = c.parseFederated(resp.GetFederatedBundles(), id.TrustDomain())
		ev |= EventBundle
	}
	c.renewAt = renewalTime(leaf, now, randFloat())
	c.scheduleRotationLocked(now, true)
	renewAt, _ := c.nextRenewalLocked()
	c.mu.Unlock()

	c.log.Info(verb+" SVID", "spiffe_id", id, "authority", resp.GetAuthorityId(), "serial", leaf.SerialNumber.String(),
		"expires", leaf.NotAfter, "renew_at", renewAt, "server", addr)
	c.notify(ev)
	return nil
}

// scheduleRotationLocked sets rotateAt when the SVID's authority is not the
// active one. afterRenewal marks a renewal that just installed a new SVID:
// if it still came from another authority (the server that issued it had
// not switched yet) the next try backs off, so that servers that disagree
// for a moment do not cause a renewal loop.
func (c *Client) scheduleRotationLocked(now time.Time, afterRenewal bool) {
	if c.svid == nil || c.activeAuthority == "" || c.authorityID == c.activeAuthority {
		c.rotateAt, c.rotateTries = time.Time{}, 0
		return
	}
	if afterRenewal {
		c.rotateTries++
		delay := min(c.cfg.MinBackoff<<min(c.rotateTries, 16), c.cfg.MaxBackoff)
		c.rotateAt = now.Add(delay + jitter(c.cfg.RenewJitter))
		return
	}
	if c.rotateAt.IsZero() {
		c.rotateAt = now.Add(jitter(c.cfg.RenewJitter))
	}
}

// verifyChain checks that chain is an SVID that verifies against bundle at
// now.
func verifyChain(chain []*x509.Certificate, bundle *x509bundle.Bundle, now time.Time) error {
	_, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now))
	return err
}

// unionCerts returns the certificates of every set, each once, in order.
func unionCerts(sets ...[]*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, set := range sets {
		for _, c := range set {
			dup := false
			for _, o := range out {
				if bytes.Equal(o.Raw, c.Raw) {
					dup = true
					break
				}
			}
			if !dup {
				out = append(out, c)
			}
		}
	}
	return out
}

// parseTrustBundle reads one TrustBundle. An empty trust_domain means def.
func parseTrustBundle(tb *meshfedv1.TrustBundle, def spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	td := def
	if s := tb.GetTrustDomain(); s != "" {
		var err error
		if td, err = spiffeid.TrustDomainFromString(s); err != nil {
			return nil, fmt.Errorf("trust_domain %q: %w", s, err)
		}
	}
	if td.IsZero() {
		return nil, errors.New("trust_domain: missing")
	}
	var roots []*x509.Certificate
	for i, p := range tb.GetRootsPem() {
		certs, err := tlsutil.ParseCertificatesPEM([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("trust domain %s: roots_pem[%d]: %w", td, i, err)
		}
		roots = append(roots, certs...)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("trust domain %s: no roots", td)
	}
	return x509bundle.FromX509Authorities(td, unionCerts(roots)), nil
}

// parseFederated reads federated bundles keyed by trust domain, leaving out
// the own trust domain and (with a warning) bundles that do not parse.
func (c *Client) parseFederated(tbs []*meshfedv1.TrustBundle, own spiffeid.TrustDomain) map[spiffeid.TrustDomain]*x509bundle.Bundle {
	out := make(map[spiffeid.TrustDomain]*x509bundle.Bundle, len(tbs))
	for _, tb := range tbs {
		b, err := parseTrustBundle(tb, spiffeid.TrustDomain{})
		if err != nil {
			c.log.Warn("ignoring a federated bundle", "peer", tb.GetPeer(), "error", err)
			continue
		}
		if b.TrustDomain() == own {
			continue
		}
		out[b.TrustDomain()] = b
	}
	return out
}
