package controlplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/fsm"
	"github.com/meshfed/meshfed/controlplane/state"
	"github.com/meshfed/meshfed/controlplane/validate"
	"github.com/meshfed/meshfed/federation"
)

const (
	kindPeering  = meshfedv1.ResourceKind_RESOURCE_KIND_PEERING
	kindExport   = meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE_EXPORT
	kindImported = meshfedv1.ResourceKind_RESOURCE_KIND_IMPORTED_SERVICE
)

// peeringTokenTTL is how long a peering token's secret is accepted.
const peeringTokenTTL = 24 * time.Hour

// redactPeering returns a copy of p without its secrets.
func redactPeering(p *meshfedv1.Peering) *meshfedv1.Peering {
	if p == nil {
		return nil
	}
	c := proto.Clone(p).(*meshfedv1.Peering)
	c.SecretHash, c.Secret = nil, ""
	return c
}

func (s *Server) peering(name string) (*meshfedv1.Peering, error) {
	_, r, err := s.store().Get(nil, kindPeering, "", name)
	if err != nil || r == nil {
		return nil, err
	}
	return r.(*meshfedv1.Peering), nil
}

func (s *Server) peerings() ([]*meshfedv1.Peering, error) {
	_, items, _, err := s.store().List(nil, listAll(kindPeering))
	if err != nil {
		return nil, err
	}
	out := make([]*meshfedv1.Peering, 0, len(items))
	for _, it := range items {
		out = append(out, it.(*meshfedv1.Peering))
	}
	return out, nil
}

// putPeering writes a peering, guarded by the version it was read at (0:
// it must not exist yet).
func (s *Server) putPeering(ctx context.Context, p *meshfedv1.Peering, expected uint64) (*meshfedv1.Peering, error) {
	next := proto.Clone(p).(*meshfedv1.Peering)
	stripServerMeta(next.Meta)
	payload, err := proto.Marshal(next)
	if err != nil {
		return nil, err
	}
	res, err := s.applyWrite(ctx, fsm.UpsertResourceType, &meshfedv1.ResourceWrite{
		Kind: kindPeering, Name: next.GetMeta().GetName(), Payload: payload,
		ExpectedVersion: expected, MustNotExist: expected == 0,
	})
	if err != nil {
		return nil, err
	}
	return res.Resource.(*meshfedv1.Peering), nil
}

// updatePeering applies edit to the stored peering, retrying on concurrent
// changes; a missing peering is not an error (it was deleted).
func (s *Server) updatePeering(ctx context.Context, name string, edit func(*meshfedv1.Peering)) error {
	for range 5 {
		cur, err := s.peering(name)
		if err != nil || cur == nil {
			return err
		}
		next := proto.Clone(cur).(*meshfedv1.Peering)
		edit(next)
		if proto.Equal(next, cur) {
			return nil
		}
		if _, err := s.putPeering(ctx, next, cur.GetMeta().GetVersion()); err == nil || !isVersionMismatch(err) {
			return err
		}
	}
	return status.Error(codes.Aborted, "peering is changing concurrently; retry")
}

func (a *apiServer) GeneratePeeringToken(ctx context.Context, req *meshfedv1.GeneratePeeringTokenRequest) (*meshfedv1.GeneratePeeringTokenResponse, error) {
	s := a.s
	if err := validate.DNSLabel("peer", req.GetPeer()); err != nil {
		return nil, toStatus(err)
	}
	cur, err := s.peering(req.GetPeer())
	if err != nil {
		return nil, toStatus(err)
	}
	if deleting(cur) {
		return nil, status.Errorf(codes.FailedPrecondition, "peering %q is being deleted: its peer is told when the link is back; delete it again to remove it now", req.GetPeer())
	}
	if cur != nil && (cur.GetDialer() || cur.GetPeerTrustDomain() != "") {
		return nil, status.Errorf(codes.FailedPrecondition, "peering %q is already established: delete it first", req.GetPeer())
	}
	secret, hash, err := newSecret()
	if err != nil {
		return nil, toStatus(err)
	}
	expire := time.Now().Add(peeringTokenTTL)
	p := &meshfedv1.Peering{
		Meta: &meshfedv1.Meta{Name: req.GetPeer()}, State: meshfedv1.PeeringState_PEERING_STATE_PENDING,
		SecretHash: hash, TokenExpireTime: timestamppb.New(expire),
	}
	var expected uint64
	if cur != nil {
		// A new token replaces the pending one's secret.
		expected = cur.GetMeta().GetVersion()
	}
	if _, err := s.putPeering(ctx, p, expected); err != nil {
		return nil, toStatus(err)
	}
	v, err := s.trustBundle(nil)
	if err != nil {
		return nil, toStatus(err)
	}
	tok := federation.Token{
		Cluster: s.cfg.Cluster, TrustDomain: s.td.Name(), APIAddresses: s.apiAddresses(),
		CABundle: strings.Join(v.roots, ""), Secret: secret, ExpireTime: expire,
	}
	enc, err := tok.Encode()
	if err != nil {
		return nil, toStatus(err)
	}
	s.log.Info("peering token generated", "peer", req.GetPeer(), "expires", expire)
	return &meshfedv1.GeneratePeeringTokenResponse{Token: enc}, nil
}

