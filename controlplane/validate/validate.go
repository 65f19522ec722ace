// Package validate checks resources before they are proposed to Raft: the
// one place that says what a well-formed resource is. Normalize fills
// defaults first; Resource (or the per-kind functions) then refuses anything
// malformed with a *FieldError naming the field at fault.
package validate

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/state"
)

// FieldError says which field of a resource is invalid and why. Field is a
// dotted path of proto field names from the resource's root, which is named
// as in the API requests ("service", "workload", "policy", "settings",
// "token", ...), e.g. "policy.rules[0].principals[1]".
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string {
	return "invalid " + e.Field + ": " + e.Reason
}

// Names of the singletons.
const (
	MeshSettingsName  = "global"
	ClusterRecordName = "cluster"
	// DefaultNamespace is the namespace of namespaced resources sent
	// without one.
	DefaultNamespace = "default"
)

// kindRule is how one kind is validated.
type kindRule struct {
	// root names the resource in field paths.
	root  string
	check func(c *checker, root string, m proto.Message)
}

// kindRules is the registration table of per-kind rules.
var kindRules = map[meshfedv1.ResourceKind]kindRule{
	meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE:              {"service", typed(checkService)},
	meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD:             {"workload", typed(checkWorkload)},
	meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORIZATION_POLICY: {"policy", typed(checkAuthorizationPolicy)},
	meshfedv1.ResourceKind_RESOURCE_KIND_TRAFFIC_POLICY:       {"policy", typed(checkTrafficPolicy)},
	meshfedv1.ResourceKind_RESOURCE_KIND_MESH_SETTINGS:        {"settings", typed(checkMeshSettings)},
	meshfedv1.ResourceKind_RESOURCE_KIND_TOKEN:                {"token", typed(checkToken)},
	meshfedv1.ResourceKind_RESOURCE_KIND_IDENTITY:             {"identity", typed(checkIdentity)},
	meshfedv1.ResourceKind_RESOURCE_KIND_PEERING:              {"peering", typed(checkPeering)},
	meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE_EXPORT:       {"export", typed(checkServiceExport)},
	meshfedv1.ResourceKind_RESOURCE_KIND_IMPORTED_SERVICE:     {"imported_service", typed(checkImportedService)},
	meshfedv1.ResourceKind_RESOURCE_KIND_CA_SETTINGS:          {"settings", typed(checkCASettings)},
	meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY:            {"authority", typed(checkStoredAuthority)},
	meshfedv1.ResourceKind_RESOURCE_KIND_SERVER:               {"server", typed(checkServerRecord)},
	meshfedv1.ResourceKind_RESOURCE_KIND_CLUSTER:              {"cluster", typed(checkClusterRecord)},
}

func typed[T proto.Message](fn func(c *checker, root string, m T)) func(*checker, string, proto.Message) {
	return func(c *checker, root string, m proto.Message) { fn(c, root, m.(T)) }
}

// Normalize fills the defaults of a resource of kind in place: the
// namespace "default" for namespaced kinds, a service's service_account
// (its name), and the names of the singletons (mesh settings "global", the
// cluster record "cluster"). It does nothing to a message that is not of
// kind. Normalize is idempotent.
func Normalize(kind meshfedv1.ResourceKind, msg proto.Message) {
	if msg == nil || !msg.ProtoReflect().IsValid() {
		return
	}
	if k, ok := state.KindOf(msg); !ok || k != kind {
		return
	}
	info, _ := state.LookupKind(kind)
	r := msg.(state.Resource)
	meta := r.GetMeta()
	if meta == nil {
		pm := msg.ProtoReflect()
		meta = pm.Mutable(pm.Descriptor().Fields().ByName("meta")).Message().Interface().(*meshfedv1.Meta)
	}
	if info.Namespaced && meta.Namespace == "" {
		meta.Namespace = DefaultNamespace
	}
	switch m := msg.(type) {
	case *meshfedv1.Service:
		if m.ServiceAccount == "" {
			m.ServiceAccount = meta.Name
		}
	case *meshfedv1.MeshSettings:
		if meta.Name == "" {
			meta.Name = MeshSettingsName
		}
	case *meshfedv1.ClusterRecord:
		if meta.Name == "" {
			meta.Name = ClusterRecordName
		}
	}
}

