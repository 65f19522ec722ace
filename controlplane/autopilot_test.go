package controlplane

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func raftServers(t *testing.T, ts *testServer) map[raft.ServerID]bool {
	t.Helper()
	f := ts.srv.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	out := map[raft.ServerID]bool{}
	for _, s := range f.Configuration().Servers {
		out[s.ID] = true
	}
	return out
}

func TestDeadServerIsRemovedAndRejoinsWithItsCertificate(t *testing.T) {
	// A short cleanup delay for every server so the test runs in seconds.
	c := startTestClusterWith(t, 3, func(cfg *Config) { cfg.DeadServerCleanup = 2 * time.Second })
	dead := c.follower(t)
	dead.stop()
	leader := c.leader(t)
	deadline := time.Now().Add(45 * time.Second)
	for raftServers(t, leader)[raft.ServerID(dead.cfg.NodeID)] {
		if time.Now().After(deadline) {
			t.Fatal("autopilot did not remove the dead server")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(raftServers(t, leader)); n != 2 {
		t.Fatalf("%d voters after cleanup, want 2", n)
	}
	// Its record goes too, so members no longer lists it.
	for {
		m, err := c.client(t, leader).Cluster.ListMembers(context.Background(), &meshfedv1.ListMembersRequest{})
		if err == nil && len(m.Members) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("members after cleanup: %v %v", m, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The removed server comes back with only its data dir: it rejoins with
	// its own certificate, no token.
	// Without --join: it finds the cluster through the peers it remembered.
	cfg := dead.cfg
	cfg.JoinAddrs, cfg.JoinToken, cfg.CAFile = nil, "", ""
	back := startServer(t, cfg)
	c.servers = replace(c.servers, dead, back)
	deadline = time.Now().Add(60 * time.Second)
	for !raftServers(t, c.leader(t))[raft.ServerID(dead.cfg.NodeID)] {
		if time.Now().After(deadline) {
			t.Fatal("removed server did not rejoin")
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitReady(t, back, 30*time.Second)
	// It stays: autopilot must not count it as failed from before its
	// removal. Watch for longer than the cleanup delay plus a reconcile.
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if !raftServers(t, c.leader(t))[raft.ServerID(dead.cfg.NodeID)] {
			t.Fatal("the rejoined server was removed again")
		}
	}
	if _, err := c.client(t, back).Catalog.CreateService(context.Background(), &meshfedv1.CreateServiceRequest{Service: svc("after-rejoin", 80)}); err != nil {
		t.Fatalf("write through the rejoined server: %v", err)
	}
}
