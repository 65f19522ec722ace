package controlplane

import (
	"context"

	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/fsm"
)

const (
	kindMesh         = meshfedv1.ResourceKind_RESOURCE_KIND_MESH_SETTINGS
	meshSettingsName = "global"
)

// defaultMeshSettings are in force until an operator changes them: deny
// what no policy allows (zero trust), no access logs, no tracing.
func defaultMeshSettings() *meshfedv1.MeshSettings {
	return &meshfedv1.MeshSettings{
		Meta:                       &meshfedv1.Meta{Name: meshSettingsName},
		DefaultAuthorizationAction: meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_DENY,
	}
}

func (s *Server) meshSettings() *meshfedv1.MeshSettings {
	_, r, err := s.store().Get(nil, kindMesh, "", meshSettingsName)
	if err != nil || r == nil {
		return defaultMeshSettings()
	}
	return r.(*meshfedv1.MeshSettings)
}

func (a *apiServer) GetMeshSettings(context.Context, *meshfedv1.GetMeshSettingsRequest) (*meshfedv1.MeshSettings, error) {
	return a.s.meshSettings(), nil
}

func (a *apiServer) UpdateMeshSettings(ctx context.Context, req *meshfedv1.UpdateMeshSettingsRequest) (*meshfedv1.MeshSettings, error) {
	in := req.GetSettings()
	if in != nil {
		in = proto.Clone(in).(*meshfedv1.MeshSettings)
		if in.Meta == nil {
			in.Meta = &meshfedv1.Meta{}
		}
		if in.Meta.Name == "" {
			in.Meta.Name = meshSettingsName
		}
	}
	return writeResource(ctx, a.s, kindMesh, "settings", in, req.GetExpectedVersion(), modeUpsert)
}

func (a *apiServer) ResetMeshSettings(ctx context.Context, req *meshfedv1.ResetMeshSettingsRequest) (*meshfedv1.MeshSettings, error) {
	_, cur, err := a.s.store().Get(nil, kindMesh, "", meshSettingsName)
	if err != nil {
		return nil, toStatus(err)
	}
	if cur == nil && req.GetExpectedVersion() == 0 {
		return defaultMeshSettings(), nil
	}
	if _, err := a.s.applyWrite(ctx, fsm.DeleteResourceType, &meshfedv1.ResourceWrite{
		Kind: kindMesh, Name: meshSettingsName, ExpectedVersion: req.GetExpectedVersion(),
	}); err != nil {
		return nil, toStatus(err)
	}
	return defaultMeshSettings(), nil
}

func (a *apiServer) WatchMeshSettings(_ *meshfedv1.WatchMeshSettingsRequest, stream meshfedv1.MeshSettingsService_WatchMeshSettingsServer) error {
	return watchResources(stream.Context(), a.s, kindMesh, &meshfedv1.WatchRequest{}, func(t meshfedv1.WatchEventType, r *meshfedv1.MeshSettings, idx uint64) error {
		if t == meshfedv1.WatchEventType_WATCH_EVENT_TYPE_DELETE {
			// Deleting the settings restores the defaults: say so as an upsert.
			t, r = meshfedv1.WatchEventType_WATCH_EVENT_TYPE_UPSERT, defaultMeshSettings()
		}
		return stream.Send(&meshfedv1.WatchMeshSettingsResponse{Type: t, Settings: r, Index: idx})
	})
}
