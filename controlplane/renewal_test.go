package controlplane

import (
	"context"
	"testing"
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

func activeIntermediate(t *testing.T, ts *testServer) string {
	t.Helper()
	_, items, _, err := ts.srv.store().List(nil, listAll(meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY))
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		a := it.(*meshfedv1.StoredAuthority)
		if a.Authority.State == meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE {
			return a.Authority.IntermediatePem
		}
	}
	t.Fatal("no active authority")
	return ""
}

// TestIntermediateRenewsAndClusterOutlivesIt runs a cluster whose
// intermediate lives 8 seconds: the leader renews it at half life, servers
// renew their certificates under the new one, and the cluster keeps
// working after the first intermediate has expired.
func TestIntermediateRenewsAndClusterOutlivesIt(t *testing.T) {
	c := startTestClusterWith(t, 3, func(cfg *Config) { cfg.intermediateTTL = 8 * time.Second })
	first := activeIntermediate(t, c.leader(t))
	certs, err := tlsutil.ParseCertificatesPEM([]byte(first))
	if err != nil {
		t.Fatal(err)
	}
	expiry := certs[0].NotAfter
	deadline := time.Now().Add(30 * time.Second)
	for activeIntermediate(t, c.leader(t)) == first {
		if time.Now().After(deadline) {
			t.Fatal("intermediate not renewed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Wait until the first intermediate has expired, writing through a
	// follower all along: forwarding needs server certificates that verify.
	for i := 0; time.Now().Before(expiry.Add(2 * time.Second)); i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.client(t, c.follower(t)).Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{AllowMissing: true, Service: svc("renewal", uint32(1000+i%1000))})
		cancel()
		if err != nil {
			t.Fatalf("write %d while the intermediate renews: %v", i, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, ts := range c.servers {
		chain := ts.srv.tls.Certificate()
		if len(chain) < 2 || !time.Now().Before(chain[0].NotAfter) || !time.Now().Before(chain[1].NotAfter) {
			t.Fatalf("%s presents an expired chain", ts.cfg.NodeID)
		}
	}
}

// TestClusterReformsAfterEveryCertificateExpired stops a whole cluster for
// longer than its certificates and intermediate live; on restart every
// server re-issues its certificate from its own Raft log and the cluster
// forms again.
func TestClusterReformsAfterEveryCertificateExpired(t *testing.T) {
	c := startTestClusterWith(t, 3, func(cfg *Config) { cfg.intermediateTTL = 4 * time.Second })
	if _, err := c.client(t, c.leader(t)).Catalog.CreateService(context.Background(), &meshfedv1.CreateServiceRequest{Service: svc("kept", 80)}); err != nil {
		t.Fatal(err)
	}
	var latest time.Time
	for _, ts := range c.servers {
		ts.stop()
		chain, err := tlsutil.LoadCertificatesFile(ts.cfg.DataDir + "/server.crt")
		if err != nil {
			t.Fatal(err)
		}
		for _, cert := range chain {
			if cert.NotAfter.After(latest) {
				latest = cert.NotAfter
			}
		}
	}
	for time.Now().Before(latest.Add(time.Second)) {
		time.Sleep(100 * time.Millisecond)
	}
	var restarted []*testServer
	for _, ts := range c.servers {
		cfg := ts.cfg
		cfg.JoinAddrs, cfg.JoinToken = nil, ""
		restarted = append(restarted, startServer(t, cfg))
	}
	c.servers = restarted
	for _, ts := range restarted {
		waitReady(t, ts, 30*time.Second)
	}
	got, err := c.client(t, c.follower(t)).Catalog.GetService(context.Background(), &meshfedv1.GetRequest{Name: "kept", Read: &meshfedv1.ReadOptions{Consistent: true}})
	if err != nil || got.Port != 80 {
		t.Fatalf("after restart: %v %v", got, err)
	}
}
