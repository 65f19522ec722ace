package controlplane

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// TestWatchResolveMany follows several services on one stream: the first
// messages carry all of them, later ones only what changed.
func TestWatchResolveMany(t *testing.T) {
	c := startTestCluster(t, 1)
	admin := c.client(t, c.servers[0])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := func(name string) {
		t.Helper()
		if _, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: &meshfedv1.Service{
			Meta: &meshfedv1.Meta{Name: name}, Port: 8080, Protocol: meshfedv1.Protocol_PROTOCOL_HTTP}}); err != nil {
			t.Fatal(err)
		}
	}
	wl := func(name, service, addr string) {
		t.Helper()
		if _, err := admin.Catalog.CreateWorkload(ctx, &meshfedv1.CreateWorkloadRequest{Workload: &meshfedv1.Workload{
			Meta: &meshfedv1.Meta{Name: name}, Service: service, Address: addr, Port: 15443,
			Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY}}); err != nil {
			t.Fatal(err)
		}
	}
	svc("a")
	svc("b")
	svc("c")
	wl("a-1", "a", "10.0.0.1")

	// Bad requests.
	for _, tc := range []struct {
		req  *meshfedv1.WatchResolveManyRequest
		want string
	}{
		{&meshfedv1.WatchResolveManyRequest{}, "want 1 to 10000 services"},
		{&meshfedv1.WatchResolveManyRequest{Services: []*meshfedv1.ServiceRef{{Name: "a"}, {Name: "B"}}}, "services[1].name"},
		{&meshfedv1.WatchResolveManyRequest{Services: []*meshfedv1.ServiceRef{{Name: "a", Namespace: "x_y"}}}, "services[0].namespace"},
		{&meshfedv1.WatchResolveManyRequest{Services: make([]*meshfedv1.ServiceRef, 10001)}, "want 1 to 10000 services"},
	} {
		st, err := admin.Catalog.WatchResolveMany(ctx, tc.req)
		if err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("WatchResolveMany(%d services): %v, want InvalidArgument naming %q", len(tc.req.GetServices()), err, tc.want)
		}
	}

	st, err := admin.Catalog.WatchResolveMany(ctx, &meshfedv1.WatchResolveManyRequest{Services: []*meshfedv1.ServiceRef{
		{Name: "a"}, {Name: "b", Namespace: "default"}, {Name: "missing"}, {Name: "a", Namespace: "default"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	recv := func() map[string]*meshfedv1.ResolveResponse {
		t.Helper()
		m, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*meshfedv1.ResolveResponse{}
		for _, r := range m.GetResolutions() {
			out[r.GetNamespace()+"/"+r.GetName()] = r.GetResolution()
		}
		return out
	}
	endpoints := func(r *meshfedv1.ResolveResponse) []string {
		var out []string
		for _, cl := range r.GetClusters() {
			for _, e := range cl.GetEndpoints() {
				out = append(out, e.GetAddress())
			}
		}
		slices.Sort(out)
		return out
	}
	first := recv()
	if len(first) != 3 {
		t.Fatalf("first message: %d resolutions, want a, b and missing once each: %v", len(first), first)
	}
	if got := endpoints(first["default/a"]); !slices.Equal(got, []string{"10.0.0.1"}) {
		t.Fatalf("a resolves to %v", got)
	}
	if first["default/b"].GetService().GetMeta().GetName() != "b" || len(endpoints(first["default/b"])) != 0 {
		t.Fatalf("b: %v", first["default/b"])
	}
	if first["default/missing"] == nil || first["default/missing"].GetService() != nil {
		t.Fatalf("missing: %v", first["default/missing"])
	}

	// A change to b sends b alone.
	wl("b-1", "b", "10.0.0.2")
	next := recv()
	if len(next) != 1 || !slices.Equal(endpoints(next["default/b"]), []string{"10.0.0.2"}) {
		t.Fatalf("after b-1: %v", next)
	}
	// Changes to an unwatched service send nothing; the next message is
	// about a.
	wl("c-1", "c", "10.0.0.3")
	wl("a-2", "a", "10.0.0.4")
	next = recv()
	if len(next) != 1 || !slices.Equal(endpoints(next["default/a"]), []string{"10.0.0.1", "10.0.0.4"}) {
		t.Fatalf("after a-2: %v", next)
	}
	// A service that appears is sent.
	svc("missing")
	next = recv()
	if len(next) != 1 || next["default/missing"].GetService().GetMeta().GetName() != "missing" {
		t.Fatalf("after creating missing: %v", next)
	}
}
