package controlplane

import (
	"context"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
)

// permission is what a method requires of its caller.
type permission int

const (
	// permNone: health checks, so load balancers can probe without a token.
	permNone permission = iota
	// permRead: admin or read tokens.
	permRead
	// permWrite: admin tokens.
	permWrite
	// permJoin: server-join or admin tokens, or a server's own certificate.
	permJoin
	// permServer: another server of this cluster (mTLS server identity).
	permServer
	// permSelf: the handler authenticates the caller itself (a token in the
	// request body, or the TLS client certificate).
	permSelf
	// permBundle: anyone who may see the trust bundle: an SVID of this trust
	// domain (workload or server), or an admin or read token.
	permBundle
	// permWorkload: the reads a proxy needs: admin or read tokens, or a
	// workload SVID of this trust domain.
	permWorkload
	// permProxy: a workload SVID of this trust domain, and no bearer token
	// (ProxyService: a proxy acts only as its own identity).
	permProxy
)

// forwardMode says when a method must run on the leader.
type forwardMode int

const (
	fwdNever forwardMode = iota
	fwdAlways
	fwdIfConsistent
)

type methodPolicy struct {
	perm    permission
	forward forwardMode
}

// workloadReads are the reads meshfed-proxy makes with its SVID alone: the
// endpoints of the services it calls, the policies it enforces and the
// mesh settings. Every other read still needs a token.
var workloadReads = map[string]bool{
	"meshfed.v1.CatalogService/GetService":                true,
	"meshfed.v1.CatalogService/Resolve":                   true,
	"meshfed.v1.CatalogService/WatchResolve":              true,
	"meshfed.v1.CatalogService/WatchResolveMany":          true,
	"meshfed.v1.PolicyService/ListAuthorizationPolicies":  true,
	"meshfed.v1.PolicyService/WatchAuthorizationPolicies": true,
	"meshfed.v1.PolicyService/ListTrafficPolicies":        true,
	"meshfed.v1.PolicyService/WatchTrafficPolicies":       true,
	"meshfed.v1.MeshSettingsService/GetMeshSettings":      true,
	"meshfed.v1.MeshSettingsService/WatchMeshSettings":    true,
}

// policyFor classifies a method by its name. Reads are Get*, List*, Watch*,
// Resolve* and WhoAmI; everything else writes and runs on the leader. An
// unlisted service therefore defaults to admin-only, never to open.
func policyFor(fullMethod string) methodPolicy {
	svc, m := methodName(fullMethod)
	switch {
	case svc == "grpc.health.v1.Health":
		return methodPolicy{permNone, fwdNever}
	case strings.HasPrefix(svc, "grpc.reflection."):
		return methodPolicy{permRead, fwdNever}
	case svc == "meshfed.v1.ClusterService" && m == "Join":
		return methodPolicy{permJoin, fwdAlways}
	case svc == "meshfed.v1.ClusterService" && m == "ServerStats":
		return methodPolicy{permServer, fwdNever}
	case svc == "meshfed.v1.ClusterService" && (m == "SaveSnapshot" || m == "RestoreSnapshot"):
		// Snapshots hold CA keys and token hashes: admin only. The handlers
		// forward the streams themselves.
		return methodPolicy{permWrite, fwdNever}
	case svc == "meshfed.v1.WorkloadIdentityService" && m == "Attest":
		// Attest may spend a use of its token: a Raft write.
		return methodPolicy{permSelf, fwdAlways}
	case svc == "meshfed.v1.WorkloadIdentityService" && m == "Renew":
		return methodPolicy{permSelf, fwdNever}
	case svc == "meshfed.v1.WorkloadIdentityService" && m == "WatchBundle":
		return methodPolicy{permBundle, fwdNever}
	case svc == "meshfed.v1.PeerStreamService":
		// A peer cluster: the handler checks its peering secret or its
		// server certificate against the peer's bundle.
		return methodPolicy{permSelf, fwdNever}
	case svc == "meshfed.v1.ProxyService":
		// Registration and deregistration write; the leader keeps the
		// heartbeats' times, so heartbeats run there too.
		return methodPolicy{permProxy, fwdAlways}
	case workloadReads[svc+"/"+m]:
		if strings.HasPrefix(m, "Watch") {
			return methodPolicy{permWorkload, fwdNever}
		}
		return methodPolicy{permWorkload, fwdIfConsistent}
	case svc == "meshfed.v1.CatalogService" && m == "GetTopology":
		// The leader collects the heartbeats the graph is made from.
		return methodPolicy{permRead, fwdAlways}
	case svc == "meshfed.v1.CAService" && m == "GetCAStatus":
		// The leader owns the peer links and knows what each peer
		// acknowledged.
		return methodPolicy{permRead, fwdAlways}
	case strings.HasPrefix(m, "Watch"):
		return methodPolicy{permRead, fwdNever}
	case strings.HasPrefix(m, "Get") || strings.HasPrefix(m, "List") || strings.HasPrefix(m, "Resolve") || m == "WhoAmI":
		return methodPolicy{permRead, fwdIfConsistent}
	}
	return methodPolicy{permWrite, fwdAlways}
}

