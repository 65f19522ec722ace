package controlplane

import (
	"context"
	"strings"
	"time"

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
	_, m := methodName(full)
	deny := func() (caller, error) {
		if c.token == nil && c.serverID == "" {
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
	}
	return deny()
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
		return s.fwd.forwardUnary(ctx, info.FullMethod, req.(proto.Message))
	}
	c, err := s.authenticate(ctx, info.FullMethod, pol)
	if err != nil {
		// A token created moments ago may not have reached this follower yet:
		// let the leader, which has it, decide.
		if status.Code(err) == codes.Unauthenticated && bearerToken(ctx) != "" && !s.isLeader() && !isForwarded(ctx) {
			return s.fwd.forwardUnary(ctx, info.FullMethod, req.(proto.Message))
		}
		return nil, err
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
		return err
	}
	return handler(srv, &wrappedStream{ServerStream: ss, ctx: withCaller(ss.Context(), c)})
}
