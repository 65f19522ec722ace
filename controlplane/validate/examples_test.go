package validate

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/state"
)

// Valid examples of every kind: tests mutate copies of them, and the fuzz
// targets seed their corpora with them.

func meta(ns, name string) *meshfedv1.Meta {
	return &meshfedv1.Meta{Namespace: ns, Name: name, Labels: map[string]string{"app.kubernetes.io/name": "web", "tier": ""}}
}

func validService() *meshfedv1.Service {
	return &meshfedv1.Service{Meta: meta("default", "web"), Port: 8080, Protocol: meshfedv1.Protocol_PROTOCOL_HTTP, ServiceAccount: "web"}
}

func validWorkload() *meshfedv1.Workload {
	return &meshfedv1.Workload{
		Meta:     meta("default", "web-7d9f8-abcde"),
		Service:  "web",
		Address:  "10.1.2.3",
		Port:     15006,
		Locality: &meshfedv1.Locality{Region: "eu-west-1", Zone: "eu-west-1a"},
		Health:   meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY,
		SpiffeId: "spiffe://example.org/ns/default/sa/web",
		Version:  "v1.2.3",
	}
}

func validAuthorizationPolicy() *meshfedv1.AuthorizationPolicy {
	return &meshfedv1.AuthorizationPolicy{
		Meta:        meta("default", "allow-frontend"),
		Destination: "web",
		Action:      meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_ALLOW,
		Rules: []*meshfedv1.AuthorizationRule{
			{Principals: []string{"spiffe://example.org/ns/default/sa/frontend", "spiffe://peer.example/ns/shop/*"}, Methods: []string{"GET", "POST"}, Paths: []string{"/api/*", "/healthz"}},
			{Principals: []string{"*"}},
		},
	}
}

func validTrafficPolicy() *meshfedv1.TrafficPolicy {
	return &meshfedv1.TrafficPolicy{
		Meta:        meta("default", "web"),
		Destination: "web",
		Timeouts:    &meshfedv1.Timeouts{Connect: durationpb.New(time.Second), Request: durationpb.New(15 * time.Second), Idle: durationpb.New(time.Hour)},
		Retries:     &meshfedv1.RetryPolicy{Attempts: 3, PerTryTimeout: durationpb.New(5 * time.Second), RetryOn: []string{"5xx", "connect-failure"}},
		CircuitBreaker: &meshfedv1.CircuitBreaker{
			MaxConnections: 100, MaxRequests: 1000, ConsecutiveErrors: 5,
			BaseEjectionTime: durationpb.New(30 * time.Second), MaxEjectionPercent: 50,
		},
		RateLimit:    &meshfedv1.RateLimit{RequestsPerSecond: 100.5, Burst: 200},
		LoadBalancer: meshfedv1.LoadBalancer_LOAD_BALANCER_LEAST_REQUEST,
		Splits:       []*meshfedv1.TrafficSplit{{Version: "v1", Weight: 90}, {Version: "v2", Weight: 10}},
		Failover:     []string{"east", "west"},
		Fault:        &meshfedv1.FaultInjection{Delay: durationpb.New(100 * time.Millisecond), DelayPercent: 1.5, AbortStatus: 503, AbortPercent: 0.1},
	}
}

func validMeshSettings() *meshfedv1.MeshSettings {
	p := validTrafficPolicy()
	p.Meta, p.Destination, p.Splits = nil, "", nil
	return &meshfedv1.MeshSettings{
		Meta:                       &meshfedv1.Meta{Name: "global"},
		DefaultAuthorizationAction: meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_DENY,
		AccessLogs:                 true,
		TraceSampling:              0.01,
		OtlpEndpoint:               "otel-collector.observability:4317",
		DefaultTrafficPolicy:       p,
		Locality:                   &meshfedv1.Locality{Region: "eu-west-1"},
	}
}

func validToken() *meshfedv1.Token {
	return &meshfedv1.Token{
		Meta:        &meshfedv1.Meta{Name: "3f2b6c1e-8d4a-4b7e-9c21-5a6d7e8f9a0b"},
		Kind:        meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN,
		Description: "join token for the web VM",
		SpiffeId:    "spiffe://example.org/ns/default/sa/web",
		ExpireTime:  timestamppb.New(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)),
		MaxUses:     1,
		SecretHash:  make([]byte, 32),
	}
}

func validIdentity() *meshfedv1.Identity {
	return &meshfedv1.Identity{
		Meta:           meta("default", "web"),
		SpiffeId:       "spiffe://example.org/ns/default/sa/web",
		ServiceAccount: "web",
		SvidTtl:        durationpb.New(time.Hour),
		DnsNames:       []string{"web.default.svc", "*.web.example.org"},
	}
}

