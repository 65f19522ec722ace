package controlplane

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

// fingerprint lists every resource of the writable kinds with its version,
// read consistently from the leader.
func fingerprint(t *testing.T, cl *client.Client) string {
	t.Helper()
	ctx := context.Background()
	read := &meshfedv1.ReadOptions{Consistent: true}
	var b strings.Builder
	svcs, err := cl.Catalog.ListServices(ctx, &meshfedv1.ListRequest{Read: read})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs.Services {
		fmt.Fprintf(&b, "svc %s/%s %d %d\n", s.Meta.Namespace, s.Meta.Name, s.Meta.Version, s.Port)
	}
	wls, err := cl.Catalog.ListWorkloads(ctx, &meshfedv1.ListRequest{Read: read})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range wls.Workloads {
		fmt.Fprintf(&b, "wl %s/%s %d\n", w.Meta.Namespace, w.Meta.Name, w.Meta.Version)
	}
	az, err := cl.Policy.ListAuthorizationPolicies(ctx, &meshfedv1.ListRequest{Read: read})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range az.Policies {
		fmt.Fprintf(&b, "authz %s %d\n", p.Meta.Name, p.Meta.Version)
	}
	tp, err := cl.Policy.ListTrafficPolicies(ctx, &meshfedv1.ListRequest{Read: read})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range tp.Policies {
		fmt.Fprintf(&b, "traffic %s %d\n", p.Meta.Name, p.Meta.Version)
	}
	toks, err := cl.Tokens.ListTokens(ctx, &meshfedv1.ListRequest{Read: read})
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range toks.Tokens {
		fmt.Fprintf(&b, "token %s %d %d\n", tk.Meta.Name, tk.Meta.Version, tk.Uses)
	}
	ms, err := cl.Mesh.GetMeshSettings(ctx, &meshfedv1.GetMeshSettingsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "mesh %d\n", ms.Meta.GetVersion())
	return b.String()
}

