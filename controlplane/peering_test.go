package controlplane

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

// startNamedCluster starts n servers of cluster name (trust domain
// <name>.mesh) with short peer timings.
func startNamedCluster(t *testing.T, name string, n int) *testCluster {
	t.Helper()
	return startTestClusterWith(t, n, func(cfg *Config) {
		cfg.Cluster, cfg.TrustDomain = name, name+".mesh"
		cfg.peerHeartbeat, cfg.peerBackoff = 300*time.Millisecond, 100*time.Millisecond
	})
}

// peerClusters makes acceptor issue a token for dialer and dialer establish with
// it; both sides name the other by its cluster name.
func peerClusters(t *testing.T, acceptor, dialer *testCluster, acceptorName, dialerName string) {
	t.Helper()
	ctx := context.Background()
	tok, err := acceptor.client(t, acceptor.servers[0]).Peering.GeneratePeeringToken(ctx, &meshfedv1.GeneratePeeringTokenRequest{Peer: dialerName})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dialer.client(t, dialer.servers[0]).Peering.EstablishPeering(ctx, &meshfedv1.EstablishPeeringRequest{Peer: acceptorName, Token: tok.GetToken()}); err != nil {
		t.Fatal(err)
	}
	waitPeering(t, acceptor, dialerName, meshfedv1.PeeringState_PEERING_STATE_ACTIVE)
	waitPeering(t, dialer, acceptorName, meshfedv1.PeeringState_PEERING_STATE_ACTIVE)
}

func waitPeering(t *testing.T, c *testCluster, name string, want meshfedv1.PeeringState) *meshfedv1.Peering {
	t.Helper()
	var last *meshfedv1.Peering
	err := poll(20*time.Second, func() error {
		p, err := c.client(t, c.leader(t)).Peering.GetPeering(context.Background(), &meshfedv1.GetRequest{Name: name})
		if err != nil {
			return err
		}
		last = p
		if p.GetState() != want {
			return fmt.Errorf("peering %s is %v (last error %q), want %v", name, p.GetState(), p.GetLastError(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return last
}

// poll calls cond until it returns nil or timeout passes.
func poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func registerService(t *testing.T, cl *client.Client, name string, addrs ...string) {
	t.Helper()
	ctx := context.Background()
	if _, err := cl.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{AllowMissing: true, Service: &meshfedv1.Service{
		Meta: &meshfedv1.Meta{Namespace: "default", Name: name}, Port: 8080, Protocol: meshfedv1.Protocol_PROTOCOL_HTTP}}); err != nil {
		t.Fatal(err)
	}
	for i, a := range addrs {
		if _, err := cl.Catalog.UpdateWorkload(ctx, &meshfedv1.UpdateWorkloadRequest{AllowMissing: true, Workload: &meshfedv1.Workload{
			Meta: &meshfedv1.Meta{Namespace: "default", Name: fmt.Sprintf("%s-%d", name, i)}, Service: name,
			Address: a, Port: 15006, Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY}}); err != nil {
			t.Fatal(err)
		}
	}
}

// importsOf returns the services c imports, by "namespace/name", with their
// endpoint addresses.
func importsOf(t *testing.T, c *testCluster) map[string][]string {
	t.Helper()
	resp, err := c.client(t, c.leader(t)).Peering.ListImportedServices(context.Background(), &meshfedv1.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, s := range resp.GetServices() {
		key := s.GetMeta().GetNamespace() + "/" + s.GetMeta().GetName()
		out[key] = []string{}
		for _, e := range s.GetEndpoints() {
			out[key] = append(out[key], e.GetAddress())
		}
	}
	return out
}

func waitImports(t *testing.T, c *testCluster, want map[string][]string) {
	t.Helper()
	err := poll(20*time.Second, func() error {
		got := importsOf(t, c)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("imports %v, want %v", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPeeringExportImport(t *testing.T) {
	east := startNamedCluster(t, "east", 1)
	west := startNamedCluster(t, "west", 1)
	ctx := context.Background()
	peerClusters(t, east, west, "east", "west")

	wc := west.client(t, west.servers[0])
	registerService(t, wc, "payments", "10.0.0.1")
	registerService(t, wc, "internal", "10.0.0.9")
	if _, err := wc.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
		Meta: &meshfedv1.Meta{Namespace: "default", Name: "payments"}, Peers: []string{"east"}}}); err != nil {
		t.Fatal(err)
	}
	waitImports(t, east, map[string][]string{"default/west.payments": {"10.0.0.1"}})

	// An endpoint change reaches east.
	registerService(t, wc, "payments", "10.0.0.1", "10.0.0.2")
	waitImports(t, east, map[string][]string{"default/west.payments": {"10.0.0.1", "10.0.0.2"}})

	// Exports flow the other way too.
	ec := east.client(t, east.servers[0])
	registerService(t, ec, "web", "10.1.0.1")
	if _, err := ec.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
		Meta: &meshfedv1.Meta{Namespace: "default", Name: "web"}, Peers: []string{"west"}}}); err != nil {
		t.Fatal(err)
	}
	waitImports(t, west, map[string][]string{"default/east.web": {"10.1.0.1"}})

	// Unexporting removes it.
	if _, err := wc.Peering.DeleteServiceExport(ctx, &meshfedv1.DeleteRequest{Namespace: "default", Name: "payments"}); err != nil {
		t.Fatal(err)
	}
	waitImports(t, east, map[string][]string{})

	// Exporting to a peering that does not exist is refused.
	_, err := wc.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
		Meta: &meshfedv1.Meta{Namespace: "default", Name: "payments"}, Peers: []string{"nowhere"}}})
	wantCode(t, err, codes.FailedPrecondition)
}
