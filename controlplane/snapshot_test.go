package controlplane

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

func saveSnapshot(t *testing.T, cl *client.Client) []byte {
	t.Helper()
	st, err := cl.Cluster.SaveSnapshot(context.Background(), &meshfedv1.SaveSnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for {
		c, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return buf.Bytes()
		}
		if err != nil {
			t.Fatalf("saving snapshot: %v", err)
		}
		buf.Write(c.Data)
	}
}

func restoreSnapshot(cl *client.Client, data []byte) error {
	st, err := cl.Cluster.RestoreSnapshot(context.Background())
	if err != nil {
		return err
	}
	for off := 0; off < len(data); off += 1000 {
		if err := st.Send(&meshfedv1.SnapshotChunk{Data: data[off:min(off+1000, len(data))]}); err != nil {
			return err
		}
	}
	_, err = st.CloseAndRecv()
	return err
}

func populate(t *testing.T, cl *client.Client) {
	t.Helper()
	ctx := context.Background()
	for _, name := range []string{"web", "api", "db"} {
		if _, err := cl.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc(name, 8080)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{Service: svc("api", 9090)}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Catalog.CreateWorkload(ctx, &meshfedv1.CreateWorkloadRequest{Workload: &meshfedv1.Workload{
		Meta: &meshfedv1.Meta{Name: "web-1", Namespace: "default"}, Service: "web", Address: "10.1.0.5", Port: 15443}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Policy.CreateAuthorizationPolicy(ctx, &meshfedv1.CreateAuthorizationPolicyRequest{Policy: &meshfedv1.AuthorizationPolicy{
		Meta: &meshfedv1.Meta{Name: "web-from-api"}, Destination: "web", Action: meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_ALLOW,
		Rules: []*meshfedv1.AuthorizationRule{{Principals: []string{"spiffe://test.mesh/ns/default/sa/api"}}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Policy.CreateTrafficPolicy(ctx, &meshfedv1.CreateTrafficPolicyRequest{Policy: &meshfedv1.TrafficPolicy{
		Meta: &meshfedv1.Meta{Name: "web"}, Destination: "web", Retries: &meshfedv1.RetryPolicy{Attempts: 3}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Mesh.UpdateMeshSettings(ctx, &meshfedv1.UpdateMeshSettingsRequest{Settings: &meshfedv1.MeshSettings{AccessLogs: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{Kind: meshfedv1.TokenKind_TOKEN_KIND_READ, Description: "dashboards"}); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotSaveWipeRestore(t *testing.T) {
	a := startTestCluster(t, 3)
	admin := a.client(t, a.leader(t))
	populate(t, admin)
	want := fingerprint(t, admin)
	data := saveSnapshot(t, a.client(t, a.follower(t)))

	// Lose everything: stop every server and wipe every data dir.
	for _, ts := range a.servers {
		ts.stop()
		if err := os.RemoveAll(ts.cfg.DataDir); err != nil {
			t.Fatal(err)
		}
	}

	b := startTestCluster(t, 3)
	fresh := b.client(t, b.follower(t))
	if err := restoreSnapshot(fresh, []byte("garbage")); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("restoring garbage: %v", err)
	}
	if err := restoreSnapshot(fresh, data[:len(data)/2]); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("restoring a truncated snapshot: %v", err)
	}
	if err := restoreSnapshot(fresh, data); err != nil {
		t.Fatalf("restore: %v", err)
	}
	// The restored state includes the tokens of the saved cluster: the old
	// admin token works again, the new cluster's does not.
	old := b.clientWithToken(t, b.leader(t), a.token)
	if got := fingerprint(t, old); got != want {
		t.Fatalf("restored state differs:\nwant:\n%s\ngot:\n%s", want, got)
	}
	if _, err := b.client(t, b.leader(t)).Catalog.ListServices(context.Background(), &meshfedv1.ListRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("token of the replaced state: %v", err)
	}
	// Writes continue after the restore, with versions above the restored ones.
	s, err := old.Catalog.CreateService(context.Background(), &meshfedv1.CreateServiceRequest{Service: svc("after", 80)})
	if err != nil {
		t.Fatal(err)
	}
	api, err := old.Catalog.GetService(context.Background(), &meshfedv1.GetRequest{Name: "api"})
	if err != nil || s.Meta.Version <= api.Meta.Version {
		t.Fatalf("version after restore %d not above restored %d (%v)", s.Meta.Version, api.GetMeta().GetVersion(), err)
	}
}

func TestSnapshotOfAnotherClusterIsRefused(t *testing.T) {
	a := startTestCluster(t, 1)
	data := saveSnapshot(t, a.client(t, a.servers[0]))
	cfg := testConfig(t, "x1")
	cfg.Cluster = "other"
	cfg.Bootstrap = true
	other := startServer(t, cfg)
	waitReady(t, other, 30*time.Second)
	tok, _ := os.ReadFile(cfg.DataDir + "/admin.token")
	pem, _ := os.ReadFile(cfg.DataDir + "/ca.pem")
	cl, err := client.New(client.Config{Addr: cfg.APIAddr, Token: string(bytes.TrimSpace(tok)), CAPEM: pem})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := restoreSnapshot(cl, data); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("restore of another cluster's snapshot: %v", err)
	}
}
