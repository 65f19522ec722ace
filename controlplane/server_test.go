package controlplane

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func svc(name string, port uint32) *meshfedv1.Service {
	return &meshfedv1.Service{Meta: &meshfedv1.Meta{Name: name}, Port: port, Protocol: meshfedv1.Protocol_PROTOCOL_HTTP}
}

func TestThreeServersForwardAndCAS(t *testing.T) {
	c := startTestCluster(t, 3)
	ctx := context.Background()
	f := c.client(t, c.follower(t))

	created, err := f.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("payments", 8080)})
	if err != nil {
		t.Fatalf("create through follower: %v", err)
	}
	if created.Meta.Version == 0 || created.Meta.Version != created.Meta.CreateVersion {
		t.Fatalf("versions not set: %+v", created.Meta)
	}
	if created.Meta.Namespace != "default" || created.ServiceAccount != "payments" {
		t.Fatalf("not normalized: %+v", created)
	}
	// Stale expected version: FAILED_PRECONDITION and nothing changes.
	_, err = f.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{Service: svc("payments", 9090), ExpectedVersion: created.Meta.Version + 100})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("stale CAS: got %v", err)
	}
	got, err := f.Catalog.GetService(ctx, &meshfedv1.GetRequest{Name: "payments", Read: &meshfedv1.ReadOptions{Consistent: true}})
	if err != nil || got.Port != 8080 {
		t.Fatalf("after failed CAS: %v %v", got, err)
	}
	upd, err := f.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{Service: svc("payments", 9090), ExpectedVersion: created.Meta.Version})
	if err != nil || upd.Port != 9090 || upd.Meta.CreateVersion != created.Meta.CreateVersion || upd.Meta.Version <= created.Meta.Version {
		t.Fatalf("CAS update: %v %v", upd, err)
	}
	// A no-op update does not bump the version.
	same, err := f.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{Service: svc("payments", 9090)})
	if err != nil || same.Meta.Version != upd.Meta.Version {
		t.Fatalf("no-op update: %v %v", same, err)
	}
	_ = time.Second
}

func TestWorkloadIdentityDefaultsToItsService(t *testing.T) {
	c := startTestCluster(t, 1)
	ctx := context.Background()
	cl := c.client(t, c.servers[0])
	s := svc("cart", 80)
	s.ServiceAccount = "cart-sa"
	if _, err := cl.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: s}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ service, spiffeID, want string }{
		{"cart", "", "spiffe://test.mesh/ns/default/sa/cart-sa"},
		{"unregistered", "", "spiffe://test.mesh/ns/default/sa/unregistered"},
		{"cart", "spiffe://test.mesh/ns/default/sa/custom", "spiffe://test.mesh/ns/default/sa/custom"},
	} {
		w, err := cl.Catalog.UpdateWorkload(ctx, &meshfedv1.UpdateWorkloadRequest{AllowMissing: true, Workload: &meshfedv1.Workload{
			Meta: &meshfedv1.Meta{Name: tc.service + "-1"}, Service: tc.service, Address: "10.0.0.9", Port: 15443, SpiffeId: tc.spiffeID}})
		if err != nil {
			t.Fatal(err)
		}
		if w.SpiffeId != tc.want {
			t.Fatalf("%s: spiffe_id %q, want %q", tc.service, w.SpiffeId, tc.want)
		}
	}
}