func validPeering() *meshfedv1.Peering {
	return &meshfedv1.Peering{
		Meta:             &meshfedv1.Meta{Name: "east"},
		State:            meshfedv1.PeeringState_PEERING_STATE_ACTIVE,
		PeerCluster:      "east-1",
		PeerTrustDomain:  "east.example.org",
		PeerApiAddresses: []string{"10.0.0.1:8443", "meshfed.east.example.org:8443", "[2001:db8::1]:8443"},
		Dialer:           true,
		LastSync:         timestamppb.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
	}
}

func validServiceExport() *meshfedv1.ServiceExport {
	return &meshfedv1.ServiceExport{Meta: meta("default", "web"), Peers: []string{"east", "west"}}
}

func validImportedService() *meshfedv1.ImportedService {
	return &meshfedv1.ImportedService{
		Meta:    &meshfedv1.Meta{Namespace: "default", Name: "east.web", Peer: "east"},
		Service: validService(),
		Endpoints: []*meshfedv1.Endpoint{
			{Address: "10.9.0.1", Port: 15006, Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY, SpiffeId: "spiffe://east.example.org/ns/default/sa/web", Version: "v1"},
			{Address: "2001:db8::2", Port: 15006},
		},
		PeerCluster:     "east-1",
		PeerTrustDomain: "east.example.org",
	}
}

func validCASettings() *meshfedv1.CASettings {
	return &meshfedv1.CASettings{
		Meta:            &meshfedv1.Meta{Name: "global"},
		KeyAlgorithm:    meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256,
		RootTtl:         durationpb.New(87600 * time.Hour),
		IntermediateTtl: durationpb.New(720 * time.Hour),
		SvidTtl:         durationpb.New(time.Hour),
		Rotation:        "2026-01",
	}
}

func validStoredAuthority() *meshfedv1.StoredAuthority {
	return &meshfedv1.StoredAuthority{
		Meta:      &meshfedv1.Meta{Name: "0f1e2d3c"},
		Authority: &meshfedv1.Authority{Id: "0f1e2d3c", State: meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE},
		RootKey:   []byte{1, 2, 3},
	}
}

func validServerRecord() *meshfedv1.ServerRecord {
	return &meshfedv1.ServerRecord{Meta: &meshfedv1.Meta{Name: "server-1.example"}, ApiAddr: "10.0.0.1:8443", RaftAddr: "10.0.0.1:8300"}
}

func validClusterRecord() *meshfedv1.ClusterRecord {
	return &meshfedv1.ClusterRecord{Meta: &meshfedv1.Meta{Name: "cluster"}, Cluster: "west-1", TrustDomain: "example.org"}
}

// validExamples returns one valid example of every kind.
func validExamples() map[meshfedv1.ResourceKind]proto.Message {
	return map[meshfedv1.ResourceKind]proto.Message{
		meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE:              validService(),
		meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD:             validWorkload(),
		meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORIZATION_POLICY: validAuthorizationPolicy(),
		meshfedv1.ResourceKind_RESOURCE_KIND_TRAFFIC_POLICY:       validTrafficPolicy(),
		meshfedv1.ResourceKind_RESOURCE_KIND_MESH_SETTINGS:        validMeshSettings(),
		meshfedv1.ResourceKind_RESOURCE_KIND_TOKEN:                validToken(),
		meshfedv1.ResourceKind_RESOURCE_KIND_IDENTITY:             validIdentity(),
		meshfedv1.ResourceKind_RESOURCE_KIND_PEERING:              validPeering(),
		meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE_EXPORT:       validServiceExport(),
		meshfedv1.ResourceKind_RESOURCE_KIND_IMPORTED_SERVICE:     validImportedService(),
		meshfedv1.ResourceKind_RESOURCE_KIND_CA_SETTINGS:          validCASettings(),
		meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY:            validStoredAuthority(),
		meshfedv1.ResourceKind_RESOURCE_KIND_SERVER:               validServerRecord(),
		meshfedv1.ResourceKind_RESOURCE_KIND_CLUSTER:              validClusterRecord(),
	}
}

// TestValidExamples checks that every stored kind has a rule and a valid
// example here, that the example passes, and that a message of another
// kind is refused rather than validated by the wrong rules.
func TestValidExamples(t *testing.T) {
	examples := validExamples()
	for _, info := range state.Kinds() {
		msg, ok := examples[info.Kind]
		if !ok {
			t.Errorf("no valid example of %v", info.Kind)
			continue
		}
		if err := Resource(info.Kind, msg); err != nil {
			t.Errorf("valid example of %v: %v", info.Kind, err)
		}
		other := meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE
		if info.Kind == other {
			other = meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD
		}
		if err := Resource(other, msg); err == nil {
			t.Errorf("a %v example passed as a %v", info.Kind, other)
		}
	}
}
