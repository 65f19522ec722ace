package controlplane

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
)

const (
	kindService  = meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE
	kindWorkload = meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD
)

func (a *apiServer) CreateService(ctx context.Context, req *meshfedv1.CreateServiceRequest) (*meshfedv1.Service, error) {
	return writeResource(ctx, a.s, kindService, "service", req.GetService(), 0, modeCreate)
}

func (a *apiServer) GetService(_ context.Context, req *meshfedv1.GetRequest) (*meshfedv1.Service, error) {
	return getResource[*meshfedv1.Service](a.s, kindService, "service", req)
}

func (a *apiServer) ListServices(_ context.Context, req *meshfedv1.ListRequest) (*meshfedv1.ListServicesResponse, error) {
	items, next, idx, err := listResources[*meshfedv1.Service](a.s, kindService, req)
	if err != nil {
		return nil, err
	}
	return &meshfedv1.ListServicesResponse{Services: items, NextPageToken: next, Index: idx}, nil
}

func (a *apiServer) UpdateService(ctx context.Context, req *meshfedv1.UpdateServiceRequest) (*meshfedv1.Service, error) {
	return writeResource(ctx, a.s, kindService, "service", req.GetService(), req.GetExpectedVersion(), updateMode(req.GetAllowMissing()))
}

func (a *apiServer) DeleteService(ctx context.Context, req *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error) {
	return deleteResource(ctx, a.s, kindService, req)
}

func (a *apiServer) WatchServices(req *meshfedv1.WatchRequest, stream meshfedv1.CatalogService_WatchServicesServer) error {
	return watchResources(stream.Context(), a.s, kindService, req, func(t meshfedv1.WatchEventType, r *meshfedv1.Service, idx uint64) error {
		return stream.Send(&meshfedv1.WatchServicesResponse{Type: t, Service: r, Index: idx})
	})
}

func (a *apiServer) CreateWorkload(ctx context.Context, req *meshfedv1.CreateWorkloadRequest) (*meshfedv1.Workload, error) {
	if err := operatorWorkload(req.GetWorkload()); err != nil {
		return nil, err
	}
	return writeResource(ctx, a.s, kindWorkload, "workload", a.s.withWorkloadIdentity(req.GetWorkload()), 0, modeCreate)
}

// operatorWorkload refuses what only a proxy may say of a workload: that a
// proxy registered it, which subjects it to heartbeats (ProxyService).
func operatorWorkload(w *meshfedv1.Workload) error {
	if w.GetProxy() {
		return status.Error(codes.InvalidArgument, "invalid workload.proxy: set only by meshfed-proxy, which registers its endpoint through ProxyService")
	}
	return nil
}

// withWorkloadIdentity fills an empty spiffe_id with the identity of the
// workload's service: spiffe://<td>/ns/<namespace>/sa/<service account>,
// where the service account is the service's, or the service's name when
// the service is not registered (yet). It sets the field on w, which the
// handler owns (a decoded request).
func (s *Server) withWorkloadIdentity(w *meshfedv1.Workload) *meshfedv1.Workload {
	if w == nil || w.SpiffeId != "" || w.Service == "" {
		return w
	}
	ns := namespaceFor(kindWorkload, w.GetMeta().GetNamespace())
	sa := w.Service
	if _, r, err := s.store().Get(nil, kindService, ns, w.Service); err == nil && r != nil {
		if acct := r.(*meshfedv1.Service).ServiceAccount; acct != "" {
			sa = acct
		}
	}
	id, err := mfid.Workload(s.td, ns, sa)
	if err != nil {
		return w // validation reports the bad namespace or service
	}
	w.SpiffeId = id.String()
	return w
}

func (a *apiServer) GetWorkload(_ context.Context, req *meshfedv1.GetRequest) (*meshfedv1.Workload, error) {
	return getResource[*meshfedv1.Workload](a.s, kindWorkload, "workload", req)
}

func (a *apiServer) ListWorkloads(_ context.Context, req *meshfedv1.ListRequest) (*meshfedv1.ListWorkloadsResponse, error) {
	items, next, idx, err := listResources[*meshfedv1.Workload](a.s, kindWorkload, req)
	if err != nil {
		return nil, err
	}
	return &meshfedv1.ListWorkloadsResponse{Workloads: items, NextPageToken: next, Index: idx}, nil
}

func (a *apiServer) UpdateWorkload(ctx context.Context, req *meshfedv1.UpdateWorkloadRequest) (*meshfedv1.Workload, error) {
	if err := operatorWorkload(req.GetWorkload()); err != nil {
		return nil, err
	}
	return writeResource(ctx, a.s, kindWorkload, "workload", a.s.withWorkloadIdentity(req.GetWorkload()), req.GetExpectedVersion(), updateMode(req.GetAllowMissing()))
}

func (a *apiServer) DeleteWorkload(ctx context.Context, req *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error) {
	return deleteResource(ctx, a.s, kindWorkload, req)
}

func (a *apiServer) WatchWorkloads(req *meshfedv1.WatchRequest, stream meshfedv1.CatalogService_WatchWorkloadsServer) error {
	return watchResources(stream.Context(), a.s, kindWorkload, req, func(t meshfedv1.WatchEventType, r *meshfedv1.Workload, idx uint64) error {
		return stream.Send(&meshfedv1.WatchWorkloadsResponse{Type: t, Workload: r, Index: idx})
	})
}

func updateMode(allowMissing bool) writeMode {
	if allowMissing {
		return modeUpsert
	}
	return modeUpdate
}
