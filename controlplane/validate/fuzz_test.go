package validate

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/state"
)

// fuzzResource checks, for arbitrary bytes that decode as a resource of
// kind, that Normalize and Resource never panic, that Normalize is
// idempotent, that refusals are FieldErrors, and that a resource that
// validates still validates after a marshal/unmarshal round trip (what Raft
// does to it).
func fuzzResource(f *testing.F, kind meshfedv1.ResourceKind, seeds ...proto.Message) {
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := state.NewMessage(kind)
		if err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(data, msg); err != nil {
			return
		}
		Normalize(kind, msg)
		again := proto.Clone(msg)
		Normalize(kind, again)
		if !proto.Equal(msg, again) {
			t.Fatalf("Normalize is not idempotent:\n%v\n%v", msg, again)
		}
		if err := Resource(kind, msg); err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field == "" || fe.Reason == "" {
				t.Fatalf("refusal is not a complete FieldError: %#v", err)
			}
			return
		}
		b, err := proto.Marshal(msg)
		if err != nil {
			t.Fatalf("valid resource does not marshal: %v", err)
		}
		back, _ := state.NewMessage(kind)
		if err := proto.Unmarshal(b, back); err != nil {
			t.Fatalf("valid resource does not unmarshal: %v", err)
		}
		if err := Resource(kind, back); err != nil {
			t.Fatalf("valid resource refused after a round trip: %v\n%v", err, back)
		}
	})
}

func FuzzService(f *testing.F) {
	fuzzResource(f, kService, validService(),
		&meshfedv1.Service{Meta: &meshfedv1.Meta{Name: "x"}, Port: 1, Protocol: meshfedv1.Protocol_PROTOCOL_GRPC},
		svcWith(func(s *meshfedv1.Service) { s.Protocol = 9 }))
}

func FuzzWorkload(f *testing.F) {
	fuzzResource(f, kWorkload, validWorkload(),
		wlWith(func(w *meshfedv1.Workload) { w.Address = "2001:db8::7" }),
		wlWith(func(w *meshfedv1.Workload) { w.SpiffeId = "spiffe://td/../x" }))
}

func FuzzAuthorizationPolicy(f *testing.F) {
	fuzzResource(f, kAuthz, validAuthorizationPolicy(),
		azWith(func(p *meshfedv1.AuthorizationPolicy) {
			p.Destination = "*"
			p.Rules[0].Principals = []string{"spiffe://a.b/*"}
		}))
}

func FuzzTrafficPolicy(f *testing.F) {
	fuzzResource(f, kTraffic, validTrafficPolicy(),
		&meshfedv1.TrafficPolicy{Meta: &meshfedv1.Meta{Name: "x"}, Destination: "x"},
		tpWith(func(p *meshfedv1.TrafficPolicy) { p.Splits = nil; p.Fault = nil }))
}

func FuzzMeshSettings(f *testing.F) {
	fuzzResource(f, kMesh, validMeshSettings(), &meshfedv1.MeshSettings{},
		msWith(func(s *meshfedv1.MeshSettings) { s.OtlpEndpoint = "http://[::1]:4318/v1" }))
}

func FuzzToken(f *testing.F) {
	fuzzResource(f, kToken, validToken(),
		&meshfedv1.Token{Meta: &meshfedv1.Meta{Name: "t"}, Kind: meshfedv1.TokenKind_TOKEN_KIND_SERVER_JOIN, MaxUses: 1})
}