// apiAddresses are the API addresses of every registered server.
func (s *Server) apiAddresses() []string {
	_, items, _, err := s.store().List(nil, listAll(meshfedv1.ResourceKind_RESOURCE_KIND_SERVER))
	if err != nil {
		return []string{s.cfg.APIAdvertiseAddr}
	}
	var out []string
	for _, it := range items {
		if a := it.(*meshfedv1.ServerRecord).GetApiAddr(); a != "" {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		out = []string{s.cfg.APIAdvertiseAddr}
	}
	return out
}

func (a *apiServer) EstablishPeering(ctx context.Context, req *meshfedv1.EstablishPeeringRequest) (*meshfedv1.Peering, error) {
	s := a.s
	if err := validate.DNSLabel("peer", req.GetPeer()); err != nil {
		return nil, toStatus(err)
	}
	if req.GetToken() == "" {
		return nil, status.Error(codes.InvalidArgument, "invalid token: required")
	}
	tok, err := federation.DecodeToken(req.GetToken(), time.Now())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "invalid token: %v", err)
	}
	if tok.TrustDomain == s.td.Name() {
		return nil, status.Errorf(codes.InvalidArgument, "invalid token: it is for trust domain %q, this cluster's own", tok.TrustDomain)
	}
	all, err := s.peerings()
	if err != nil {
		return nil, toStatus(err)
	}
	for _, p := range all {
		if p.GetMeta().GetName() == req.GetPeer() {
			return nil, status.Errorf(codes.AlreadyExists, "peering %q already exists", req.GetPeer())
		}
		if p.GetPeerTrustDomain() == tok.TrustDomain {
			return nil, status.Errorf(codes.AlreadyExists, "already peered with trust domain %q as %q", tok.TrustDomain, p.GetMeta().GetName())
		}
	}
	roots := splitPEM(tok.CABundle)
	p := &meshfedv1.Peering{
		Meta: &meshfedv1.Meta{Name: req.GetPeer()}, State: meshfedv1.PeeringState_PEERING_STATE_ESTABLISHING,
		PeerCluster: tok.Cluster, PeerTrustDomain: tok.TrustDomain, PeerApiAddresses: tok.APIAddresses,
		Dialer: true, Secret: tok.Secret,
		PeerBundle: &meshfedv1.TrustBundle{TrustDomain: tok.TrustDomain, RootsPem: roots},
	}
	out, err := s.putPeering(ctx, p, 0)
	if err != nil {
		return nil, toStatus(err)
	}
	s.log.Info("peering established", "peer", req.GetPeer(), "cluster", tok.Cluster, "trust_domain", tok.TrustDomain)
	return s.describePeering(out), nil
}

// splitPEM splits a PEM bundle into one string per certificate.
func splitPEM(bundle string) []string {
	var out []string
	for _, part := range strings.SplitAfter(bundle, "-----END CERTIFICATE-----") {
		if i := strings.Index(part, "-----BEGIN CERTIFICATE-----"); i >= 0 {
			out = append(out, part[i:]+"\n")
		}
	}
	return out
}

// describePeering is a peering as the API shows it: without secrets, with
// its import and export counts.
func (s *Server) describePeering(p *meshfedv1.Peering) *meshfedv1.Peering {
	out := redactPeering(p)
	name := p.GetMeta().GetName()
	if _, items, _, err := s.store().List(nil, state.ListParams{Kind: kindImported, Peer: name}); err == nil {
		out.ImportedServices = uint32(len(items))
	}
	if _, items, _, err := s.store().List(nil, listAll(kindExport)); err == nil {
		for _, it := range items {
			if slices.Contains(it.(*meshfedv1.ServiceExport).GetPeers(), name) {
				out.ExportedServices++
			}
		}
	}
	return out
}

func (a *apiServer) GetPeering(_ context.Context, req *meshfedv1.GetRequest) (*meshfedv1.Peering, error) {
	p, err := getResource[*meshfedv1.Peering](a.s, kindPeering, "peering", req)
	if err != nil {
		return nil, err
	}
	return a.s.describePeering(p), nil
}

