package controlplane

import (
	"fmt"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/validate"
)

const (
	// maxResolveMany bounds the services of one WatchResolveMany.
	maxResolveMany = 10000
	// resolveManyChunk bounds the resolutions of one message, and
	// resolveManyBytes its size, well under the message size limit.
	resolveManyChunk = 256
	resolveManyBytes = 1 << 20
)

// WatchResolveMany is WatchResolve for many services on one stream. Each
// service keeps the watch set of its last resolution; after a change only
// the services whose set fired are resolved again, and only those whose
// resolution changed are sent.
func (a *apiServer) WatchResolveMany(req *meshfedv1.WatchResolveManyRequest, stream meshfedv1.CatalogService_WatchResolveManyServer) error {
	s := a.s
	refs := req.GetServices()
	if len(refs) == 0 || len(refs) > maxResolveMany {
		return status.Errorf(codes.InvalidArgument, "invalid services: want 1 to %d services, got %d", maxResolveMany, len(refs))
	}
	type entry struct {
		req  *meshfedv1.ResolveRequest
		last *meshfedv1.ResolveResponse
		ws   memdb.WatchSet
	}
	seen := map[[2]string]bool{}
	var entries []*entry
	for i, r := range refs {
		ns := namespaceFor(kindService, r.GetNamespace())
		if err := validate.DNSLabel(fmt.Sprintf("services[%d].namespace", i), ns); err != nil {
			return toStatus(err)
		}
		if err := validate.DNSLabel(fmt.Sprintf("services[%d].name", i), r.GetName()); err != nil {
			return toStatus(err)
		}
		key := [2]string{ns, r.GetName()}
		if seen[key] {
			continue
		}
		seen[key] = true
		entries = append(entries, &entry{req: &meshfedv1.ResolveRequest{
			Namespace: ns, Name: r.GetName(), Locality: req.GetLocality(), IncludeUnhealthy: req.GetIncludeUnhealthy(),
		}})
	}
	dirty := entries
	for {
		abandon := s.store().AbandonCh()
		var out []*meshfedv1.ResolvedService
		for _, e := range dirty {
			ws := memdb.NewWatchSet()
			resp, err := s.resolve(ws, e.req)
			if err != nil && status.Code(toStatus(err)) != codes.NotFound {
				return toStatus(err)
			}
			if resp == nil {
				resp = &meshfedv1.ResolveResponse{}
			}
			e.ws = ws
			if e.last == nil || !sameResolution(e.last, resp) {
				e.last = resp
				out = append(out, &meshfedv1.ResolvedService{Namespace: e.req.GetNamespace(), Name: e.req.GetName(), Resolution: resp})
			}
		}
		if err := sendResolutions(stream, out); err != nil {
			return err
		}
		all := memdb.NewWatchSet()
		all.Add(abandon)
		for _, e := range entries {
			for ch := range e.ws {
				all.Add(ch)
			}
		}
		if err := all.WatchCtx(stream.Context()); err != nil {
			return status.FromContextError(stream.Context().Err()).Err()
		}
		if closed(abandon) {
			dirty = entries
			continue
		}
		dirty = dirty[:0:0]
		for _, e := range entries {
			for ch := range e.ws {
				if closed(ch) {
					dirty = append(dirty, e)
					break
				}
			}
		}
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// sendResolutions sends out in messages of bounded count and size.
func sendResolutions(stream meshfedv1.CatalogService_WatchResolveManyServer, out []*meshfedv1.ResolvedService) error {
	for len(out) > 0 {
		n, size := 0, 0
		for n < len(out) && n < resolveManyChunk {
			sz := proto.Size(out[n])
			if n > 0 && size+sz > resolveManyBytes {
				break
			}
			size += sz
			n++
		}
		if err := stream.Send(&meshfedv1.WatchResolveManyResponse{Resolutions: out[:n]}); err != nil {
			return err
		}
		out = out[n:]
	}
	return nil
}
