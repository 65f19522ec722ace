package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/ca"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// Attest exchanges a workload-join token and a CSR for an SVID of the one
// identity the token is bound to. It runs on the leader, which spends a use
// of a limited token through Raft; the CSR is checked and the SVID signed
// before the use is spent, so a bad request does not burn the token.
func (a *apiServer) Attest(ctx context.Context, req *meshfedv1.AttestRequest) (*meshfedv1.SVIDResponse, error) {
	s := a.s
	if req.GetToken() == "" {
		return nil, status.Error(codes.InvalidArgument, "invalid token: required")
	}
	if len(req.GetCsr()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "invalid csr: required")
	}
	_, tok, err := s.store().TokenBySecretHash(nil, hashSecret(req.GetToken()))
	if err != nil {
		return nil, status.Error(codes.Internal, "looking up token")
	}
	if tok == nil {
		return nil, status.Error(codes.Unauthenticated, "invalid token: unknown or revoked")
	}
	if tok.GetKind() != meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN {
		return nil, status.Errorf(codes.PermissionDenied, "a %s token cannot attest a workload: create a workload-join token", tokenKindName(tok.GetKind()))
	}
	if exp := tok.GetExpireTime(); exp != nil && time.Now().After(exp.AsTime()) {
		return nil, status.Error(codes.Unauthenticated, "invalid token: expired")
	}
	if tok.GetMaxUses() > 0 && tok.GetUses() >= tok.GetMaxUses() {
		return nil, status.Error(codes.PermissionDenied, "invalid token: no uses left")
	}
	id, err := spiffeid.FromString(tok.GetSpiffeId())
	if err != nil || !id.MemberOf(s.td) {
		return nil, status.Errorf(codes.FailedPrecondition, "token is bound to %q, which is not an identity of trust domain %q", tok.GetSpiffeId(), s.td)
	}
	resp, err := s.issueSVID(id, req.GetCsr())
	if err != nil {
		return nil, err
	}
	if tok.GetMaxUses() > 0 {
		if err := s.useToken(ctx, tok); err != nil {
			return nil, toStatus(err)
		}
	}
	s.log.Info("workload attested", "spiffe_id", id.String(), "token", tok.GetMeta().GetName(), "authority", resp.AuthorityId)
	return resp, nil
}

// Renew issues a new SVID to a workload that presents its current one as
// the TLS client certificate, for the same SPIFFE ID only. Any server
// renews; nothing is written to Raft.
func (a *apiServer) Renew(ctx context.Context, req *meshfedv1.RenewRequest) (*meshfedv1.SVIDResponse, error) {
	s := a.s
	id, err := s.callerSVID(ctx)
	if err != nil {
		return nil, err
	}
	if len(req.GetCsr()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "invalid csr: required")
	}
	return s.issueSVID(id, req.GetCsr())
}

// callerSVID returns the workload identity of the caller's TLS client
// certificate: a workload SVID of this trust domain that chains to a root of
// the current bundle (not a retired one).
func (s *Server) callerSVID(ctx context.Context) (spiffeid.ID, error) {
	certs := peerCertificates(ctx)
	if len(certs) == 0 {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "present the current SVID as the TLS client certificate")
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return spiffeid.ID{}, status.Errorf(codes.Unauthenticated, "client certificate is not an SVID: %v", err)
	}
	if !id.MemberOf(s.td) {
		return spiffeid.ID{}, status.Errorf(codes.PermissionDenied, "%s is not an identity of trust domain %q", id, s.td)
	}
	if _, isServer := mfid.ServerNodeID(id); isServer {
		return spiffeid.ID{}, status.Error(codes.PermissionDenied, "server identities do not renew through the workload API")
	}
	if !s.renewChecks.chainsToBundle(s, certs) {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "client certificate does not chain to the current trust bundle")
	}
	return id, nil
}

// peerCertificates returns the TLS client certificate chain of a call.
func peerCertificates(ctx context.Context) []*x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	return ti.State.PeerCertificates
}

// issueSVID signs an SVID for id with the lifetime and DNS names of its
// registration, if any, and the CA settings otherwise.
func (s *Server) issueSVID(id spiffeid.ID, csr []byte) (*meshfedv1.SVIDResponse, error) {
	if !s.id.signerCurrent() {
		if _, err := s.id.loadSigner(); err != nil {
			return nil, status.Errorf(codes.Unavailable, "loading the certificate authority: %v; retry", err)
		}
	}
	ttl := s.caSettings().GetSvidTtl().AsDuration()
	var dns []string
	if reg := s.identityFor(id.String()); reg != nil {
		if reg.GetSvidTtl() != nil {
			ttl = reg.GetSvidTtl().AsDuration()
		}
		dns = reg.GetDnsNames()
	}
	issued, err := s.ca.SignWorkload(ca.WorkloadParams{CSR: csr, ID: id, AllowedDNSNames: dns, TTL: ttl})
	if err != nil {
		return nil, signStatus(err)
	}
	s.metrics.svidsIssued.Inc()
	return &meshfedv1.SVIDResponse{
		SpiffeId:            id.String(),
		CertificateChainPem: string(tlsutil.EncodeCertificatesPEM(issued.Chain)),
		BundlePem:           s.ca.BundlePEM(),
		AuthorityId:         issued.AuthorityID,
		FederatedBundles:    s.federatedBundles(nil),
	}, nil
}

// signStatus converts a signing error to a status naming what is wrong.
func signStatus(err error) error {
	switch {
	case errors.Is(err, ca.ErrInvalidCSR), errors.Is(err, ca.ErrInvalidParams):
		return status.Errorf(codes.InvalidArgument, "invalid csr: %s", strings.TrimPrefix(err.Error(), ca.ErrInvalidCSR.Error()+": "))
	case errors.Is(err, ca.ErrInvalidID):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ca.ErrNoActiveAuthority), errors.Is(err, ca.ErrAuthorityExpired):
		return status.Errorf(codes.Unavailable, "%v; retry", err)
	}
	return status.Error(codes.Internal, err.Error())
}

// svidCheckCache remembers client certificates already verified against the
// bundle. gRPC hands every call on a connection the same parsed leaf, so
// keying by pointer makes a renewal on a kept connection skip the chain
// verification; the cache is dropped when the bundle changes.
type svidCheckCache struct {
	mu     sync.Mutex
	bundle []*x509.Certificate
	ok     map[*x509.Certificate]bool
}

// maxSVIDChecks bounds the cache; connections come and go.
const maxSVIDChecks = 8192

func (c *svidCheckCache) chainsToBundle(s *Server, certs []*x509.Certificate) bool {
	roots := s.ca.Bundle()
	leaf := certs[0]
	c.mu.Lock()
	if !slices.EqualFunc(c.bundle, roots, (*x509.Certificate).Equal) || len(c.ok) >= maxSVIDChecks {
		c.bundle, c.ok = roots, make(map[*x509.Certificate]bool)
	}
	ok, known := c.ok[leaf]
	c.mu.Unlock()
	if known {
		return ok
	}
	_, _, err := x509svid.Verify(certs, x509bundle.FromX509Authorities(s.td, roots))
	ok = err == nil
	c.mu.Lock()
	if slices.EqualFunc(c.bundle, roots, (*x509.Certificate).Equal) {
		c.ok[leaf] = ok
	}
	c.mu.Unlock()
	return ok
}
