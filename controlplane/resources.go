package controlplane

import (
	"context"
	"encoding/base64"
	"fmt"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/fsm"
	"github.com/meshfed/meshfed/controlplane/state"
	"github.com/meshfed/meshfed/controlplane/validate"
)

// The generic resource operations behind every CRUD RPC. Each RPC handler
// only names its kind and unwraps its request.

const (
	defaultNamespace = "default"
	defaultPageSize  = 100
	maxPageSize      = 1000
)

// writeMode is how a write treats an existing resource.
type writeMode int

const (
	modeCreate writeMode = iota // fail if it exists
	modeUpdate                  // fail if it does not exist
	modeUpsert                  // either
)

func kindInfo(kind meshfedv1.ResourceKind) state.KindInfo {
	info, ok := state.LookupKind(kind)
	if !ok {
		panic(fmt.Sprintf("unregistered resource kind %v", kind))
	}
	return info
}

func namespaceFor(kind meshfedv1.ResourceKind, ns string) string {
	if !kindInfo(kind).Namespaced {
		return ""
	}
	if ns == "" {
		return defaultNamespace
	}
	return ns
}

func qualified(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}

func getResource[T state.Resource](s *Server, kind meshfedv1.ResourceKind, noun string, req *meshfedv1.GetRequest) (T, error) {
	var zero T
	if req.GetName() == "" {
		return zero, status.Error(codes.InvalidArgument, "invalid name: required")
	}
	ns := namespaceFor(kind, req.GetNamespace())
	_, r, err := s.store().Get(nil, kind, ns, req.GetName())
	if err != nil {
		return zero, toStatus(err)
	}
	if r == nil {
		return zero, status.Errorf(codes.NotFound, "%s %q not found", noun, qualified(ns, req.GetName()))
	}
	return r.(T), nil
}

func listResources[T state.Resource](s *Server, kind meshfedv1.ResourceKind, req *meshfedv1.ListRequest) ([]T, string, uint64, error) {
	size := int(req.GetPage().GetPageSize())
	if size == 0 {
		size = defaultPageSize
	}
	if size > maxPageSize {
		return nil, "", 0, status.Errorf(codes.InvalidArgument, "invalid page.page_size: at most %d, got %d", maxPageSize, size)
	}
	var after string
	if tok := req.GetPage().GetPageToken(); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil {
			return nil, "", 0, status.Error(codes.InvalidArgument, "invalid page.page_token: not a token returned by a previous page")
		}
		after = string(b)
	}
	p := state.ListParams{Kind: kind, Namespace: req.GetNamespace(), Service: req.GetService(), After: after, Limit: size}
	if p.Service != "" && p.Namespace == "" {
		p.Namespace = defaultNamespace
	}
	idx, items, next, err := s.store().List(nil, p)
	if err != nil {
		return nil, "", 0, toStatus(err)
	}
	out := make([]T, len(items))
	for i, it := range items {
		out[i] = it.(T)
	}
	if next != "" {
		next = base64.RawURLEncoding.EncodeToString([]byte(next))
	}
	return out, next, idx, nil
}

// stripServerMeta clears the meta fields the server owns.
func stripServerMeta(m *meshfedv1.Meta) {
	if m == nil {
		return
	}
	m.Version, m.CreateVersion, m.CreateTime, m.UpdateTime, m.Peer = 0, 0, nil, nil, ""
}

// sameContent reports whether candidate, whose server-owned meta fields are
// clear, differs from stored only in those fields. It borrows stored's values
// for the comparison instead of cloning either message.
func sameContent(stored, candidate state.Resource) bool {
	sm, cm := stored.GetMeta(), candidate.GetMeta()
	if sm == nil || cm == nil {
		return false
	}
	cm.Version, cm.CreateVersion, cm.CreateTime, cm.UpdateTime, cm.Peer = sm.Version, sm.CreateVersion, sm.CreateTime, sm.UpdateTime, sm.Peer
	equal := proto.Equal(stored, candidate)
	stripServerMeta(cm)
	return equal
}