// caller is who made a call.
type caller struct {
	token    *meshfedv1.Token
	serverID string
	// workload is the workload identity of a call authenticated by its SVID
	// (permWorkload and permProxy only), directly or as forwarded by
	// another server of this cluster.
	workload spiffeid.ID
}

type callerKey struct{}

func withCaller(ctx context.Context, c caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

func callerFrom(ctx context.Context) caller {
	c, _ := ctx.Value(callerKey{}).(caller)
	return c
}

// forwardedKey marks a call a follower forwarded, so it is not forwarded again.
const forwardedKey = "x-meshfed-forwarded"

// forwardedWorkloadKey carries, on a forwarded call, the workload identity
// the forwarding server verified from the caller's SVID: the leader sees the
// follower's certificate, not the workload's. The leader believes it only
// from a server of this cluster (see workloadCaller).
const forwardedWorkloadKey = "x-meshfed-workload-id"

// isForwarded and bearerToken read single keys: ValueFromIncomingContext
// does not copy the whole metadata map on every call.
func isForwarded(ctx context.Context) bool {
	return len(metadata.ValueFromIncomingContext(ctx, forwardedKey)) > 0
}

func bearerToken(ctx context.Context) string {
	for _, v := range metadata.ValueFromIncomingContext(ctx, "authorization") {
		// The scheme is case-insensitive (RFC 6750).
		if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			return strings.TrimSpace(v[7:])
		}
	}
	return ""
}

// peerServerID returns the node ID of a server of this cluster calling with
// its certificate (already verified by TLS against the bundle).
func (s *Server) peerServerID(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return ""
	}
	id, err := x509svid.IDFromCert(ti.State.PeerCertificates[0])
	if err != nil || !id.MemberOf(s.td) {
		return ""
	}
	node, _ := mfid.ServerNodeID(id)
	return node
}

