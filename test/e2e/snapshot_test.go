package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/testharness"
)

const authzPolicyYAML = `meta:
  name: web-from-api
  namespace: default
  labels: {team: platform}
destination: web
action: allow
rules:
- principals: ["spiffe://east.mesh/ns/default/sa/api"]
  methods: [GET, POST]
  paths: ["/v1/*"]
`

const trafficPolicyYAML = `meta:
  name: web
  namespace: default
destination: web
timeouts: {connect: 1s, request: 5s}
retries: {attempts: 3, perTryTimeout: 2s, retryOn: [connect-failure, 5xx]}
loadBalancer: LEAST_REQUEST
splits:
- {version: v1, weight: 90}
- {version: v2, weight: 10}
failover: [west]
`

// listing is one "-o json" listing compared before and after the restore.
type listing struct {
	name string
	args []string
	// items is the JSON field holding the resources ("" for a single
	// resource such as the mesh settings).
	items string
}

var listings = []listing{
	{"services", []string{"services", "list", "-o", "json"}, "services"},
	{"workloads", []string{"workloads", "list", "-o", "json"}, "workloads"},
	{"authz policies", []string{"policy", "authz", "list", "-o", "json"}, "policies"},
	{"traffic policies", []string{"policy", "traffic", "list", "-o", "json"}, "policies"},
	{"mesh settings", []string{"mesh", "get", "-o", "json"}, ""},
	{"tokens", []string{"tokens", "list", "-o", "json"}, "tokens"},
}

// resources extracts what a listing compares: the resource list (not the
// response's store index, which a restore moves forward), keyed by
// namespace/name, as raw JSON.
func resources(t *testing.T, l listing, out string) map[string]json.RawMessage {
	t.Helper()
	var doc map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%s: %v: %q", l.name, err, out)
	}
	items := []json.RawMessage{json.RawMessage(out)}
	if l.items != "" {
		items = nil
		if err := json.Unmarshal(doc[l.items], &items); err != nil {
			t.Fatalf("%s: field %q: %v: %q", l.name, l.items, err, out)
		}
	}
	byName := map[string]json.RawMessage{}
	for _, it := range items {
		var head struct {
			Meta struct {
				Name, Namespace, Version string
			} `json:"meta"`
		}
		if err := json.Unmarshal(it, &head); err != nil {
			t.Fatalf("%s: %v: %s", l.name, err, it)
		}
		if head.Meta.Version == "" || head.Meta.Version == "0" {
			t.Fatalf("%s: %s/%s has no version: %s", l.name, head.Meta.Namespace, head.Meta.Name, it)
		}
		byName[head.Meta.Namespace+"/"+head.Meta.Name] = it
	}
	return byName
}

