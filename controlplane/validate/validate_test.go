package validate

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

const (
	kService   = meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE
	kWorkload  = meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD
	kAuthz     = meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORIZATION_POLICY
	kTraffic   = meshfedv1.ResourceKind_RESOURCE_KIND_TRAFFIC_POLICY
	kMesh      = meshfedv1.ResourceKind_RESOURCE_KIND_MESH_SETTINGS
	kToken     = meshfedv1.ResourceKind_RESOURCE_KIND_TOKEN
	kIdentity  = meshfedv1.ResourceKind_RESOURCE_KIND_IDENTITY
	kPeering   = meshfedv1.ResourceKind_RESOURCE_KIND_PEERING
	kExport    = meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE_EXPORT
	kImported  = meshfedv1.ResourceKind_RESOURCE_KIND_IMPORTED_SERVICE
	kCA        = meshfedv1.ResourceKind_RESOURCE_KIND_CA_SETTINGS
	kAuthority = meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY
	kServer    = meshfedv1.ResourceKind_RESOURCE_KIND_SERVER
	kCluster   = meshfedv1.ResourceKind_RESOURCE_KIND_CLUSTER
)

func svcWith(f func(*meshfedv1.Service)) proto.Message { m := validService(); f(m); return m }
func wlWith(f func(*meshfedv1.Workload)) proto.Message { m := validWorkload(); f(m); return m }
func azWith(f func(*meshfedv1.AuthorizationPolicy)) proto.Message {
	m := validAuthorizationPolicy()
	f(m)
	return m
}
func tpWith(f func(*meshfedv1.TrafficPolicy)) proto.Message {
	m := validTrafficPolicy()
	f(m)
	return m
}
func msWith(f func(*meshfedv1.MeshSettings)) proto.Message { m := validMeshSettings(); f(m); return m }
func tokWith(f func(*meshfedv1.Token)) proto.Message       { m := validToken(); f(m); return m }
func idWith(f func(*meshfedv1.Identity)) proto.Message     { m := validIdentity(); f(m); return m }
func peWith(f func(*meshfedv1.Peering)) proto.Message      { m := validPeering(); f(m); return m }
func exWith(f func(*meshfedv1.ServiceExport)) proto.Message {
	m := validServiceExport()
	f(m)
	return m
}
func imWith(f func(*meshfedv1.ImportedService)) proto.Message {
	m := validImportedService()
	f(m)
	return m
}
func clWith(f func(*meshfedv1.ClusterRecord)) proto.Message {
	m := validClusterRecord()
	f(m)
	return m
}

func dur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