// authenticate identifies the caller and checks the method's permission.
func (s *Server) authenticate(ctx context.Context, full string, pol methodPolicy) (caller, error) {
	c := caller{serverID: s.peerServerID(ctx)}
	_, m := methodName(full)
	if pol.perm == permProxy {
		return s.authenticateProxy(ctx, c, m)
	}
	if secret := bearerToken(ctx); secret != "" {
		_, tok, err := s.store().TokenBySecretHash(nil, hashSecret(secret))
		if err != nil {
			return c, status.Error(codes.Internal, "looking up token")
		}
		if tok == nil {
			return c, status.Error(codes.Unauthenticated, "invalid token")
		}
		if exp := tok.GetExpireTime(); exp != nil && time.Now().After(exp.AsTime()) {
			return c, status.Error(codes.Unauthenticated, "token expired")
		}
		c.token = tok
	}
	kind := c.token.GetKind()
	deny := func() (caller, error) {
		if c.token == nil && c.serverID == "" {
			if id, ok := presentedID(ctx); ok {
				return c, status.Errorf(codes.PermissionDenied,
					"%s cannot call %s with its SVID: a workload SVID may call only the reads meshfed-proxy needs and ProxyService; use a bearer token", id, m)
			}
			return c, status.Error(codes.Unauthenticated, "missing bearer token: set --token or MESHFED_TOKEN")
		}
		return c, status.Errorf(codes.PermissionDenied, "a %s token cannot call %s", tokenKindName(kind), m)
	}
	switch pol.perm {
	case permNone:
		return c, nil
	case permRead:
		if kind == meshfedv1.TokenKind_TOKEN_KIND_ADMIN || kind == meshfedv1.TokenKind_TOKEN_KIND_READ {
			return c, nil
		}
	case permWrite:
		if kind == meshfedv1.TokenKind_TOKEN_KIND_ADMIN {
			return c, nil
		}
	case permJoin:
		if kind == meshfedv1.TokenKind_TOKEN_KIND_ADMIN || kind == meshfedv1.TokenKind_TOKEN_KIND_SERVER_JOIN {
			return c, nil
		}
		if c.token == nil && c.serverID != "" {
			return c, nil
		}
	case permServer:
		if c.serverID != "" {
			return c, nil
		}
	case permSelf:
		return c, nil
	case permBundle:
		if kind == meshfedv1.TokenKind_TOKEN_KIND_ADMIN || kind == meshfedv1.TokenKind_TOKEN_KIND_READ {
			return c, nil
		}
		if c.token == nil {
			if certs := peerCertificates(ctx); len(certs) > 0 {
				if id, err := x509svid.IDFromCert(certs[0]); err == nil && id.MemberOf(s.td) {
					return c, nil
				}
			}
		}
	case permWorkload:
		if kind == meshfedv1.TokenKind_TOKEN_KIND_ADMIN || kind == meshfedv1.TokenKind_TOKEN_KIND_READ {
			return c, nil
		}
		if c.token == nil && (c.serverID != "" || len(peerCertificates(ctx)) > 0) {
			id, err := s.workloadCaller(ctx, c.serverID, m)
			if err != nil {
				return c, err
			}
			c.workload, c.serverID = id, ""
			return c, nil
		}
	}
	return deny()
}

// authenticateProxy admits a ProxyService call: a workload SVID of this
// trust domain, never a bearer token, so that a proxy acts only as the
// identity its certificate proves.
func (s *Server) authenticateProxy(ctx context.Context, c caller, m string) (caller, error) {
	if bearerToken(ctx) != "" {
		return c, status.Errorf(codes.PermissionDenied,
			"ProxyService/%s does not take a bearer token: meshfed-proxy calls it with its workload SVID as the TLS client certificate", m)
	}
	if c.serverID == "" && len(peerCertificates(ctx)) == 0 {
		return c, status.Errorf(codes.Unauthenticated,
			"ProxyService/%s needs the workload's SVID as the TLS client certificate", m)
	}
	id, err := s.workloadCaller(ctx, c.serverID, m)
	if err != nil {
		return c, err
	}
	c.workload, c.serverID = id, ""
	return c, nil
}

// workloadCaller returns the workload identity a call authenticated by an
// SVID is made as. A call from a server of this cluster is one it forwarded:
// that server verified the workload's SVID and names it in the metadata.
// Anyone else must present a workload SVID of this trust domain that chains
// to the current bundle; a peer cluster's workload is refused, though its
// certificate passes the TLS handshake.
func (s *Server) workloadCaller(ctx context.Context, serverID, m string) (spiffeid.ID, error) {
	if serverID != "" {
		v := metadata.ValueFromIncomingContext(ctx, forwardedWorkloadKey)
		if len(v) != 1 || !isForwarded(ctx) {
			return spiffeid.ID{}, status.Errorf(codes.PermissionDenied, "server %s cannot call %s as a workload", serverID, m)
		}
		id, err := spiffeid.FromString(v[0])
		if err != nil || !id.MemberOf(s.td) {
			return spiffeid.ID{}, status.Errorf(codes.Internal, "server %s forwarded an invalid workload identity %q", serverID, v[0])
		}
		if _, _, ok := workloadAccount(id); !ok {
			return spiffeid.ID{}, status.Errorf(codes.Internal, "server %s forwarded %q, which is not a workload identity", serverID, v[0])
		}
		return id, nil
	}
	id, err := s.callerSVID(ctx)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if _, _, ok := workloadAccount(id); !ok {
		return spiffeid.ID{}, status.Errorf(codes.PermissionDenied,
			"%s is not a workload identity (spiffe://%s/ns/<namespace>/sa/<service account>)", id, s.td.Name())
	}
	return id, nil
}