func (a *apiServer) ListPeerings(_ context.Context, req *meshfedv1.ListRequest) (*meshfedv1.ListPeeringsResponse, error) {
	items, _, _, err := listResources[*meshfedv1.Peering](a.s, kindPeering, &meshfedv1.ListRequest{Read: req.GetRead()})
	if err != nil {
		return nil, err
	}
	out := &meshfedv1.ListPeeringsResponse{}
	for _, p := range items {
		out.Peerings = append(out.Peerings, a.s.describePeering(p))
	}
	return out, nil
}

// DeletePeering ends a peering on both sides: a connected peer is told to
// delete its side, then this side's imports, the peering and with it the
// peer's bundle go.
func (a *apiServer) DeletePeering(ctx context.Context, req *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error) {
	s := a.s
	p, err := s.peering(req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	if p == nil {
		return nil, status.Errorf(codes.NotFound, "peering %q not found", req.GetName())
	}
	name := req.GetName()
	if v := req.GetExpectedVersion(); v != 0 && v != p.GetMeta().GetVersion() {
		// Checked before the peer is told anything.
		return nil, toStatus(fmt.Errorf("%w: peering %q: stored version %d, expected %d", state.ErrVersionMismatch, name, p.GetMeta().GetVersion(), v))
	}
	reason := "deleted by an operator of " + s.cfg.Cluster
	if deleting(p) || p.GetPeerBundle() == nil {
		// A second delete gives up on telling the peer; a peering that
		// never reached its peer has nobody to tell.
		s.links.close(name, reason)
		idx, err := s.deletePeeringState(ctx, name, req.GetExpectedVersion())
		if err != nil {
			return nil, toStatus(err)
		}
		s.log.Info("peering deleted", "peer", name)
		return &meshfedv1.DeleteResponse{Index: idx}, nil
	}
	// The peering becomes a tombstone at once: its imports go, its roots
	// leave the workloads' bundles. It is removed once the peer has heard
	// of the deletion: now, by the running session, or when the link is
	// back.
	idx, err := s.markDeleting(ctx, p, req.GetExpectedVersion())
	if err != nil {
		return nil, toStatus(err)
	}
	if !s.links.close(name, reason) {
		s.log.Info("peering deleted here; the peer is told once the link is back", "peer", name)
	}
	return &meshfedv1.DeleteResponse{Index: idx}, nil
}

// deletingNote is the last_error of a peering deleted while its link was
// down.
const deletingNote = "deleted here; the peer is told when the link is back (delete again to remove it now)"

// markDeleting turns a peering into a tombstone that only tells the peer
// of the deletion, and removes its imports, in one write. The link's
// retries record their errors on the peering meanwhile: a concurrent change
// is read again, unless the caller expected a version.
func (s *Server) markDeleting(ctx context.Context, p *meshfedv1.Peering, expected uint64) (uint64, error) {
	for range 5 {
		idx, err := s.markDeletingOnce(ctx, p)
		if err == nil || expected != 0 || !isVersionMismatch(err) {
			return idx, err
		}
		if p, err = s.peering(p.GetMeta().GetName()); err != nil || p == nil {
			return 0, errPeeringGone
		}
	}
	return 0, status.Error(codes.Aborted, "peering is changing concurrently; retry")
}

func (s *Server) markDeletingOnce(ctx context.Context, p *meshfedv1.Peering) (uint64, error) {
	name := p.GetMeta().GetName()
	next := proto.Clone(p).(*meshfedv1.Peering)
	stripServerMeta(next.Meta)
	next.State, next.LastError = meshfedv1.PeeringState_PEERING_STATE_DELETING, deletingNote
	payload, err := proto.Marshal(next)
	if err != nil {
		return 0, err
	}
	return s.applyWithImportsGone(ctx, name, &meshfedv1.ResourceWrite{Kind: kindPeering, Name: name, Payload: payload, ExpectedVersion: p.GetMeta().GetVersion()})
}

// applyWithImportsGone applies w together with the deletion of every
// import of peering name, in one write.
func (s *Server) applyWithImportsGone(ctx context.Context, name string, w *meshfedv1.ResourceWrite) (uint64, error) {
	b := &meshfedv1.ResourceWriteBatch{Writes: []*meshfedv1.ResourceWrite{w}}
	_, items, _, err := s.store().List(nil, state.ListParams{Kind: kindImported, Peer: name})
	if err != nil {
		return 0, err
	}
	for _, it := range items {
		m := it.GetMeta()
		b.Writes = append(b.Writes, &meshfedv1.ResourceWrite{Kind: kindImported, Namespace: m.GetNamespace(), Name: m.GetName()})
	}
	res, err := s.applyBatch(ctx, b)
	if err != nil {
		return 0, err
	}
	return res.Index, nil
}

// deleting says p is a tombstone waiting to tell its peer.
func deleting(p *meshfedv1.Peering) bool {
	return p.GetState() == meshfedv1.PeeringState_PEERING_STATE_DELETING
}

// deletePeeringState removes a peering and its imports in one write.
func (s *Server) deletePeeringState(ctx context.Context, name string, expected uint64) (uint64, error) {
	return s.applyWithImportsGone(ctx, name, &meshfedv1.ResourceWrite{Kind: kindPeering, Name: name, ExpectedVersion: expected})
}

func (a *apiServer) SetServiceExport(ctx context.Context, req *meshfedv1.SetServiceExportRequest) (*meshfedv1.ServiceExport, error) {
	for i, p := range req.GetExport().GetPeers() {
		peer, err := a.s.peering(p)
		if err != nil {
			return nil, toStatus(err)
		}
		if peer == nil {
			return nil, status.Errorf(codes.FailedPrecondition, "invalid export.peers[%d]: there is no peering named %q", i, p)
		}
		if deleting(peer) {
			return nil, status.Errorf(codes.FailedPrecondition, "invalid export.peers[%d]: peering %q is being deleted", i, p)
		}
	}
	return writeResource(ctx, a.s, kindExport, "export", req.GetExport(), req.GetExpectedVersion(), modeUpsert)
}

func (a *apiServer) GetServiceExport(_ context.Context, req *meshfedv1.GetRequest) (*meshfedv1.ServiceExport, error) {
	return getResource[*meshfedv1.ServiceExport](a.s, kindExport, "export", req)
}

func (a *apiServer) ListServiceExports(_ context.Context, req *meshfedv1.ListRequest) (*meshfedv1.ListServiceExportsResponse, error) {
	items, next, idx, err := listResources[*meshfedv1.ServiceExport](a.s, kindExport, req)
	if err != nil {
		return nil, err
	}
	return &meshfedv1.ListServiceExportsResponse{Exports: items, NextPageToken: next, Index: idx}, nil
}

func (a *apiServer) DeleteServiceExport(ctx context.Context, req *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error) {
	return deleteResource(ctx, a.s, kindExport, req)
}

func (a *apiServer) ListImportedServices(_ context.Context, req *meshfedv1.ListRequest) (*meshfedv1.ListImportedServicesResponse, error) {
	items, next, idx, err := listResources[*meshfedv1.ImportedService](a.s, kindImported, req)
	if err != nil {
		return nil, err
	}
	return &meshfedv1.ListImportedServicesResponse{Services: items, NextPageToken: next, Index: idx}, nil
}

// exportsTo computes what this cluster exports to peer: every exported
// local service with its healthy endpoints. Imported services are never
// exported onward. With a cache, a service whose record and workloads did
// not change since the last call is not rebuilt: the same pointer comes
// back, so a caller can tell it apart from a change cheaply.
func (s *Server) exportsTo(ws memdb.WatchSet, peer string, cache *exportCache) (map[string]*meshfedv1.ImportedService, error) {
	st := s.store()
	if ws != nil {
		ws.Add(st.AbandonCh())
		st.KindIndex(ws, kindService)
		st.KindIndex(ws, kindWorkload)
	}
	_, items, _, err := st.List(ws, listAll(kindExport))
	if err != nil {
		return nil, err
	}
	out := map[string]*meshfedv1.ImportedService{}
	for _, it := range items {
		e := it.(*meshfedv1.ServiceExport)
		if !slices.Contains(e.GetPeers(), peer) {
			continue
		}
		ns, name := e.GetMeta().GetNamespace(), e.GetMeta().GetName()
		_, r, err := st.Get(nil, kindService, ns, name)
		if err != nil {
			return nil, err
		}
		if r == nil {
			continue // exported before it is registered
		}
		key := ns + "/" + name
		// Read before the workloads: a write in between makes the next
		// round rebuild.
		sig := exportSig{service: r.GetMeta().GetVersion(), workloads: st.WorkloadsGen(ns, name)}
		if cache != nil {
			if c, ok := cache.entries[key]; ok && c.sig == sig {
				out[key] = c.imp
				continue
			}
		}
		_, wls, _, err := st.List(nil, state.ListParams{Kind: kindWorkload, Namespace: ns, Service: name})
		if err != nil {
			return nil, err
		}
		svc := proto.Clone(r).(*meshfedv1.Service)
		svc.Meta = &meshfedv1.Meta{Namespace: ns, Name: name}
		imp := &meshfedv1.ImportedService{
			Meta: &meshfedv1.Meta{Namespace: ns, Name: name}, Service: svc,
			PeerCluster: s.cfg.Cluster, PeerTrustDomain: s.td.Name(),
		}
		for _, w := range wls {
			wl := w.(*meshfedv1.Workload)
			if h := wl.GetHealth(); h == meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY || h == meshfedv1.HealthStatus_HEALTH_STATUS_UNKNOWN {
				continue
			}
			imp.Endpoints = append(imp.Endpoints, &meshfedv1.Endpoint{
				Address: wl.GetAddress(), Port: wl.GetPort(), Locality: wl.GetLocality(),
				Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY, SpiffeId: wl.GetSpiffeId(), Version: wl.GetVersion(),
			})
		}
		sort.Slice(imp.Endpoints, func(i, j int) bool {
			a, b := imp.Endpoints[i], imp.Endpoints[j]
			return a.GetAddress() < b.GetAddress() || a.GetAddress() == b.GetAddress() && a.GetPort() < b.GetPort()
		})
		out[key] = imp
		if cache != nil {
			cache.entries[key] = exportEntry{sig: sig, imp: imp}
		}
	}
	if cache != nil {
		for key := range cache.entries {
			if _, ok := out[key]; !ok {
				delete(cache.entries, key)
			}
		}
	}
	return out, nil
}

// exportCache keeps what exportsTo built for one peer session.
type exportCache struct {
	entries map[string]exportEntry
}

func newExportCache() *exportCache { return &exportCache{entries: map[string]exportEntry{}} }

type exportEntry struct {
	sig exportSig
	imp *meshfedv1.ImportedService
}

// exportSig changes whenever the service record or any of its workloads
// does.
type exportSig struct{ service, workloads uint64 }

// importName is the stored name of a service imported from a peering: the
// peering's name and the service's, so that two peers may export services
// of the same name.
func importName(peer, name string) string { return peer + "." + name }

// errPeeringGone ends a link whose peering was deleted.
var errPeeringGone = errors.New("the peering was deleted")

// watchChan turns a watch set into a channel closed on the next change or
// when ctx ends.
func watchChan(ctx context.Context, ws memdb.WatchSet) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		_ = ws.WatchCtx(ctx)
		close(ch)
	}()
	return ch
}

