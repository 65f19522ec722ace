package controlplane

import (
	"context"
	"slices"
	"sort"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/state"
	"github.com/meshfed/meshfed/controlplane/validate"
)

const kindTrafficPolicy = meshfedv1.ResourceKind_RESOURCE_KIND_TRAFFIC_POLICY

func (a *apiServer) Resolve(_ context.Context, req *meshfedv1.ResolveRequest) (*meshfedv1.ResolveResponse, error) {
	resp, err := a.s.resolve(nil, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

// WatchResolve sends the resolution at once and again whenever it changes:
// the proxy's source of endpoints.
func (a *apiServer) WatchResolve(req *meshfedv1.ResolveRequest, stream meshfedv1.CatalogService_WatchResolveServer) error {
	s := a.s
	var last *meshfedv1.ResolveResponse
	for {
		ws := memdb.NewWatchSet()
		ws.Add(s.store().AbandonCh())
		resp, err := s.resolve(ws, req)
		if err != nil && status.Code(toStatus(err)) != codes.NotFound {
			return toStatus(err)
		}
		if resp == nil {
			// Not (yet) known: an empty answer, then wait for it to appear.
			resp = &meshfedv1.ResolveResponse{}
		}
		if last == nil || !sameResolution(last, resp) {
			if err := stream.Send(resp); err != nil {
				return err
			}
			last = resp
		}
		if err := ws.WatchCtx(stream.Context()); err != nil {
			return status.FromContextError(stream.Context().Err()).Err()
		}
	}
}

func sameResolution(a, b *meshfedv1.ResolveResponse) bool {
	ai, bi := a.Index, b.Index
	a.Index, b.Index = 0, 0
	eq := proto.Equal(a, b)
	a.Index, b.Index = ai, bi
	return eq
}

// resolve returns a service's endpoints in this cluster and in every peer
// that exports it here, grouped by cluster in failover order: this cluster
// first, then the clusters the service's traffic policy names, in its
// order, then the others by name. Within a cluster, endpoints in the
// caller's zone come first, then its region, then the rest.
func (s *Server) resolve(ws memdb.WatchSet, req *meshfedv1.ResolveRequest) (*meshfedv1.ResolveResponse, error) {
	if err := validate.DNSLabel("name", req.GetName()); err != nil {
		return nil, err
	}
	ns := namespaceFor(kindService, req.GetNamespace())
	if err := validate.DNSLabel("namespace", ns); err != nil {
		return nil, err
	}
	st := s.store()
	idx, r, err := st.Get(ws, kindService, ns, req.GetName())
	if err != nil {
		return nil, err
	}
	resp := &meshfedv1.ResolveResponse{Index: idx}
	keep := func(h meshfedv1.HealthStatus) bool {
		return req.GetIncludeUnhealthy() || (h != meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY && h != meshfedv1.HealthStatus_HEALTH_STATUS_UNKNOWN)
	}
	if r != nil {
		resp.Service = r.(*meshfedv1.Service)
		_, wls, _, err := st.List(ws, state.ListParams{Kind: kindWorkload, Namespace: ns, Service: req.GetName()})
		if err != nil {
			return nil, err
		}
		local := &meshfedv1.ClusterEndpoints{Cluster: s.cfg.Cluster, TrustDomain: s.td.Name()}
		for _, it := range wls {
			w := it.(*meshfedv1.Workload)
			if !keep(w.GetHealth()) {
				continue
			}
			local.Endpoints = append(local.Endpoints, &meshfedv1.Endpoint{Address: w.GetAddress(), Port: w.GetPort(),
				Locality: w.GetLocality(), Health: w.GetHealth(), SpiffeId: w.GetSpiffeId(), Version: w.GetVersion()})
		}
		resp.Clusters = append(resp.Clusters, local)
	}

	_, imps, _, err := st.List(ws, state.ListParams{Kind: kindImported, Namespace: ns})
	if err != nil {
		return nil, err
	}
	var imported []*meshfedv1.ClusterEndpoints
	for _, it := range imps {
		imp := it.(*meshfedv1.ImportedService)
		if imp.GetService().GetMeta().GetName() != req.GetName() {
			continue
		}
		if resp.Service == nil {
			resp.Service = imp.GetService()
		}
		ce := &meshfedv1.ClusterEndpoints{Cluster: imp.GetPeerCluster(), TrustDomain: imp.GetPeerTrustDomain(),
			Peer: imp.GetMeta().GetPeer(), Stale: imp.GetStale()}
		for _, e := range imp.GetEndpoints() {
			if keep(e.GetHealth()) {
				ce.Endpoints = append(ce.Endpoints, e)
			}
		}
		imported = append(imported, ce)
	}
	if resp.Service == nil {
		return nil, state.ErrNotFound
	}

	failover := s.failoverOrder(ws, ns, req.GetName())
	rank := func(cluster string) int {
		if i := slices.Index(failover, cluster); i >= 0 {
			return i
		}
		return len(failover)
	}
	sort.SliceStable(imported, func(i, j int) bool {
		ri, rj := rank(imported[i].GetCluster()), rank(imported[j].GetCluster())
		if ri != rj {
			return ri < rj
		}
		return imported[i].GetCluster() < imported[j].GetCluster()
	})
	resp.Clusters = append(resp.Clusters, imported...)
	for _, c := range resp.Clusters {
		sortByLocality(c.Endpoints, req.GetLocality())
	}
	return resp, nil
}

// failoverOrder is the failover list of the traffic policy for a service.
func (s *Server) failoverOrder(ws memdb.WatchSet, ns, name string) []string {
	_, items, _, err := s.store().List(ws, state.ListParams{Kind: kindTrafficPolicy, Namespace: ns})
	if err != nil {
		return nil
	}
	for _, it := range items {
		if p := it.(*meshfedv1.TrafficPolicy); p.GetDestination() == name {
			return p.GetFailover()
		}
	}
	return nil
}

// sortByLocality puts endpoints of the caller's zone first, then of its
// region, keeping address order within each group.
func sortByLocality(eps []*meshfedv1.Endpoint, loc *meshfedv1.Locality) {
	score := func(e *meshfedv1.Endpoint) int {
		if loc.GetRegion() == "" || e.GetLocality().GetRegion() != loc.GetRegion() {
			return 2
		}
		if loc.GetZone() != "" && e.GetLocality().GetZone() == loc.GetZone() {
			return 0
		}
		return 1
	}
	sort.SliceStable(eps, func(i, j int) bool {
		si, sj := score(eps[i]), score(eps[j])
		if si != sj {
			return si < sj
		}
		if eps[i].GetAddress() != eps[j].GetAddress() {
			return eps[i].GetAddress() < eps[j].GetAddress()
		}
		return eps[i].GetPort() < eps[j].GetPort()
	})
}
