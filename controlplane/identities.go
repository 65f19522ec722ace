package controlplane

import (
	"context"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
)

const kindIdentity = meshfedv1.ResourceKind_RESOURCE_KIND_IDENTITY

// withIdentityID fills an identity's empty spiffe_id from its namespace and
// service account (its name when the account is empty).
func (s *Server) withIdentityID(i *meshfedv1.Identity) *meshfedv1.Identity {
	if i == nil || i.SpiffeId != "" || i.GetMeta().GetName() == "" {
		return i
	}
	sa := i.ServiceAccount
	if sa == "" {
		sa = i.GetMeta().GetName()
	}
	if id, err := mfid.Workload(s.td, namespaceFor(kindIdentity, i.GetMeta().GetNamespace()), sa); err == nil {
		i.SpiffeId = id.String()
	}
	return i
}

func (a *apiServer) CreateIdentity(ctx context.Context, req *meshfedv1.CreateIdentityRequest) (*meshfedv1.Identity, error) {
	in := a.s.withIdentityID(req.GetIdentity())
	if err := a.s.checkIdentity(in); err != nil {
		return nil, err
	}
	return writeResource(ctx, a.s, kindIdentity, "identity", in, 0, modeCreate)
}

// checkIdentity refuses a registration whose SPIFFE ID is not a workload
// identity of this trust domain, or that another registration already
// holds: issuance looks registrations up by ID, so each ID has at most one.
func (s *Server) checkIdentity(in *meshfedv1.Identity) error {
	if in == nil || in.GetSpiffeId() == "" {
		return nil // validation names the missing field
	}
	if err := s.checkWorkloadID(in.GetSpiffeId()); err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid identity.spiffe_id: %v", err)
	}
	if other := s.identityFor(in.GetSpiffeId()); other != nil &&
		(other.GetMeta().GetNamespace() != namespaceFor(kindIdentity, in.GetMeta().GetNamespace()) || other.GetMeta().GetName() != in.GetMeta().GetName()) {
		return status.Errorf(codes.AlreadyExists, "invalid identity.spiffe_id: %s is registered by identity %s/%s",
			in.GetSpiffeId(), other.GetMeta().GetNamespace(), other.GetMeta().GetName())
	}
	return nil
}

func (a *apiServer) GetIdentity(_ context.Context, req *meshfedv1.GetRequest) (*meshfedv1.Identity, error) {
	return getResource[*meshfedv1.Identity](a.s, kindIdentity, "identity", req)
}

func (a *apiServer) ListIdentities(_ context.Context, req *meshfedv1.ListRequest) (*meshfedv1.ListIdentitiesResponse, error) {
	items, next, idx, err := listResources[*meshfedv1.Identity](a.s, kindIdentity, req)
	if err != nil {
		return nil, err
	}
	return &meshfedv1.ListIdentitiesResponse{Identities: items, NextPageToken: next, Index: idx}, nil
}

func (a *apiServer) UpdateIdentity(ctx context.Context, req *meshfedv1.UpdateIdentityRequest) (*meshfedv1.Identity, error) {
	in := a.s.withIdentityID(req.GetIdentity())
	if err := a.s.checkIdentity(in); err != nil {
		return nil, err
	}
	return writeResource(ctx, a.s, kindIdentity, "identity", in, req.GetExpectedVersion(), updateMode(req.GetAllowMissing()))
}

func (a *apiServer) DeleteIdentity(ctx context.Context, req *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error) {
	return deleteResource(ctx, a.s, kindIdentity, req)
}

// identityIndex finds the registration of a SPIFFE ID. Issuance asks on
// every SVID, so the map is rebuilt only when the identities table changed.
type identityIndex struct {
	mu    sync.Mutex
	index uint64
	byID  map[string]*meshfedv1.Identity
}

// identityFor returns the registration of id, or nil when there is none
// (an unregistered identity gets the CA's defaults).
func (s *Server) identityFor(id string) *meshfedv1.Identity {
	st := s.store()
	idx := st.KindIndex(nil, kindIdentity)
	ix := &s.identities
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.byID == nil || ix.index != idx {
		_, items, _, err := st.List(nil, listAll(kindIdentity))
		if err != nil {
			return nil
		}
		ix.byID = make(map[string]*meshfedv1.Identity, len(items))
		for _, it := range items {
			i := it.(*meshfedv1.Identity)
			ix.byID[i.GetSpiffeId()] = i
		}
		ix.index = idx
	}
	return ix.byID[id]
}