// Resource validates a resource of kind. The error is a *FieldError, except
// when msg is not a message of kind.
func Resource(kind meshfedv1.ResourceKind, msg proto.Message) error {
	rule, ok := kindRules[kind]
	if !ok {
		return fmt.Errorf("validate: unknown resource kind %v", kind)
	}
	if msg == nil {
		return &FieldError{Field: rule.root, Reason: "is required"}
	}
	if k, ok := state.KindOf(msg); !ok || k != kind {
		return fmt.Errorf("validate: %v is not a %v resource", msg.ProtoReflect().Descriptor().FullName(), kind)
	}
	return run(rule.root, msg, rule.check)
}

// run validates m under root: the generic checks of every field (walk.go),
// then the kind's own rules.
func run(root string, m proto.Message, check func(*checker, string, proto.Message)) error {
	c := &checker{}
	if !m.ProtoReflect().IsValid() {
		c.fail(root, "is required")
		return c.result()
	}
	c.walk(root, m.ProtoReflect())
	if c.ok() {
		check(c, root, m)
	}
	return c.result()
}

func runKind(kind meshfedv1.ResourceKind, m proto.Message) error {
	r := kindRules[kind]
	return run(r.root, m, r.check)
}

// Service validates a service.
func Service(s *meshfedv1.Service) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE, s)
}

// Workload validates a workload.
func Workload(w *meshfedv1.Workload) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD, w)
}

// AuthorizationPolicy validates an authorization policy.
func AuthorizationPolicy(p *meshfedv1.AuthorizationPolicy) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORIZATION_POLICY, p)
}

// TrafficPolicy validates a traffic policy.
func TrafficPolicy(p *meshfedv1.TrafficPolicy) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_TRAFFIC_POLICY, p)
}

// MeshSettings validates the mesh settings.
func MeshSettings(s *meshfedv1.MeshSettings) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_MESH_SETTINGS, s)
}

// Token validates a token as stored: with a secret hash, never a secret.
func Token(t *meshfedv1.Token) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_TOKEN, t)
}

// Identity validates an identity registration.
func Identity(i *meshfedv1.Identity) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_IDENTITY, i)
}

// Peering validates a peering.
func Peering(p *meshfedv1.Peering) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_PEERING, p)
}

// ServiceExport validates a service export.
func ServiceExport(e *meshfedv1.ServiceExport) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE_EXPORT, e)
}

// ImportedService validates a service imported from a peer, as received on
// a peering stream.
func ImportedService(s *meshfedv1.ImportedService) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_IMPORTED_SERVICE, s)
}

// CASettings validates the CA settings.
func CASettings(s *meshfedv1.CASettings) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_CA_SETTINGS, s)
}

// StoredAuthority validates an authority record.
func StoredAuthority(a *meshfedv1.StoredAuthority) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY, a)
}

// ServerRecord validates a server record.
func ServerRecord(s *meshfedv1.ServerRecord) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, s)
}

// ClusterRecord validates the cluster record.
func ClusterRecord(r *meshfedv1.ClusterRecord) error {
	return runKind(meshfedv1.ResourceKind_RESOURCE_KIND_CLUSTER, r)
}

// checker keeps the first failure of a validation.
type checker struct {
	err *FieldError
}

func (c *checker) fail(field, reason string) {
	if c.err == nil {
		c.err = &FieldError{Field: field, Reason: reason}
	}
}

func (c *checker) failf(field, format string, args ...any) {
	if c.err == nil {
		c.fail(field, fmt.Sprintf(format, args...))
	}
}

func (c *checker) ok() bool { return c.err == nil }

func (c *checker) result() error {
	if c.err == nil {
		return nil
	}
	return c.err
}

// field and index build paths.
func field(path, name string) string  { return path + "." + name }
func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// DNSLabel checks a request field that must be a DNS label (a name the
// server keys something by), naming field in the error.
func DNSLabel(field, s string) error {
	c := &checker{}
	c.dnsLabel(field, s)
	return c.result()
}