// equalImport compares a stored import with a candidate, ignoring the
// server-owned meta fields.
func equalImport(stored, next *meshfedv1.ImportedService) bool {
	a := proto.Clone(stored).(*meshfedv1.ImportedService)
	stripServerMeta(a.Meta)
	a.Meta.Peer = stored.GetMeta().GetPeer()
	return proto.Equal(a, next)
}

// trustBundleProto is this cluster's bundle as a peer receives it.
func (s *Server) trustBundleProto(ws memdb.WatchSet) (*meshfedv1.TrustBundle, error) {
	v, err := s.trustBundle(ws)
	if err != nil {
		return nil, err
	}
	return v.proto(s.td.Name()), nil
}

// federatedBundles returns every peer's bundle, tagged with its peering.
func (s *Server) federatedBundles(ws memdb.WatchSet) []*meshfedv1.TrustBundle {
	return s.peerBundles(ws, false)
}

// peerBundles returns the bundle of every peering that has one; with
// deleting, also those of peerings being deleted (whose servers must still
// be recognised to be told).
func (s *Server) peerBundles(ws memdb.WatchSet, withDeleting bool) []*meshfedv1.TrustBundle {
	_, items, _, err := s.store().List(ws, listAll(kindPeering))
	if err != nil {
		return nil
	}
	var out []*meshfedv1.TrustBundle
	for _, it := range items {
		p := it.(*meshfedv1.Peering)
		if deleting(p) && !withDeleting {
			continue
		}
		if b := p.GetPeerBundle(); b != nil && len(b.GetRootsPem()) > 0 && p.GetPeerTrustDomain() != "" {
			c := proto.Clone(b).(*meshfedv1.TrustBundle)
			c.TrustDomain = p.GetPeerTrustDomain()
			c.Peer = p.GetMeta().GetName()
			out = append(out, c)
		}
	}
	return out
}

// peerTD parses a peering's trust domain.
func peerTD(p *meshfedv1.Peering) (spiffeid.TrustDomain, error) {
	return spiffeid.TrustDomainFromString(p.GetPeerTrustDomain())
}
