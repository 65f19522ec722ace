package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/testharness"
)

func TestMain(m *testing.M) { os.Exit(testharness.Main(m)) }

// TestE2EDevCluster drives the built meshfed binary against a real
// one-server cluster started the way an operator would (--dev --bootstrap).
func TestE2EDevCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real server")
	}
	c := testharness.StartCluster(t, 1, testharness.ClusterOptions{Name: "dev", Dev: true})

	mustRun := func(t *testing.T, args ...string) string {
		t.Helper()
		stdout, stderr, err := c.RunCLI(t, args...)
		if err != nil {
			t.Fatalf("meshfed %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout, stderr)
		}
		return stdout
	}

	t.Run("status", func(t *testing.T) {
		var st meshfedv1.ClusterStatus
		if err := protojson.Unmarshal([]byte(mustRun(t, "status", "-o", "json")), &st); err != nil {
			t.Fatal(err)
		}
		if st.GetCluster() != "dev" || st.GetTrustDomain() != "dev.mesh" || st.GetLeaderId() != "s1" {
			t.Errorf("status %v", &st)
		}
	})

	t.Run("services register and list", func(t *testing.T) {
		out := mustRun(t, "services", "register", "web", "--namespace", "default", "--port", "8080", "--protocol", "http", "--label", "tier=front")
		if !strings.HasPrefix(out, "Registered service default/web") {
			t.Errorf("register printed %q", out)
		}
		var list meshfedv1.ListServicesResponse
		if err := protojson.Unmarshal([]byte(mustRun(t, "services", "list", "-o", "json")), &list); err != nil {
			t.Fatal(err)
		}
		if len(list.GetServices()) != 1 {
			t.Fatalf("services %v", list.GetServices())
		}
		s := list.GetServices()[0]
		if s.GetMeta().GetName() != "web" || s.GetPort() != 8080 || s.GetProtocol() != meshfedv1.Protocol_PROTOCOL_HTTP ||
			s.GetMeta().GetLabels()["tier"] != "front" || s.GetServiceAccount() != "web" || s.GetMeta().GetVersion() == 0 {
			t.Errorf("service %v", s)
		}
		table := mustRun(t, "services", "list")
		if !strings.Contains(table, "NAME") || !strings.Contains(table, "web") {
			t.Errorf("table %q", table)
		}
	})

	t.Run("policy authz apply", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "allow.yaml")
		if err := os.WriteFile(file, []byte(`meta:
  name: allow-frontend
  namespace: default
destination: web
action: allow
rules:
- principals: ["spiffe://dev.mesh/ns/default/sa/frontend"]
  methods: [GET]
  paths: ["/api/*"]
`), 0o600); err != nil {
			t.Fatal(err)
		}
		mustRun(t, "policy", "authz", "apply", "-f", file)
		var p meshfedv1.AuthorizationPolicy
		if err := protojson.Unmarshal([]byte(mustRun(t, "policy", "authz", "get", "allow-frontend", "-o", "json")), &p); err != nil {
			t.Fatal(err)
		}
		if p.GetDestination() != "web" || p.GetAction() != meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_ALLOW ||
			len(p.GetRules()) != 1 || p.GetRules()[0].GetPaths()[0] != "/api/*" {
			t.Errorf("policy %v", &p)
		}
		// Applying again replaces, it does not fail.
		mustRun(t, "policy", "authz", "apply", "-f", file)
	})

	t.Run("read token cannot write", func(t *testing.T) {
		secret := strings.TrimSpace(mustRun(t, "tokens", "create", "--kind", "read", "--description", "e2e"))
		if secret == "" || strings.ContainsAny(secret, " \n") {
			t.Fatalf("tokens create printed %q, want only the secret", secret)
		}
		// Reading works with it...
		if _, stderr, err := c.RunCLI(t, "--token", secret, "services", "list"); err != nil {
			t.Fatalf("read with a read token: %v: %s", err, stderr)
		}
		// ...writing does not.
		stdout, stderr, err := c.RunCLI(t, "--token", secret, "services", "register", "api", "--port", "9000", "--protocol", "grpc")
		if code := testharness.ExitCode(err); code != 1 {
			t.Fatalf("exit code %d, want 1 (stdout %q, stderr %q)", code, stdout, stderr)
		}
		if !strings.HasPrefix(stderr, "Error: PERMISSION_DENIED: ") {
			t.Errorf("stderr %q", stderr)
		}
		if _, _, err := c.RunCLI(t, "services", "get", "api"); testharness.ExitCode(err) != 1 {
			t.Errorf("the denied write was applied (get api: %v)", err)
		}
	})

	t.Run("snapshot save and restore", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "backup.snap")
		out := mustRun(t, "snapshot", "save", file, "-o", "json")
		var res struct {
			File  string `json:"file"`
			Bytes int64  `json:"bytes"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%v: %q", err, out)
		}
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() == 0 || fi.Size() != res.Bytes || fi.Mode().Perm() != 0o600 {
			t.Errorf("snapshot file size %d mode %v, reported %d bytes", fi.Size(), fi.Mode().Perm(), res.Bytes)
		}

		// A service registered after the save is gone after the restore.
		mustRun(t, "services", "register", "after-save", "--port", "82", "--protocol", "tcp")
		mustRun(t, "snapshot", "restore", file)
		if _, stderr, err := c.RunCLI(t, "services", "get", "after-save"); testharness.ExitCode(err) != 1 || !strings.Contains(stderr, "NOT_FOUND") {
			t.Errorf("after restore, get after-save: %v: %s", err, stderr)
		}
		mustRun(t, "services", "get", "web")
	})

	t.Run("watch until interrupted", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), testharness.DefaultTimeout)
		defer cancel()
		cmd := c.CLI(ctx, "services", "list", "--watch", "-o", "json")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		readUntil := func(what string, match func(*meshfedv1.WatchServicesResponse) bool) {
			t.Helper()
			for sc.Scan() {
				var ev meshfedv1.WatchServicesResponse
				if err := protojson.Unmarshal(sc.Bytes(), &ev); err != nil {
					t.Fatalf("watch line is not one JSON event: %v: %s", err, sc.Text())
				}
				if match(&ev) {
					return
				}
			}
			t.Fatalf("the watch ended before %s: %s", what, stderr.String())
		}
		readUntil("the end of the snapshot", func(ev *meshfedv1.WatchServicesResponse) bool {
			return ev.GetType() == meshfedv1.WatchEventType_WATCH_EVENT_TYPE_END_OF_SNAPSHOT
		})
		mustRun(t, "services", "register", "watched", "--port", "81", "--protocol", "tcp")
		readUntil("the new service", func(ev *meshfedv1.WatchServicesResponse) bool {
			return ev.GetType() == meshfedv1.WatchEventType_WATCH_EVENT_TYPE_UPSERT && ev.GetService().GetMeta().GetName() == "watched"
		})
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("watch interrupted: %v (want exit 0): %s", err, stderr.String())
		}
	})

	t.Run("flag errors exit 2", func(t *testing.T) {
		_, stderr, err := c.RunCLI(t, "services", "register", "x", "--port", "0", "--protocol", "http")
		if testharness.ExitCode(err) != 2 || !strings.Contains(stderr, "--port 0") {
			t.Errorf("exit %d, stderr %q", testharness.ExitCode(err), stderr)
		}
	})
}
