package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/testharness"
)

// TestFederationThroughTheCLI peers two clusters of real server processes
// with the commands an operator types, exports a service from west and
// resolves it in east.
func TestFederationThroughTheCLI(t *testing.T) {
	east := testharness.StartCluster(t, 1, testharness.ClusterOptions{Name: "east", LogLevel: "info"})
	west := testharness.StartCluster(t, 1, testharness.ClusterOptions{Name: "west", LogLevel: "info"})
	run := func(c *testharness.Cluster, args ...string) string {
		t.Helper()
		out, errOut, err := c.RunCLI(t, args...)
		if err != nil {
			t.Fatalf("meshfed %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}

	token := strings.TrimSpace(run(east, "peering", "token", "--peer", "west"))
	if !strings.HasPrefix(token, "mfpeer1.") {
		t.Fatalf("peering token prints %q", token)
	}
	run(west, "peering", "establish", "--peer", "east", "--token", token)
	// The same token cannot be used twice.
	if _, _, err := west.RunCLI(t, "peering", "establish", "--peer", "east2", "--token", token); err == nil {
		t.Fatal("a second establish with the same token succeeded")
	}

	run(west, "services", "register", "payments", "--port", "8443", "--protocol", "http")
	run(west, "exports", "set", "payments", "--to", "east")

	type cluster struct {
		Cluster   string `json:"cluster"`
		Peer      string `json:"peer"`
		Endpoints []any  `json:"endpoints"`
	}
	var resolved struct {
		Clusters []cluster `json:"clusters"`
	}
	if err := testharness.Poll(30*time.Second, func() error {
		out, errOut, err := east.RunCLI(t, "services", "resolve", "payments", "-o", "json")
		if err != nil {
			return fmt.Errorf("%v: %s", err, errOut)
		}
		if err := json.Unmarshal([]byte(out), &resolved); err != nil {
			return err
		}
		if len(resolved.Clusters) != 1 || resolved.Clusters[0].Cluster != "west" || resolved.Clusters[0].Peer != "west" {
			return fmt.Errorf("resolve payments: %s", out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	list := run(east, "peering", "list")
	if !strings.Contains(list, "west") || !strings.Contains(list, "active") {
		t.Fatalf("peering list on east:\n%s", list)
	}
	all := run(east, "services", "list", "--all-clusters")
	if !strings.Contains(all, "payments") || !strings.Contains(all, "west") {
		t.Fatalf("services list --all-clusters on east:\n%s", all)
	}
	exports := run(west, "exports", "list")
	if !strings.Contains(exports, "payments") || !strings.Contains(exports, "east") {
		t.Fatalf("exports list on west:\n%s", exports)
	}

	run(west, "exports", "delete", "payments")
	if err := testharness.Poll(30*time.Second, func() error {
		_, _, err := east.RunCLI(t, "services", "resolve", "payments")
		if err == nil {
			return fmt.Errorf("payments still resolves in east")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	run(east, "peering", "delete", "west")
	if err := testharness.Poll(30*time.Second, func() error {
		if out := run(west, "peering", "list", "-o", "json"); strings.Contains(out, `"east"`) {
			return fmt.Errorf("west still lists the peering: %s", out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