// TestSnapshotRestoreAfterWipe: a snapshot saved with the CLI brings every
// resource back, with identical versions, into a new cluster built after
// every server and data dir of the old one was lost.
func TestSnapshotRestoreAfterWipe(t *testing.T) {
	skipShort(t)
	bin := testharness.Binary(t, "meshfed")
	a := testharness.StartCluster(t, 3, testharness.ClusterOptions{Name: "east"})
	la := a.Leader()
	fa := a.Followers()[0]
	dir := t.TempDir()
	authzFile := filepath.Join(dir, "authz.yaml")
	trafficFile := filepath.Join(dir, "traffic.yaml")
	for file, content := range map[string]string{authzFile: authzPolicyYAML, trafficFile: trafficPolicyYAML} {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Populate the cluster through the CLI, through the leader and a
	// follower alike.
	for _, args := range [][]string{
		{"services", "register", "web", "--port", "8080", "--protocol", "http", "--label", "tier=front"},
		{"services", "register", "api", "--namespace", "shop", "--port", "9000", "--protocol", "grpc", "--service-account", "api-sa"},
		{"services", "register", "db", "--port", "5432", "--protocol", "tcp"},
		{"services", "register", "web", "--port", "8081", "--protocol", "http", "--label", "tier=front"}, // a second version
		{"workloads", "register", "web-1", "--service", "web", "--address", "10.1.0.5", "--port", "15443", "--version", "v1", "--region", "eu-west", "--zone", "a"},
		{"workloads", "register", "web-2", "--service", "web", "--address", "10.1.0.6", "--port", "15443", "--version", "v2", "--health", "healthy"},
		{"policy", "authz", "apply", "-f", authzFile},
		{"policy", "traffic", "apply", "-f", trafficFile},
		{"mesh", "set", "--access-logs", "--trace-sampling", "0.25", "--default-action", "deny", "--region", "eu-west"},
	} {
		mustCLI(t, a, fa, args...)
	}
	readToken := strings.TrimSpace(mustCLI(t, a, la, "tokens", "create", "--kind", "read", "--description", "dashboards"))
	if readToken == "" {
		t.Fatal("tokens create printed no secret")
	}

	// What the old cluster holds, as the CLI lists it (consistent: through
	// the leader, which applied every write).
	before := map[string]map[string]json.RawMessage{}
	for _, l := range listings {
		before[l.name] = resources(t, l, mustCLI(t, a, la, l.args...))
	}
	for name, n := range map[string]int{"services": 3, "workloads": 2, "authz policies": 1, "traffic policies": 1, "mesh settings": 1} {
		if len(before[name]) != n {
			t.Fatalf("%s before the save: %d, want %d", name, len(before[name]), n)
		}
	}
	// bootstrap admin, two server-join tokens (s2, s3), the read token
	if len(before["tokens"]) != 4 {
		t.Fatalf("tokens before the save: %d, want 4: %v", len(before["tokens"]), before["tokens"])
	}

	snap := filepath.Join(dir, "backup.snap")
	var saved struct {
		File  string `json:"file"`
		Bytes int64  `json:"bytes"`
	}
	if err := json.Unmarshal([]byte(mustCLI(t, a, fa, "snapshot", "save", snap, "-o", "json")), &saved); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(snap); err != nil || fi.Size() == 0 || fi.Size() != saved.Bytes {
		t.Fatalf("snapshot file: %v, %v; reported %d bytes", fi, err, saved.Bytes)
	}
	oldAdmin := a.AdminToken
	for _, s := range a.Servers {
		t.Logf("old cluster: %s api %s raft %s", s.NodeID, s.APIAddr, s.RaftAddr)
	}

	// Lose everything. The harness prints a server's log from its data dir
	// when a test fails; keep the old servers' logs before the wipe.
	for _, s := range a.Servers {
		if err := s.Stop(); err != nil {
			t.Fatalf("stopping %s: %v", s.NodeID, err)
		}
		node, log := s.NodeID, s.Log()
		if len(log) > 64<<10 {
			log = "...\n" + log[len(log)-64<<10:]
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("=== stderr of old-cluster server %s (data dir wiped) ===\n%s=== end of old-cluster server %s ===", node, log, node)
			}
		})
		if err := os.RemoveAll(s.DataDir); err != nil {
			t.Fatal(err)
		}
	}

	// A new cluster: same name and node IDs, new CA and admin token.
	b := testharness.StartCluster(t, 3, testharness.ClusterOptions{Name: "east"})
	if b.AdminToken == oldAdmin {
		t.Fatal("the new cluster has the old admin token")
	}
	lb := b.Leader()
	fb := b.Followers()[0]
	for _, s := range b.Servers {
		t.Logf("new cluster: %s api %s raft %s", s.NodeID, s.APIAddr, s.RaftAddr)
	}
	for _, l := range listings[:1] {
		if got := resources(t, l, mustCLI(t, b, lb, l.args...)); len(got) != 0 {
			t.Fatalf("the new cluster already has %s: %v", l.name, got)
		}
	}
	var restored struct {
		Index string `json:"index"`
	}
	if err := json.Unmarshal([]byte(mustCLI(t, b, fb, "snapshot", "restore", snap, "-o", "json")), &restored); err != nil {
		t.Fatal(err)
	}
	t.Logf("restored through follower %s; index %s", fb.NodeID, restored.Index)

	// The restored tokens replace the new ones: the new admin token is
	// refused, the old one and the old read token work.
	r := runCLI(bin, b, lb, callTimeout, "services", "list")
	if testharness.ExitCode(r.Err) != 1 || !strings.Contains(r.Stderr, "UNAUTHENTICATED") {
		t.Errorf("the new cluster's admin token after the restore: %s, want UNAUTHENTICATED", r)
	}
	if r := runCLI(bin, b, lb, callTimeout, "--token", readToken, "services", "list"); r.Err != nil {
		t.Errorf("the restored read token: %s", r)
	}

	// Every resource is back, identical, on every server (followers
	// install the snapshot from the leader: poll).
	for _, s := range b.Servers {
		for _, l := range listings {
			var last string
			err := testharness.Poll(waitTimeout, func() error {
				r := runCLI(bin, b, s, callTimeout, append([]string{"--token", oldAdmin}, l.args...)...)
				if r.Err != nil {
					return fmt.Errorf("%s", r)
				}
				last = r.Stdout
				got := resources(t, l, r.Stdout)
				return compareResources(before[l.name], got)
			})
			if err != nil {
				t.Errorf("%s on %s after the restore: %v\nlisting: %s", l.name, s.NodeID, err, last)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// The restored cluster keeps working. The restore replaced the server
	// records (API addresses) with the old cluster's; the servers must
	// register their current addresses again: members shows them, and a
	// write through each server (followers forward to the leader's
	// address) is stored above the restored versions.
	want := map[string]string{}
	for _, s := range b.Servers {
		want[s.NodeID] = s.APIAddr
	}
	err := testharness.Poll(waitTimeout, func() error {
		r := runCLI(bin, b, lb, callTimeout, "--token", oldAdmin, "members", "-o", "json")
		if r.Err != nil {
			return fmt.Errorf("%s", r)
		}
		var members meshfedv1.ListMembersResponse
		if err := protojson.Unmarshal([]byte(r.Stdout), &members); err != nil {
			return err
		}
		got := map[string]string{}
		for _, m := range members.GetMembers() {
			got[m.GetNodeId()] = m.GetApiAddr()
		}
		if !maps.Equal(got, want) {
			return fmt.Errorf("members report API addresses %v, the servers listen on %v", got, want)
		}
		return nil
	})
	if err != nil {
		t.Errorf("after the restore: %v", err)
	}
	var web meshfedv1.Service
	unmarshalJSON(t, mustCLI(t, b, lb, "--token", oldAdmin, "services", "get", "web", "--consistent", "-o", "json"), &web)
	for _, s := range b.Servers {
		role := "follower"
		if s == lb {
			role = "leader"
		}
		r := runCLI(bin, b, s, callTimeout, "--token", oldAdmin, "services", "register", "after-restore-"+s.NodeID, "--port", "80", "--protocol", "http", "-o", "json")
		if r.Err != nil {
			t.Errorf("write after the restore via %s %s: %s", role, s.NodeID, r)
			continue
		}
		var svc meshfedv1.Service
		unmarshalJSON(t, r.Stdout, &svc)
		if svc.GetMeta().GetVersion() <= web.GetMeta().GetVersion() {
			t.Errorf("write via %s: version %d after the restore is not above the restored %d", s.NodeID, svc.GetMeta().GetVersion(), web.GetMeta().GetVersion())
		}
	}
}

// compareResources compares two listings resource by resource and field by
// field.
func compareResources(want, got map[string]json.RawMessage) error {
	var diffs []string
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			diffs = append(diffs, k+": missing")
			continue
		}
		d, err := jsonDiff(w, g)
		if err != nil {
			return err
		}
		for _, x := range d {
			diffs = append(diffs, k+": "+x)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, k+": unexpected")
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("%d differences: %s", len(diffs), strings.Join(diffs, "; "))
	}
	return nil
}