// presentedID returns the SPIFFE ID of the caller's TLS client
// certificate, verified by the handshake against the bundles this server
// trusts, if it presented one.
func presentedID(ctx context.Context) (spiffeid.ID, bool) {
	certs := peerCertificates(ctx)
	if len(certs) == 0 {
		return spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(certs[0])
	return id, err == nil
}

func tokenKindName(k meshfedv1.TokenKind) string {
	switch k {
	case meshfedv1.TokenKind_TOKEN_KIND_ADMIN:
		return "admin"
	case meshfedv1.TokenKind_TOKEN_KIND_READ:
		return "read"
	case meshfedv1.TokenKind_TOKEN_KIND_SERVER_JOIN:
		return "server-join"
	case meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN:
		return "workload-join"
	}
	return "unknown"
}

// authenticateBeforeForwarding reports whether a follower must authenticate
// a call itself before forwarding it to the leader. A bearer token travels
// with the forwarded call and the leader checks it (a token created moments
// ago may be known only there), but a client certificate does not: the
// follower verifies a workload's SVID and forwards the identity it proved
// (see outgoing). A call that needs a token and has none is refused here:
// the leader would refuse it too.
func authenticateBeforeForwarding(ctx context.Context, perm permission) bool {
	switch perm {
	case permProxy:
		return true
	case permWorkload, permRead, permWrite:
		return bearerToken(ctx) == ""
	}
	return false
}

// wantsConsistent reports whether a read asked for a consistent read.
func wantsConsistent(req any) bool {
	r, ok := req.(interface{ GetRead() *meshfedv1.ReadOptions })
	return ok && r.GetRead().GetConsistent()
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	pol := policyFor(info.FullMethod)
	if pol.perm == permNone {
		return handler(ctx, req)
	}
	needLeader := pol.forward == fwdAlways || (pol.forward == fwdIfConsistent && wantsConsistent(req))
	if needLeader && !s.isLeader() {
		if isForwarded(ctx) {
			return nil, status.Error(codes.Unavailable, "not the leader; retry")
		}
		if authenticateBeforeForwarding(ctx, pol.perm) {
			c, err := s.authenticate(ctx, info.FullMethod, pol)
			if err != nil {
				return nil, err
			}
			ctx = withCaller(ctx, c)
		}
		return s.fwd.forwardUnary(ctx, info.FullMethod, req.(proto.Message))
	}
	c, err := s.authenticate(ctx, info.FullMethod, pol)
	if err != nil {
		// A token created moments ago may not have reached this follower yet:
		// let the leader, which has it, decide.
		if status.Code(err) == codes.Unauthenticated && bearerToken(ctx) != "" && !s.isLeader() && !isForwarded(ctx) {
			return s.fwd.forwardUnary(ctx, info.FullMethod, req.(proto.Message))
		}
		return nil, authFailure(err, bearerToken(ctx) != "", s.catchingUp())
	}
	ctx = withCaller(ctx, c)
	if needLeader && pol.forward == fwdIfConsistent {
		if err := s.consistentRead(ctx); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	pol := policyFor(info.FullMethod)
	c, err := s.authenticate(ss.Context(), info.FullMethod, pol)
	if err != nil {
		return authFailure(err, bearerToken(ss.Context()) != "", s.catchingUp())
	}
	return handler(srv, &wrappedStream{ServerStream: ss, ctx: withCaller(ss.Context(), c)})
}

// catchingUp reports whether this server has not yet applied its own Raft
// log as it stood when the server started. A restarted server replays its
// log only once a leader tells it what is committed; until then its state
// misses what it held before, tokens included.
func (s *Server) catchingUp() bool { return s.raft.AppliedIndex() < s.startIndex }

// authFailure is the error for a call whose authentication failed with err:
// a token unknown to a server that is still catching up after a restart
// may well be valid, so the caller is told to retry (UNAVAILABLE, which
// clients retry, on this server or another) rather than that the token is
// invalid.
func authFailure(err error, hasToken, catchingUp bool) error {
	if hasToken && catchingUp && status.Code(err) == codes.Unauthenticated {
		return status.Error(codes.Unavailable, "this server is still applying the cluster's state after a restart; retry")
	}
	return err
}