func TestResource(t *testing.T) {
	tests := []struct {
		name string
		kind meshfedv1.ResourceKind
		msg  proto.Message
		// field is the FieldError's field; empty when the message is valid.
		field string
		// reason, if set, must appear in the reason.
		reason string
	}{
		// Valid resources.
		{"service", kService, validService(), "", ""},
		{"service without service account", kService, svcWith(func(s *meshfedv1.Service) { s.ServiceAccount = "" }), "", ""},
		{"service max name", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Name = "a" + strings.Repeat("b", 62) }), "", ""},
		{"workload", kWorkload, validWorkload(), "", ""},
		{"workload ipv6", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Address = "2001:db8::1" }), "", ""},
		{"workload minimal", kWorkload, &meshfedv1.Workload{Meta: &meshfedv1.Meta{Namespace: "a", Name: "b"}, Service: "c", Address: "::1", Port: 1}, "", ""},
		{"authorization policy", kAuthz, validAuthorizationPolicy(), "", ""},
		{"authorization policy for all", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Destination = "*" }), "", ""},
		{"trust domain principal", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Rules[0].Principals = []string{"spiffe://example.org/*"} }), "", ""},
		{"traffic policy", kTraffic, validTrafficPolicy(), "", ""},
		{"traffic policy minimal", kTraffic, &meshfedv1.TrafficPolicy{Meta: &meshfedv1.Meta{Namespace: "a", Name: "b"}, Destination: "b"}, "", ""},
		{"mesh settings", kMesh, validMeshSettings(), "", ""},
		{"mesh settings URL endpoint", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.OtlpEndpoint = "https://otel.example.org:4318" }), "", ""},
		{"mtls mode unspecified", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.MtlsMode = meshfedv1.MTLSMode_MTLS_MODE_UNSPECIFIED }), "", ""},
		{"mtls mode strict", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.MtlsMode = meshfedv1.MTLSMode_MTLS_MODE_STRICT }), "", ""},
		{"mtls mode permissive", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.MtlsMode = meshfedv1.MTLSMode_MTLS_MODE_PERMISSIVE }), "", ""},
		{"workload of a proxy", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Proxy = true }), "", ""},
		{"token", kToken, validToken(), "", ""},
		{"admin token", kToken, tokWith(func(t *meshfedv1.Token) { t.Kind, t.SpiffeId = meshfedv1.TokenKind_TOKEN_KIND_ADMIN, "" }), "", ""},
		{"identity", kIdentity, validIdentity(), "", ""},
		{"peering", kPeering, validPeering(), "", ""},
		{"service export", kExport, validServiceExport(), "", ""},
		{"imported service", kImported, validImportedService(), "", ""},
		{"ca settings", kCA, validCASettings(), "", ""},
		{"authority", kAuthority, validStoredAuthority(), "", ""},
		{"server", kServer, validServerRecord(), "", ""},
		{"cluster", kCluster, validClusterRecord(), "", ""},

		// Meta.
		{"nil service", kService, (*meshfedv1.Service)(nil), "service", "required"},
		{"no meta", kService, svcWith(func(s *meshfedv1.Service) { s.Meta = nil }), "service.meta.name", "required"},
		{"empty name", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Name = "" }), "service.meta.name", "required"},
		{"upper case name", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Name = "Web" }), "service.meta.name", "lower case"},
		{"name starts with digit", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Name = "1web" }), "service.meta.name", "start with"},
		{"name ends with dash", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Name = "web-" }), "service.meta.name", "end with"},
		{"name with dot", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Name = "web.x" }), "service.meta.name", ""},
		{"name too long", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Name = strings.Repeat("a", 64) }), "service.meta.name", "63"},
		{"no namespace", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Namespace = "" }), "service.meta.namespace", "required"},
		{"bad namespace", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Meta.Namespace = "kube_system" }), "workload.meta.namespace", ""},
		{"namespace on cluster-scoped", kToken, tokWith(func(t *meshfedv1.Token) { t.Meta.Namespace = "default" }), "token.meta.namespace", "not namespaced"},
		{"bad peer", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Peer = "East" }), "service.meta.peer", ""},
		{"bad label key", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Labels = map[string]string{"-x": "y"} }), `service.meta.labels["-x"]`, "key"},
		{"bad label prefix", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Labels = map[string]string{"Example.com/x": "y"} }), `service.meta.labels["Example.com/x"]`, "prefix"},
		{"empty label name", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Labels = map[string]string{"example.com/": "y"} }), `service.meta.labels["example.com/"]`, "key"},
		{"bad label value", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Labels = map[string]string{"x": "a b"} }), `service.meta.labels["x"]`, "value"},
		{"long label value", kService, svcWith(func(s *meshfedv1.Service) { s.Meta.Labels = map[string]string{"x": strings.Repeat("v", 64)} }), `service.meta.labels["x"]`, "value"},
		{"too many labels", kService, svcWith(func(s *meshfedv1.Service) {
			s.Meta.Labels = map[string]string{}
			for i := range 65 {
				s.Meta.Labels[strings.Repeat("k", i+1)] = "v"
			}
		}), "service.meta.labels", "64"},

		// Service.
		{"no port", kService, svcWith(func(s *meshfedv1.Service) { s.Port = 0 }), "service.port", "required"},
		{"port too big", kService, svcWith(func(s *meshfedv1.Service) { s.Port = 65536 }), "service.port", "65535"},
		{"no protocol", kService, svcWith(func(s *meshfedv1.Service) { s.Protocol = 0 }), "service.protocol", "required"},
		{"unknown protocol", kService, svcWith(func(s *meshfedv1.Service) { s.Protocol = 42 }), "service.protocol", "unknown value 42"},
		{"bad service account", kService, svcWith(func(s *meshfedv1.Service) { s.ServiceAccount = "Web" }), "service.service_account", ""},

		// Workload.
		{"no service", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Service = "" }), "workload.service", "required"},
		{"bad service", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Service = "web/x" }), "workload.service", ""},
		{"no address", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Address = "" }), "workload.address", "required"},
		{"hostname address", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Address = "web.local" }), "workload.address", "IP"},
		{"address with zone", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Address = "fe80::1%eth0" }), "workload.address", "IP"},
		{"address with port", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Address = "10.0.0.1:80" }), "workload.address", "IP"},
		{"workload port", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Port = 70000 }), "workload.port", ""},
		{"unknown health", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Health = 9 }), "workload.health", "unknown value 9"},
		{"bad spiffe id", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.SpiffeId = "https://example.org/web" }), "workload.spiffe_id", "SPIFFE"},
		{"spiffe id with upper case", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.SpiffeId = "spiffe://Example.org/x" }), "workload.spiffe_id", ""},
		{"bad zone", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Locality.Zone = "eu west" }), "workload.locality.zone", ""},
		{"bad version", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Version = "v1/2" }), "workload.version", ""},
		{"invalid utf-8", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Version = "\xff" }), "workload.version", "UTF-8"},
		{"long string", kWorkload, wlWith(func(w *meshfedv1.Workload) { w.Locality.Region = strings.Repeat("r", 2000) }), "workload.locality.region", "1024"},

		// Authorization policy.
		{"no destination", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Destination = "" }), "policy.destination", "required"},
		{"no action", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Action = 0 }), "policy.action", "required"},
		{"unknown action", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Action = 3 }), "policy.action", "unknown"},
		{"no rules", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Rules = nil }), "policy.rules", "at least one"},
		{"no principals", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Rules[1].Principals = nil }), "policy.rules[1].principals", "at least one"},
		{"bad principal", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Rules[0].Principals[1] = "frontend" }), "policy.rules[0].principals[1]", "SPIFFE"},
		{"inner wildcard", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Rules[0].Principals[0] = "spiffe://example.org/*/sa/x" }), "policy.rules[0].principals[0]", ""},
		{"bare wildcard suffix", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Rules[0].Principals[0] = "/*" }), "policy.rules[0].principals[0]", ""},
		{"bad method", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Rules[0].Methods[1] = "get" }), "policy.rules[0].methods[1]", "GET"},
		{"relative path", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Rules[0].Paths[0] = "api" }), "policy.rules[0].paths[0]", "start with"},
		{"path with space", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Rules[0].Paths[1] = "/a b" }), "policy.rules[0].paths[1]", ""},
		{"path inner star", kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Rules[0].Paths[1] = "/a/*/b" }), "policy.rules[0].paths[1]", ""},

		// Traffic policy.
		{"traffic no destination", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Destination = "" }), "policy.destination", "required"},
		{"negative timeout", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Timeouts.Connect = dur(-time.Second) }), "policy.timeouts.connect", "negative"},
		{"long timeout", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Timeouts.Idle = dur(25 * time.Hour) }), "policy.timeouts.idle", "24h"},
		{"invalid duration", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Timeouts.Request = &durationpb.Duration{Seconds: 1, Nanos: -1} }), "policy.timeouts.request", "valid"},
		{"too many attempts", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Retries.Attempts = 11 }), "policy.retries.attempts", "10"},
		{"long per-try timeout", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Retries.PerTryTimeout = dur(48 * time.Hour) }), "policy.retries.per_try_timeout", ""},
		{"bad retry condition", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Retries.RetryOn[1] = "4xx" }), "policy.retries.retry_on[1]", "5xx"},
		{"repeated retry condition", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Retries.RetryOn[1] = "5xx" }), "policy.retries.retry_on[1]", "repeated"},
		{"ejection percent", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.CircuitBreaker.MaxEjectionPercent = 101 }), "policy.circuit_breaker.max_ejection_percent", ""},
		{"ejection time", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.CircuitBreaker.BaseEjectionTime = dur(-1) }), "policy.circuit_breaker.base_ejection_time", ""},
		{"negative rate", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.RateLimit.RequestsPerSecond = -1 }), "policy.rate_limit.requests_per_second", ""},
		{"NaN rate", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.RateLimit.RequestsPerSecond = math.NaN() }), "policy.rate_limit.requests_per_second", "finite"},
		{"unknown load balancer", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.LoadBalancer = 7 }), "policy.load_balancer", "unknown"},
		{"split weights", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Splits[1].Weight = 20 }), "policy.splits", "110"},
		{"split repeated version", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Splits[1].Version = "v1" }), "policy.splits[1].version", "repeated"},
		{"split no version", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Splits[0].Version = "" }), "policy.splits[0].version", "required"},
		{"split weight overflow", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Splits[0].Weight = math.MaxUint32 }), "policy.splits[0].weight", ""},
		{"bad failover", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Failover[1] = "West" }), "policy.failover[1]", ""},
		{"repeated failover", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Failover[1] = "east" }), "policy.failover[1]", "repeated"},
		{"delay percent", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Fault.DelayPercent = 100.5 }), "policy.fault.delay_percent", ""},
		{"abort percent", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Fault.AbortPercent = -1 }), "policy.fault.abort_percent", ""},
		{"abort status", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Fault.AbortStatus = 0 }), "policy.fault.abort_status", "200"},
		{"abort status 600", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) { p.Fault.AbortStatus = 600 }), "policy.fault.abort_status", ""},
		{"too many splits", kTraffic, tpWith(func(p *meshfedv1.TrafficPolicy) {
			p.Splits = make([]*meshfedv1.TrafficSplit, 17)
			for i := range p.Splits {
				p.Splits[i] = &meshfedv1.TrafficSplit{Version: "v", Weight: 1}
			}
		}), "policy.splits", "16"},

		// Mesh settings.
		{"mesh name", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.Meta.Name = "other" }), "settings.meta.name", "global"},
		{"sampling", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.TraceSampling = 1.5 }), "settings.trace_sampling", ""},
		{"sampling inf", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.TraceSampling = math.Inf(1) }), "settings.trace_sampling", "finite"},
		{"otlp endpoint", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.OtlpEndpoint = "collector" }), "settings.otlp_endpoint", ""},
		{"otlp scheme", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.OtlpEndpoint = "ftp://collector:21" }), "settings.otlp_endpoint", ""},
		{"mtls mode", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.MtlsMode = 3 }), "settings.mtls_mode", "unknown value 3: must be one of MTLS_MODE_UNSPECIFIED, MTLS_MODE_STRICT, MTLS_MODE_PERMISSIVE"},
		{"negative mtls mode", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.MtlsMode = -1 }), "settings.mtls_mode", "unknown value -1"},
		{"default action", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.DefaultAuthorizationAction = 5 }), "settings.default_authorization_action", "unknown"},
		{"default policy destination", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.DefaultTrafficPolicy.Destination = "web" }), "settings.default_traffic_policy.destination", ""},
		{"default policy retries", kMesh, msWith(func(s *meshfedv1.MeshSettings) { s.DefaultTrafficPolicy.Retries.Attempts = 99 }), "settings.default_traffic_policy.retries.attempts", ""},

		// Token.
		{"token no kind", kToken, tokWith(func(t *meshfedv1.Token) { t.Kind = 0 }), "token.kind", "required"},
		{"token unknown kind", kToken, tokWith(func(t *meshfedv1.Token) { t.Kind = 12 }), "token.kind", "unknown"},
		{"workload join without id", kToken, tokWith(func(t *meshfedv1.Token) { t.SpiffeId = "" }), "token.spiffe_id", "required"},
		{"read token with id", kToken, tokWith(func(t *meshfedv1.Token) { t.Kind = meshfedv1.TokenKind_TOKEN_KIND_READ }), "token.spiffe_id", "workload-join"},
		{"token bad id", kToken, tokWith(func(t *meshfedv1.Token) { t.SpiffeId = "spiffe://" }), "token.spiffe_id", ""},
		{"token description", kToken, tokWith(func(t *meshfedv1.Token) { t.Description = strings.Repeat("d", 257) }), "token.description", "256"},
		{"token secret stored", kToken, tokWith(func(t *meshfedv1.Token) { t.Secret = "s3cret" }), "token.secret", ""},
		{"token hash size", kToken, tokWith(func(t *meshfedv1.Token) { t.SecretHash = []byte{1} }), "token.secret_hash", "SHA-256"},
		{"token expire time", kToken, tokWith(func(t *meshfedv1.Token) { t.ExpireTime = &timestamppb.Timestamp{Nanos: -5} }), "token.expire_time", "timestamp"},
		{"token name", kToken, tokWith(func(t *meshfedv1.Token) { t.Meta.Name = "a b" }), "token.meta.name", ""},

		// Identity.
		{"identity no id", kIdentity, idWith(func(i *meshfedv1.Identity) { i.SpiffeId = "" }), "identity.spiffe_id", "required"},
		{"identity ttl", kIdentity, idWith(func(i *meshfedv1.Identity) { i.SvidTtl = dur(-time.Minute) }), "identity.svid_ttl", ""},
		{"identity dns", kIdentity, idWith(func(i *meshfedv1.Identity) { i.DnsNames[1] = "web..example" }), "identity.dns_names[1]", ""},
		{"identity dns repeated", kIdentity, idWith(func(i *meshfedv1.Identity) { i.DnsNames[1] = i.DnsNames[0] }), "identity.dns_names[1]", "repeated"},

		// Federation.
		{"peering state", kPeering, peWith(func(p *meshfedv1.Peering) { p.State = 77 }), "peering.state", "unknown"},
		{"peering trust domain", kPeering, peWith(func(p *meshfedv1.Peering) { p.PeerTrustDomain = "Bad Domain" }), "peering.peer_trust_domain", "trust domain"},
		{"peering address", kPeering, peWith(func(p *meshfedv1.Peering) { p.PeerApiAddresses[2] = "10.0.0.1" }), "peering.peer_api_addresses[2]", "host:port"},
		{"peering port", kPeering, peWith(func(p *meshfedv1.Peering) { p.PeerApiAddresses[0] = "host:0" }), "peering.peer_api_addresses[0]", ""},
		{"peering namespace", kPeering, peWith(func(p *meshfedv1.Peering) { p.Meta.Namespace = "x" }), "peering.meta.namespace", ""},
		{"export peer", kExport, exWith(func(e *meshfedv1.ServiceExport) { e.Peers[0] = "" }), "export.peers[0]", "required"},
		{"export repeated", kExport, exWith(func(e *meshfedv1.ServiceExport) { e.Peers[1] = "east" }), "export.peers[1]", "repeated"},
		{"import no peer", kImported, imWith(func(s *meshfedv1.ImportedService) { s.Meta.Peer = "" }), "imported_service.meta.peer", "required"},
		{"import service port", kImported, imWith(func(s *meshfedv1.ImportedService) { s.Service.Port = 0 }), "imported_service.service.port", ""},
		{"import endpoint address", kImported, imWith(func(s *meshfedv1.ImportedService) { s.Endpoints[1].Address = "x" }), "imported_service.endpoints[1].address", ""},
		{"import endpoint health", kImported, imWith(func(s *meshfedv1.ImportedService) { s.Endpoints[0].Health = 10 }), "imported_service.endpoints[0].health", "unknown"},

		// Internal kinds.
		{"ca key algorithm", kCA, &meshfedv1.CASettings{Meta: &meshfedv1.Meta{Name: "global"}, KeyAlgorithm: 99}, "settings.key_algorithm", "unknown"},
		{"ca ttl", kCA, &meshfedv1.CASettings{Meta: &meshfedv1.Meta{Name: "global"}, SvidTtl: dur(-time.Hour)}, "settings.svid_ttl", "negative"},
		{"authority state", kAuthority, &meshfedv1.StoredAuthority{Meta: &meshfedv1.Meta{Name: "a"}, Authority: &meshfedv1.Authority{State: 9}}, "authority.authority.state", "unknown"},
		{"server address", kServer, &meshfedv1.ServerRecord{Meta: &meshfedv1.Meta{Name: "s1"}, RaftAddr: "nope"}, "server.raft_addr", ""},
		{"cluster name", kCluster, clWith(func(r *meshfedv1.ClusterRecord) { r.Meta.Name = "c" }), "cluster.meta.name", ""},
		{"cluster trust domain", kCluster, clWith(func(r *meshfedv1.ClusterRecord) { r.TrustDomain = "" }), "cluster.trust_domain", "required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Resource(tt.kind, tt.msg)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("valid resource refused: %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v (%T), want a *FieldError for %s", err, err, tt.field)
			}
			if fe.Field != tt.field {
				t.Errorf("field = %q, want %q (%v)", fe.Field, tt.field, err)
			}
			if !strings.Contains(fe.Reason, tt.reason) {
				t.Errorf("reason = %q, want it to mention %q", fe.Reason, tt.reason)
			}
			if want := "invalid " + fe.Field + ": " + fe.Reason; err.Error() != want {
				t.Errorf("Error() = %q, want %q", err.Error(), want)
			}
		})
	}
}

