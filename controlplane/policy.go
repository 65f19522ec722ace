package controlplane

import (
	"context"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

const (
	kindAuthz   = meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORIZATION_POLICY
	kindTraffic = meshfedv1.ResourceKind_RESOURCE_KIND_TRAFFIC_POLICY
)

func (a *apiServer) CreateAuthorizationPolicy(ctx context.Context, req *meshfedv1.CreateAuthorizationPolicyRequest) (*meshfedv1.AuthorizationPolicy, error) {
	return writeResource(ctx, a.s, kindAuthz, "policy", req.GetPolicy(), 0, modeCreate)
}

func (a *apiServer) GetAuthorizationPolicy(_ context.Context, req *meshfedv1.GetRequest) (*meshfedv1.AuthorizationPolicy, error) {
	return getResource[*meshfedv1.AuthorizationPolicy](a.s, kindAuthz, "authorization policy", req)
}

func (a *apiServer) ListAuthorizationPolicies(_ context.Context, req *meshfedv1.ListRequest) (*meshfedv1.ListAuthorizationPoliciesResponse, error) {
	items, next, idx, err := listResources[*meshfedv1.AuthorizationPolicy](a.s, kindAuthz, req)
	if err != nil {
		return nil, err
	}
	return &meshfedv1.ListAuthorizationPoliciesResponse{Policies: items, NextPageToken: next, Index: idx}, nil
}

func (a *apiServer) UpdateAuthorizationPolicy(ctx context.Context, req *meshfedv1.UpdateAuthorizationPolicyRequest) (*meshfedv1.AuthorizationPolicy, error) {
	return writeResource(ctx, a.s, kindAuthz, "policy", req.GetPolicy(), req.GetExpectedVersion(), updateMode(req.GetAllowMissing()))
}

func (a *apiServer) DeleteAuthorizationPolicy(ctx context.Context, req *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error) {
	return deleteResource(ctx, a.s, kindAuthz, req)
}

func (a *apiServer) WatchAuthorizationPolicies(req *meshfedv1.WatchRequest, stream meshfedv1.PolicyService_WatchAuthorizationPoliciesServer) error {
	return watchResources(stream.Context(), a.s, kindAuthz, req, func(t meshfedv1.WatchEventType, r *meshfedv1.AuthorizationPolicy, idx uint64) error {
		return stream.Send(&meshfedv1.WatchAuthorizationPoliciesResponse{Type: t, Policy: r, Index: idx})
	})
}

func (a *apiServer) CreateTrafficPolicy(ctx context.Context, req *meshfedv1.CreateTrafficPolicyRequest) (*meshfedv1.TrafficPolicy, error) {
	return writeResource(ctx, a.s, kindTraffic, "policy", req.GetPolicy(), 0, modeCreate)
}

func (a *apiServer) GetTrafficPolicy(_ context.Context, req *meshfedv1.GetRequest) (*meshfedv1.TrafficPolicy, error) {
	return getResource[*meshfedv1.TrafficPolicy](a.s, kindTraffic, "traffic policy", req)
}

func (a *apiServer) ListTrafficPolicies(_ context.Context, req *meshfedv1.ListRequest) (*meshfedv1.ListTrafficPoliciesResponse, error) {
	items, next, idx, err := listResources[*meshfedv1.TrafficPolicy](a.s, kindTraffic, req)
	if err != nil {
		return nil, err
	}
	return &meshfedv1.ListTrafficPoliciesResponse{Policies: items, NextPageToken: next, Index: idx}, nil
}

func (a *apiServer) UpdateTrafficPolicy(ctx context.Context, req *meshfedv1.UpdateTrafficPolicyRequest) (*meshfedv1.TrafficPolicy, error) {
	return writeResource(ctx, a.s, kindTraffic, "policy", req.GetPolicy(), req.GetExpectedVersion(), updateMode(req.GetAllowMissing()))
}

func (a *apiServer) DeleteTrafficPolicy(ctx context.Context, req *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error) {
	return deleteResource(ctx, a.s, kindTraffic, req)
}

func (a *apiServer) WatchTrafficPolicies(req *meshfedv1.WatchRequest, stream meshfedv1.PolicyService_WatchTrafficPoliciesServer) error {
	return watchResources(stream.Context(), a.s, kindTraffic, req, func(t meshfedv1.WatchEventType, r *meshfedv1.TrafficPolicy, idx uint64) error {
		return stream.Send(&meshfedv1.WatchTrafficPoliciesResponse{Type: t, Policy: r, Index: idx})
	})
}
