package controlplane

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"google.golang.org/protobuf/types/known/durationpb"

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

func TestTokenUpdateAndRevocationRules(t *testing.T) {
	c := startTestCluster(t, 1)
	ctx := context.Background()
	cl := c.client(t, c.servers[0])
	who, err := cl.Tokens.WhoAmI(ctx, &meshfedv1.WhoAmIRequest{})
	if err != nil || who.Token.Kind != meshfedv1.TokenKind_TOKEN_KIND_ADMIN || len(who.Token.SecretHash) != 0 {
		t.Fatalf("whoami: %v %v", who, err)
	}
	// The only admin token cannot be revoked.
	if _, err := cl.Tokens.DeleteToken(ctx, &meshfedv1.DeleteRequest{Name: who.Token.Meta.Name}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("revoking the last admin token: %v", err)
	}
	// An update without expire_time keeps the expiry.
	rt, err := cl.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{Kind: meshfedv1.TokenKind_TOKEN_KIND_READ, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	upd, err := cl.Tokens.UpdateToken(ctx, &meshfedv1.UpdateTokenRequest{Token: &meshfedv1.Token{Meta: &meshfedv1.Meta{Name: rt.Meta.Name}, Description: "renamed"}})
	if err != nil || upd.Description != "renamed" || !upd.ExpireTime.AsTime().Equal(rt.ExpireTime.AsTime()) || upd.Secret != "" || upd.SecretHash != nil {
		t.Fatalf("update: %v %v", upd, err)
	}
	// A second admin token makes the first revocable; the revoked one stops working.
	second, err := cl.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{Kind: meshfedv1.TokenKind_TOKEN_KIND_ADMIN})
	if err != nil {
		t.Fatal(err)
	}
	cl2 := c.clientWithToken(t, c.servers[0], second.Secret)
	if _, err := cl2.Tokens.DeleteToken(ctx, &meshfedv1.DeleteRequest{Name: who.Token.Meta.Name}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Catalog.ListServices(ctx, &meshfedv1.ListRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("revoked token: %v", err)
	}
	// Expired tokens are refused.
	short, err := cl2.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{Kind: meshfedv1.TokenKind_TOKEN_KIND_READ, Ttl: durationpb.New(time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	expired := c.clientWithToken(t, c.servers[0], short.Secret)
	for deadline := time.Now().Add(5 * time.Second); ; {
		_, err := expired.Catalog.ListServices(ctx, &meshfedv1.ListRequest{})
		if status.Code(err) == codes.Unauthenticated && strings.Contains(err.Error(), "expired") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("expired token: %v", err)
		}
	}
}
