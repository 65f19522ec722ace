package controlplane

import (
	"context"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
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
	return writeResource(ctx, a.s, kindWorkload, "workload", req.GetWorkload(), 0, modeCreate)
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
	return writeResource(ctx, a.s, kindWorkload, "workload", req.GetWorkload(), req.GetExpectedVersion(), updateMode(req.GetAllowMissing()))
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