func TestResourceKindMismatch(t *testing.T) {
	if err := Resource(kService, validWorkload()); err == nil {
		t.Error("a workload validated as a service")
	}
	if err := Resource(0, validService()); err == nil {
		t.Error("a resource validated as kind UNSPECIFIED")
	}
	if err := Resource(kService, nil); err == nil {
		t.Error("nil validated")
	}
}

func TestPerKindFunctions(t *testing.T) {
	for name, err := range map[string]error{
		"Service":             Service(validService()),
		"Workload":            Workload(validWorkload()),
		"AuthorizationPolicy": AuthorizationPolicy(validAuthorizationPolicy()),
		"TrafficPolicy":       TrafficPolicy(validTrafficPolicy()),
		"MeshSettings":        MeshSettings(validMeshSettings()),
		"Token":               Token(validToken()),
		"Identity":            Identity(validIdentity()),
		"Peering":             Peering(validPeering()),
		"ServiceExport":       ServiceExport(validServiceExport()),
		"ImportedService":     ImportedService(validImportedService()),
		"CASettings":          CASettings(validCASettings()),
		"StoredAuthority":     StoredAuthority(validStoredAuthority()),
		"ServerRecord":        ServerRecord(validServerRecord()),
		"ClusterRecord":       ClusterRecord(validClusterRecord()),
	} {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := Workload(nil); err == nil {
		t.Error("Workload(nil) succeeded")
	}
}

func TestNormalize(t *testing.T) {
	s := &meshfedv1.Service{Meta: &meshfedv1.Meta{Name: "web"}, Port: 80, Protocol: meshfedv1.Protocol_PROTOCOL_TCP}
	Normalize(kService, s)
	if s.Meta.Namespace != "default" || s.ServiceAccount != "web" {
		t.Errorf("normalized service = %v", s)
	}
	if err := Service(s); err != nil {
		t.Errorf("normalized service refused: %v", err)
	}

	w := &meshfedv1.Workload{}
	Normalize(kWorkload, w)
	if w.GetMeta().GetNamespace() != "default" {
		t.Errorf("normalized workload meta = %v", w.GetMeta())
	}

	m := &meshfedv1.MeshSettings{}
	Normalize(kMesh, m)
	if m.GetMeta().GetName() != "global" || m.GetMeta().GetNamespace() != "" {
		t.Errorf("normalized mesh settings meta = %v", m.GetMeta())
	}

	tok := &meshfedv1.Token{Meta: &meshfedv1.Meta{Name: "x"}}
	Normalize(kToken, tok)
	if tok.Meta.Namespace != "" {
		t.Errorf("cluster-scoped token got namespace %q", tok.Meta.Namespace)
	}

	// Explicit values are kept; other kinds and nil are left alone.
	s2 := &meshfedv1.Service{Meta: &meshfedv1.Meta{Name: "web", Namespace: "shop"}, ServiceAccount: "sa"}
	Normalize(kService, s2)
	if s2.Meta.Namespace != "shop" || s2.ServiceAccount != "sa" {
		t.Errorf("Normalize overwrote explicit values: %v", s2)
	}
	other := &meshfedv1.Service{}
	Normalize(kWorkload, other)
	if other.Meta != nil {
		t.Error("Normalize changed a message of another kind")
	}
	Normalize(kService, nil)
	Normalize(kService, (*meshfedv1.Service)(nil))
}

func TestFieldErrorMessage(t *testing.T) {
	err := Resource(kAuthz, azWith(func(p *meshfedv1.AuthorizationPolicy) { p.Rules[0].Principals[1] = "bob" }))
	const want = `invalid policy.rules[0].principals[1]: "bob" is not a SPIFFE ID: scheme is missing or invalid`
	if err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}