// writeResource normalizes, validates and applies a create, update or
// upsert. A write that would change nothing returns the stored resource
// without a Raft round trip (so repeated applies do not bump versions).
// It may modify in, which handlers own (a decoded request).
func writeResource[T state.Resource](ctx context.Context, s *Server, kind meshfedv1.ResourceKind, field string, in T, expected uint64, mode writeMode) (T, error) {
	var zero T
	if !in.ProtoReflect().IsValid() {
		return zero, status.Errorf(codes.InvalidArgument, "invalid %s: required", field)
	}
	r := in
	if r.GetMeta() == nil {
		return zero, status.Errorf(codes.InvalidArgument, "invalid %s.meta: required", field)
	}
	stripServerMeta(r.GetMeta())
	validate.Normalize(kind, r)
	if err := validate.Resource(kind, r); err != nil {
		return zero, toStatus(err)
	}
	m := r.GetMeta()
	_, cur, err := s.store().Get(nil, kind, m.GetNamespace(), m.GetName())
	if err != nil {
		return zero, toStatus(err)
	}
	if cur != nil && mode != modeCreate && (expected == 0 || expected == cur.GetMeta().GetVersion()) && sameContent(cur, r) {
		return cur.(T), nil
	}
	payload, err := proto.Marshal(r)
	if err != nil {
		return zero, toStatus(err)
	}
	res, err := s.applyWrite(ctx, fsm.UpsertResourceType, &meshfedv1.ResourceWrite{
		Kind: kind, Payload: payload, Namespace: m.GetNamespace(), Name: m.GetName(),
		ExpectedVersion: expected, MustNotExist: mode == modeCreate, MustExist: mode == modeUpdate,
	})
	if err != nil {
		return zero, toStatus(err)
	}
	return res.Resource.(T), nil
}

func deleteResource(ctx context.Context, s *Server, kind meshfedv1.ResourceKind, req *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "invalid name: required")
	}
	res, err := s.applyWrite(ctx, fsm.DeleteResourceType, &meshfedv1.ResourceWrite{
		Kind: kind, Namespace: namespaceFor(kind, req.GetNamespace()), Name: req.GetName(), ExpectedVersion: req.GetExpectedVersion(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &meshfedv1.DeleteResponse{Index: res.Index}, nil
}

// watchResources streams every matching resource, then END_OF_SNAPSHOT, then
// each change. Changes are found by comparing versions after each wake-up,
// so a burst of writes is coalesced and a restore (which wakes every
// watcher) is sent as the difference between the old and new state.
func watchResources[T state.Resource](ctx context.Context, s *Server, kind meshfedv1.ResourceKind, req *meshfedv1.WatchRequest,
	send func(meshfedv1.WatchEventType, T, uint64) error) error {
	p := state.ListParams{Kind: kind, Namespace: req.GetNamespace(), Service: req.GetService()}
	if p.Service != "" && p.Namespace == "" {
		p.Namespace = defaultNamespace
	}
	type key struct{ ns, name string }
	known := map[key]uint64{}
	var zero T
	first := true
	for {
		ws := memdb.NewWatchSet()
		st := s.store()
		ws.Add(st.AbandonCh())
		idx, items, _, err := st.List(ws, p)
		if err != nil {
			return toStatus(err)
		}
		seen := make(map[key]bool, len(items))
		for _, it := range items {
			m := it.GetMeta()
			k := key{m.GetNamespace(), m.GetName()}
			seen[k] = true
			if v, ok := known[k]; ok && v == m.GetVersion() {
				continue
			}
			known[k] = m.GetVersion()
			if err := send(meshfedv1.WatchEventType_WATCH_EVENT_TYPE_UPSERT, it.(T), idx); err != nil {
				return err
			}
		}
		for k := range known {
			if seen[k] {
				continue
			}
			delete(known, k)
			stub, err := state.NewMessage(kind)
			if err != nil {
				return toStatus(err)
			}
			setMeta(stub, &meshfedv1.Meta{Namespace: k.ns, Name: k.name})
			if err := send(meshfedv1.WatchEventType_WATCH_EVENT_TYPE_DELETE, stub.(T), idx); err != nil {
				return err
			}
		}
		if first {
			first = false
			if err := send(meshfedv1.WatchEventType_WATCH_EVENT_TYPE_END_OF_SNAPSHOT, zero, idx); err != nil {
				return err
			}
		}
		if err := ws.WatchCtx(ctx); err != nil {
			return nil
		}
	}
}

// setMeta sets the meta field every resource message has.
func setMeta(r state.Resource, m *meshfedv1.Meta) {
	pr := r.ProtoReflect()
	pr.Set(pr.Descriptor().Fields().ByName("meta"), protoreflect.ValueOfMessage(m.ProtoReflect()))
}
