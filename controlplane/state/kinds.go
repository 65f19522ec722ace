package state

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// Resource is any replicated resource: a protobuf message whose first field
// is its Meta.
type Resource interface {
	proto.Message
	GetMeta() *meshfedv1.Meta
}

// KindInfo describes how one ResourceKind is stored.
type KindInfo struct {
	Kind meshfedv1.ResourceKind
	// Table is the go-memdb table holding resources of the kind.
	Table string
	// Namespaced kinds are keyed by namespace and name; the others
	// (cluster-scoped) by name alone, with an empty namespace.
	Namespaced bool
	// New returns an empty message of the kind.
	New func() Resource
}

// kinds is the registration table of every stored kind, in ResourceKind
// order. Append new kinds here; their tables are created from it.
var kinds = []KindInfo{
	{meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE, "services", true, func() Resource { return new(meshfedv1.Service) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD, "workloads", true, func() Resource { return new(meshfedv1.Workload) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORIZATION_POLICY, "authorization_policies", true, func() Resource { return new(meshfedv1.AuthorizationPolicy) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_TRAFFIC_POLICY, "traffic_policies", true, func() Resource { return new(meshfedv1.TrafficPolicy) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_MESH_SETTINGS, "mesh_settings", false, func() Resource { return new(meshfedv1.MeshSettings) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_TOKEN, "tokens", false, func() Resource { return new(meshfedv1.Token) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_IDENTITY, "identities", true, func() Resource { return new(meshfedv1.Identity) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_PEERING, "peerings", false, func() Resource { return new(meshfedv1.Peering) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE_EXPORT, "service_exports", true, func() Resource { return new(meshfedv1.ServiceExport) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_IMPORTED_SERVICE, "imported_services", true, func() Resource { return new(meshfedv1.ImportedService) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_CA_SETTINGS, "ca_settings", false, func() Resource { return new(meshfedv1.CASettings) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY, "authorities", false, func() Resource { return new(meshfedv1.StoredAuthority) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, "servers", false, func() Resource { return new(meshfedv1.ServerRecord) }},
	{meshfedv1.ResourceKind_RESOURCE_KIND_CLUSTER, "clusters", false, func() Resource { return new(meshfedv1.ClusterRecord) }},
}

// kindByName maps a message's full name to its kind; derived from kinds.
var kindByName = func() map[protoreflect.FullName]meshfedv1.ResourceKind {
	m := make(map[protoreflect.FullName]meshfedv1.ResourceKind, len(kinds))
	for _, k := range kinds {
		m[k.New().ProtoReflect().Descriptor().FullName()] = k.Kind
	}
	return m
}()

// Kinds returns every stored kind in ResourceKind order.
func Kinds() []KindInfo {
	return append([]KindInfo(nil), kinds...)
}

// LookupKind returns how kind is stored, and false for an unknown kind.
func LookupKind(kind meshfedv1.ResourceKind) (KindInfo, bool) {
	i := int(kind) - 1
	if i < 0 || i >= len(kinds) || kinds[i].Kind != kind {
		return KindInfo{}, false
	}
	return kinds[i], true
}

// KindOf returns the kind of a resource message, and false when msg is not
// a stored resource.
func KindOf(msg proto.Message) (meshfedv1.ResourceKind, bool) {
	if msg == nil {
		return 0, false
	}
	k, ok := kindByName[msg.ProtoReflect().Descriptor().FullName()]
	return k, ok
}

// NewMessage returns an empty message of kind.
func NewMessage(kind meshfedv1.ResourceKind) (Resource, error) {
	info, ok := LookupKind(kind)
	if !ok {
		return nil, fmt.Errorf("%w: %v", ErrUnknownKind, kind)
	}
	return info.New(), nil
}

// mutableMeta returns msg's Meta, creating it if unset.
func mutableMeta(msg Resource) *meshfedv1.Meta {
	if m := msg.GetMeta(); m != nil {
		return m
	}
	pm := msg.ProtoReflect()
	fd := pm.Descriptor().Fields().ByName("meta")
	return pm.Mutable(fd).Message().Interface().(*meshfedv1.Meta)
}

// kindLabel names a kind in messages: "authorization policy".
func kindLabel(kind meshfedv1.ResourceKind) string {
	s := strings.TrimPrefix(kind.String(), "RESOURCE_KIND_")
	return strings.ToLower(strings.ReplaceAll(s, "_", " "))
}
