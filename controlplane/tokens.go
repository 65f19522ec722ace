package controlplane

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

const kindToken = meshfedv1.ResourceKind_RESOURCE_KIND_TOKEN

// defaultJoinTokenTTL applies to join tokens created without a TTL: a
// forgotten join token should not stay valid forever.
const defaultJoinTokenTTL = 30 * time.Minute

// maxTokenTTL bounds any token's lifetime request.
const maxTokenTTL = 10 * 365 * 24 * time.Hour

// redact returns a copy of a token without its secret hash.
func redact(t *meshfedv1.Token) *meshfedv1.Token {
	if t == nil {
		return nil
	}
	c := proto.Clone(t).(*meshfedv1.Token)
	c.SecretHash = nil
	c.Secret = ""
	return c
}

func (a *apiServer) CreateToken(ctx context.Context, req *meshfedv1.CreateTokenRequest) (*meshfedv1.Token, error) {
	ttl := req.GetTtl().AsDuration()
	if req.GetTtl() != nil && (!req.GetTtl().IsValid() || ttl < 0 || ttl > maxTokenTTL) {
		return nil, status.Errorf(codes.InvalidArgument, "invalid ttl: must be between 0 and %s", maxTokenTTL)
	}
	switch req.GetKind() {
	case meshfedv1.TokenKind_TOKEN_KIND_SERVER_JOIN, meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN:
		if ttl == 0 {
			ttl = defaultJoinTokenTTL
		}
	}
	if req.GetKind() == meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN && req.GetSpiffeId() != "" {
		if err := a.s.checkWorkloadID(req.GetSpiffeId()); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid spiffe_id: %v", err)
		}
	}
	secret, hash, err := newSecret()
	if err != nil {
		return nil, toStatus(err)
	}
	accessor, err := newAccessorID()
	if err != nil {
		return nil, toStatus(err)
	}
	tok := &meshfedv1.Token{
		Meta:        &meshfedv1.Meta{Name: accessor, Labels: req.GetLabels()},
		Kind:        req.GetKind(),
		Description: req.GetDescription(),
		SpiffeId:    req.GetSpiffeId(),
		MaxUses:     req.GetMaxUses(),
		SecretHash:  hash,
	}
	if ttl > 0 {
		tok.ExpireTime = timestamppb.New(time.Now().Add(ttl))
	}
	out, err := writeResource(ctx, a.s, kindToken, "token", tok, 0, modeCreate)
	if err != nil {
		return nil, err
	}
	out = redact(out)
	out.Secret = secret
	return out, nil
}

// checkWorkloadID reports whether id can be a workload's identity here: a
// SPIFFE ID of this trust domain outside the servers' reserved path.
func (s *Server) checkWorkloadID(id string) error {
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return err
	}
	if !sid.MemberOf(s.td) {
		return fmt.Errorf("%q is not in this cluster's trust domain %q", id, s.td)
	}
	if strings.HasPrefix(sid.Path(), "/meshfed/") {
		return fmt.Errorf("%q is in the path reserved for meshfed servers", id)
	}
	return nil
}

func (a *apiServer) GetToken(_ context.Context, req *meshfedv1.GetRequest) (*meshfedv1.Token, error) {
	t, err := getResource[*meshfedv1.Token](a.s, kindToken, "token", req)
	return redact(t), err
}

func (a *apiServer) ListTokens(_ context.Context, req *meshfedv1.ListRequest) (*meshfedv1.ListTokensResponse, error) {
	items, next, idx, err := listResources[*meshfedv1.Token](a.s, kindToken, req)
	if err != nil {
		return nil, err
	}
	for i := range items {
		items[i] = redact(items[i])
	}
	return &meshfedv1.ListTokensResponse{Tokens: items, NextPageToken: next, Index: idx}, nil
}

// UpdateToken changes a token's description, labels and expiry (an unset
// expire_time keeps the current one: an update never makes a token live
// forever); its kind, identity and secret are fixed at creation.
func (a *apiServer) UpdateToken(ctx context.Context, req *meshfedv1.UpdateTokenRequest) (*meshfedv1.Token, error) {
	in := req.GetToken()
	if in.GetMeta().GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "invalid token.meta.name: required")
	}
	cur, err := getResource[*meshfedv1.Token](a.s, kindToken, "token", &meshfedv1.GetRequest{Name: in.GetMeta().GetName()})
	if err != nil {
		return nil, err
	}
	if in.GetKind() != meshfedv1.TokenKind_TOKEN_KIND_UNSPECIFIED && in.GetKind() != cur.GetKind() {
		return nil, status.Error(codes.InvalidArgument, "invalid token.kind: cannot change")
	}
	if in.GetSpiffeId() != "" && in.GetSpiffeId() != cur.GetSpiffeId() {
		return nil, status.Error(codes.InvalidArgument, "invalid token.spiffe_id: cannot change")
	}
	next := proto.Clone(cur).(*meshfedv1.Token)
	next.Description = in.GetDescription()
	next.Meta.Labels = in.GetMeta().GetLabels()
	if in.GetExpireTime() != nil {
		next.ExpireTime = in.GetExpireTime()
	}
	out, err := writeResource(ctx, a.s, kindToken, "token", next, req.GetExpectedVersion(), modeUpdate)
	return redact(out), err
}

// DeleteToken revokes a token. The last admin token that has not expired
// cannot be revoked: nobody could administer the cluster afterwards.
func (a *apiServer) DeleteToken(ctx context.Context, req *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error) {
	_, cur, err := a.s.store().Get(nil, kindToken, "", req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	if t, ok := cur.(*meshfedv1.Token); ok && t.Kind == meshfedv1.TokenKind_TOKEN_KIND_ADMIN && a.s.liveAdminTokens() <= 1 {
		return nil, status.Error(codes.FailedPrecondition, "this is the last admin token: create another admin token before revoking it")
	}
	return deleteResource(ctx, a.s, kindToken, req)
}

func (s *Server) liveAdminTokens() int {
	_, items, _, err := s.store().List(nil, listAll(kindToken))
	if err != nil {
		return 0
	}
	n := 0
	for _, it := range items {
		t := it.(*meshfedv1.Token)
		if t.Kind == meshfedv1.TokenKind_TOKEN_KIND_ADMIN && (t.ExpireTime == nil || time.Now().Before(t.ExpireTime.AsTime())) {
			n++
		}
	}
	return n
}

func (a *apiServer) WatchTokens(req *meshfedv1.WatchRequest, stream meshfedv1.TokenService_WatchTokensServer) error {
	return watchResources(stream.Context(), a.s, kindToken, req, func(t meshfedv1.WatchEventType, r *meshfedv1.Token, idx uint64) error {
		return stream.Send(&meshfedv1.WatchTokensResponse{Type: t, Token: redact(r), Index: idx})
	})
}

func (a *apiServer) WhoAmI(ctx context.Context, _ *meshfedv1.WhoAmIRequest) (*meshfedv1.WhoAmIResponse, error) {
	return &meshfedv1.WhoAmIResponse{Token: redact(callerFrom(ctx).token)}, nil
}