func TestBadInputChangesNothing(t *testing.T) {
	c := startTestCluster(t, 1)
	ctx := context.Background()
	s1 := c.servers[0]
	admin := c.client(t, s1)
	existing, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("web", 80)})
	if err != nil {
		t.Fatal(err)
	}
	readTok, err := admin.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{Kind: meshfedv1.TokenKind_TOKEN_KIND_READ})
	if err != nil {
		t.Fatal(err)
	}
	reader := c.clientWithToken(t, s1, readTok.Secret)
	anon := c.clientWithToken(t, s1, "")
	forged := c.clientWithToken(t, s1, "mfd_forged")
	big := strings.Repeat("x", 5<<20)

	cases := []struct {
		name  string
		call  func() error
		code  codes.Code
		field string
	}{
		{"invalid name", func() error {
			_, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("Bad_Name", 80)})
			return err
		}, codes.InvalidArgument, "service.meta.name"},
		{"invalid namespace", func() error {
			s := svc("ok", 80)
			s.Meta.Namespace = "-ns"
			_, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: s})
			return err
		}, codes.InvalidArgument, "service.meta.namespace"},
		{"missing service", func() error {
			_, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{})
			return err
		}, codes.InvalidArgument, "service"},
		{"missing port", func() error {
			_, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("noport", 0)})
			return err
		}, codes.InvalidArgument, "service.port"},
		{"unknown protocol", func() error {
			s := svc("proto", 80)
			s.Protocol = 42
			_, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: s})
			return err
		}, codes.InvalidArgument, "service.protocol"},
		{"workload bad address", func() error {
			_, err := admin.Catalog.CreateWorkload(ctx, &meshfedv1.CreateWorkloadRequest{Workload: &meshfedv1.Workload{
				Meta: &meshfedv1.Meta{Name: "w1"}, Service: "web", Address: "not-an-ip", Port: 80}})
			return err
		}, codes.InvalidArgument, "workload.address"},
		{"workload missing service", func() error {
			_, err := admin.Catalog.CreateWorkload(ctx, &meshfedv1.CreateWorkloadRequest{Workload: &meshfedv1.Workload{
				Meta: &meshfedv1.Meta{Name: "w1"}, Address: "10.0.0.1", Port: 80}})
			return err
		}, codes.InvalidArgument, "workload.service"},
		{"authz without rules", func() error {
			_, err := admin.Policy.CreateAuthorizationPolicy(ctx, &meshfedv1.CreateAuthorizationPolicyRequest{Policy: &meshfedv1.AuthorizationPolicy{
				Meta: &meshfedv1.Meta{Name: "p"}, Destination: "web", Action: meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_ALLOW}})
			return err
		}, codes.InvalidArgument, "policy.rules"},
		{"authz bad principal", func() error {
			_, err := admin.Policy.CreateAuthorizationPolicy(ctx, &meshfedv1.CreateAuthorizationPolicyRequest{Policy: &meshfedv1.AuthorizationPolicy{
				Meta: &meshfedv1.Meta{Name: "p"}, Destination: "web", Action: meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_ALLOW,
				Rules: []*meshfedv1.AuthorizationRule{{Principals: []string{"spiffe://east.mesh/ns/a/sa/b", "http://nope"}}}}})
			return err
		}, codes.InvalidArgument, "policy.rules[0].principals[1]"},
		{"traffic splits not 100", func() error {
			_, err := admin.Policy.CreateTrafficPolicy(ctx, &meshfedv1.CreateTrafficPolicyRequest{Policy: &meshfedv1.TrafficPolicy{
				Meta: &meshfedv1.Meta{Name: "t"}, Destination: "web",
				Splits: []*meshfedv1.TrafficSplit{{Version: "v1", Weight: 50}, {Version: "v2", Weight: 20}}}})
			return err
		}, codes.InvalidArgument, "policy.splits"},
		{"mesh sampling out of range", func() error {
			_, err := admin.Mesh.UpdateMeshSettings(ctx, &meshfedv1.UpdateMeshSettingsRequest{Settings: &meshfedv1.MeshSettings{TraceSampling: 2}})
			return err
		}, codes.InvalidArgument, "settings.trace_sampling"},
		{"token without kind", func() error {
			_, err := admin.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{})
			return err
		}, codes.InvalidArgument, "token.kind"},
		{"workload-join token without spiffe id", func() error {
			_, err := admin.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{Kind: meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN})
			return err
		}, codes.InvalidArgument, "token.spiffe_id"},
		{"oversized request", func() error {
			s := svc("big", 80)
			s.Meta.Labels = map[string]string{"k": big}
			_, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: s}, grpc.MaxCallSendMsgSize(64<<20))
			return err
		}, codes.ResourceExhausted, ""},
		{"stale version", func() error {
			_, err := admin.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{Service: svc("web", 81), ExpectedVersion: existing.Meta.Version + 7})
			return err
		}, codes.FailedPrecondition, ""},
		{"stale version delete", func() error {
			_, err := admin.Catalog.DeleteService(ctx, &meshfedv1.DeleteRequest{Name: "web", ExpectedVersion: existing.Meta.Version + 7})
			return err
		}, codes.FailedPrecondition, ""},
		{"create existing", func() error {
			_, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("web", 81)})
			return err
		}, codes.AlreadyExists, ""},
		{"update missing", func() error {
			_, err := admin.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{Service: svc("ghost", 81)})
			return err
		}, codes.NotFound, ""},
		{"page too large", func() error {
			_, err := admin.Catalog.ListServices(ctx, &meshfedv1.ListRequest{Page: &meshfedv1.PageRequest{PageSize: 5000}})
			return err
		}, codes.InvalidArgument, "page.page_size"},
		{"bad page token", func() error {
			_, err := admin.Catalog.ListServices(ctx, &meshfedv1.ListRequest{Page: &meshfedv1.PageRequest{PageToken: "%%%"}})
			return err
		}, codes.InvalidArgument, "page.page_token"},
		{"unauthenticated write", func() error {
			_, err := anon.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("anon", 80)})
			return err
		}, codes.Unauthenticated, ""},
		{"unauthenticated read", func() error {
			_, err := anon.Catalog.ListServices(ctx, &meshfedv1.ListRequest{})
			return err
		}, codes.Unauthenticated, ""},
		{"forged token", func() error {
			_, err := forged.Catalog.ListServices(ctx, &meshfedv1.ListRequest{})
			return err
		}, codes.Unauthenticated, ""},
		{"read token writes", func() error {
			_, err := reader.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("ro", 80)})
			return err
		}, codes.PermissionDenied, ""},
		{"read token deletes", func() error {
			_, err := reader.Catalog.DeleteService(ctx, &meshfedv1.DeleteRequest{Name: "web"})
			return err
		}, codes.PermissionDenied, ""},
		{"read token creates tokens", func() error {
			_, err := reader.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{Kind: meshfedv1.TokenKind_TOKEN_KIND_ADMIN})
			return err
		}, codes.PermissionDenied, ""},
		{"read token saves snapshot", func() error {
			st, err := reader.Cluster.SaveSnapshot(ctx, &meshfedv1.SaveSnapshotRequest{})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}, codes.PermissionDenied, ""},
		{"read token reads", func() error {
			_, err := reader.Catalog.GetService(ctx, &meshfedv1.GetRequest{Name: "web"})
			return err
		}, codes.OK, ""},
	}
	before := fingerprint(t, admin)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if got := status.Code(err); got != tc.code {
				t.Fatalf("got %v (%v), want %v", got, err, tc.code)
			}
			if tc.field != "" && !strings.Contains(status.Convert(err).Message(), tc.field) {
				t.Fatalf("message %q does not name %q", status.Convert(err).Message(), tc.field)
			}
			if after := fingerprint(t, admin); after != before {
				t.Fatalf("state changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}
