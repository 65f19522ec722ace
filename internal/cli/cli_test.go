package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane"
)

type result struct {
	stdout, stderr string
	code           int
}

// run executes the command tree with args and the given dependencies.
func run(t *testing.T, d deps, args ...string) result {
	t.Helper()
	return runCtx(context.Background(), t, d, args...)
}

func runCtx(ctx context.Context, t *testing.T, d deps, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := runTo(ctx, d, &out, &errb, args...)
	return result{out.String(), errb.String(), code}
}

func runTo(ctx context.Context, d deps, stdout, stderr io.Writer, args ...string) int {
	if d.getenv == nil {
		d.getenv = func(string) string { return "" }
	}
	if d.stdin == nil {
		d.stdin = strings.NewReader("")
	}
	root := newRootCommand(stdout, stderr, d)
	root.SetArgs(args)
	return ExecuteContext(ctx, root)
}

// lineWriter collects output and calls onLines once n lines were written.
type lineWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	n       int
	onLines func()
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.onLines != nil && bytes.Count(w.buf.Bytes(), []byte("\n")) >= w.n {
		w.onLines()
		w.onLines = nil
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func (r result) expect(t *testing.T, code int, stderrContains ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
	for _, s := range stderrContains {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr %q does not contain %q", r.stderr, s)
		}
	}
}

// oneJSONDocument checks that out is exactly one JSON document and decodes it.
func oneJSONDocument(t *testing.T, out string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, out)
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err != io.EOF {
		t.Fatalf("stdout holds more than one JSON document (next: %s, err %v)", extra, err)
	}
}

// captureServer returns deps whose server records its Config and, while
// running, checks the temporary data directory exists.
func captureServer(t *testing.T, got *controlplane.Config) deps {
	return deps{runServer: func(ctx context.Context, cfg controlplane.Config) error {
		*got = cfg
		if _, err := os.Stat(cfg.DataDir); err != nil {
			t.Errorf("data dir while running: %v", err)
		}
		cfg.Logger.Info("fake server running")
		io.WriteString(cfg.Out, "export MESHFED_ADDR=x\n")
		return nil
	}}
}

func TestServerFlags(t *testing.T) {
	dataDir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want controlplane.Config // Logger, Out and a temporary DataDir are not compared
	}{
		{
			name: "dev defaults",
			args: []string{"server", "--dev"},
			want: controlplane.Config{
				NodeID: "dev", Cluster: "dev", TrustDomain: "dev.mesh",
				APIAddr: "127.0.0.1:7700", RaftAddr: "127.0.0.1:7701", HTTPAddr: "127.0.0.1:7702", APIAdvertiseAddr: "127.0.0.1:7700",
				Bootstrap: true, Dev: true, RaftAdvertiseAddr: "127.0.0.1:7701",
			},
		},
		{
			name: "dev with explicit flags",
			args: []string{"server", "--dev", "--cluster", "east", "--node-id", "n1", "--data-dir", dataDir, "--api-addr", "127.0.0.1:9000", "--http-addr", "localhost"},
			want: controlplane.Config{
				NodeID: "n1", Cluster: "east", TrustDomain: "east.mesh", DataDir: dataDir,
				APIAddr: "127.0.0.1:9000", RaftAddr: "127.0.0.1:7701", HTTPAddr: "localhost:7702", APIAdvertiseAddr: "127.0.0.1:9000",
				Bootstrap: true, Dev: true, RaftAdvertiseAddr: "127.0.0.1:7701",
			},
		},
		{
			name: "dev joining does not bootstrap",
			args: []string{"server", "--dev", "--join", "10.0.0.1", "--join-token", "T"},
			want: controlplane.Config{
				NodeID: "dev", Cluster: "dev", TrustDomain: "dev.mesh",
				APIAddr: "127.0.0.1:7700", RaftAddr: "127.0.0.1:7701", HTTPAddr: "127.0.0.1:7702", APIAdvertiseAddr: "127.0.0.1:7700",
				JoinAddrs: []string{"10.0.0.1:7700"}, JoinToken: "T", Dev: true, RaftAdvertiseAddr: "127.0.0.1:7701",
			},
		},
		{
			name: "bootstrap server",
			args: []string{"server", "--bootstrap", "--data-dir", dataDir, "--node-id", "s1", "--cluster", "east", "--trust-domain", "corp.example",
				"--api-addr", "10.0.0.1:7700", "--raft-addr", "10.0.0.1:7701", "--http-addr", "10.0.0.1:7702"},
			want: controlplane.Config{
				NodeID: "s1", Cluster: "east", TrustDomain: "corp.example", DataDir: dataDir, Bootstrap: true,
				APIAddr: "10.0.0.1:7700", RaftAddr: "10.0.0.1:7701", HTTPAddr: "10.0.0.1:7702", RaftAdvertiseAddr: "10.0.0.1:7701", APIAdvertiseAddr: "10.0.0.1:7700",
			},
		},
		{
			name: "joining server, repeated and comma separated --join",
			args: []string{"server", "--data-dir", dataDir, "--node-id", "s2", "--cluster", "east",
				"--api-addr", "[::1]:7700", "--raft-addr", "10.0.0.2:7701", "--http-addr", "10.0.0.2:7702",
				"--raft-advertise-addr", "192.0.2.1:17701", "--api-advertise-addr", "gw.example",
				"--join", "10.0.0.1:7700,10.0.0.3", "--join", "10.0.0.4:9", "--join-token", "tok", "--ca-file", "/etc/ca.pem"},
			want: controlplane.Config{
				NodeID: "s2", Cluster: "east", TrustDomain: "east.mesh", DataDir: dataDir,
				APIAddr: "[::1]:7700", RaftAddr: "10.0.0.2:7701", HTTPAddr: "10.0.0.2:7702", RaftAdvertiseAddr: "192.0.2.1:17701", APIAdvertiseAddr: "gw.example:7700",
				JoinAddrs: []string{"10.0.0.1:7700", "10.0.0.3:7700", "10.0.0.4:9"}, JoinToken: "tok", CAFile: "/etc/ca.pem",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got controlplane.Config
			r := run(t, captureServer(t, &got), tt.args...)
			r.expect(t, ExitOK)
			if got.Logger == nil || got.Out == nil {
				t.Fatalf("Logger or Out not set: %+v", got)
			}
			if !strings.Contains(r.stdout, "export MESHFED_ADDR=x") {
				t.Errorf("Out does not write to stdout: %q", r.stdout)
			}
			if !strings.Contains(r.stderr, "fake server running") {
				t.Errorf("Logger does not write to stderr: %q", r.stderr)
			}
			tempDir := tt.want.DataDir == ""
			if tempDir {
				if !strings.Contains(filepath.Base(got.DataDir), "meshfed-dev-") {
					t.Errorf("DataDir = %q, want a temporary meshfed-dev-* directory", got.DataDir)
				}
				if _, err := os.Stat(got.DataDir); !os.IsNotExist(err) {
					t.Errorf("temporary data dir not removed at exit: %v", err)
				}
			} else if _, err := os.Stat(got.DataDir); err != nil {
				t.Errorf("given data dir removed: %v", err)
			}
			got.Logger, got.Out = nil, nil
			if tempDir {
				got.DataDir = ""
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("config\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestServerFlagErrors(t *testing.T) {
	base := []string{"server", "--data-dir", "/tmp/x", "--node-id", "s1", "--cluster", "east",
		"--api-addr", "10.0.0.1:7700", "--raft-addr", "10.0.0.1:7701", "--http-addr", "10.0.0.1:7702"}
	with := func(extra ...string) []string { return append(append([]string{}, base...), extra...) }
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing api addr", []string{"server", "--data-dir", "/tmp/x", "--node-id", "s1", "--cluster", "east"}, "--api-addr is required"},
		{"missing node id", []string{"server", "--data-dir", "/tmp/x", "--cluster", "east", "--api-addr", "h:1", "--raft-addr", "h:2", "--http-addr", "h:3"}, "--node-id is required"},
		{"missing data dir", []string{"server", "--node-id", "s1", "--cluster", "east", "--api-addr", "h:1", "--raft-addr", "h:2", "--http-addr", "h:3"}, "--data-dir is required"},
		{"no host", with("--api-addr", ":7700"), `--api-addr ":7700": a host is required`},
		{"unspecified host", with("--raft-addr", "0.0.0.0:7701"), "not reachable from other servers"},
		{"bad port", with("--http-addr", "h:99999"), "port must be a number between 1 and 65535"},
		{"bad node id", with("--node-id", "S_1"), `--node-id "S_1": must be a DNS label`},
		{"bad cluster", with("--cluster", "East"), `--cluster "East": must be a DNS label`},
		{"bad trust domain", with("--trust-domain", "not a domain"), `--trust-domain "not a domain"`},
		{"bootstrap and join", with("--bootstrap", "--join", "h:1"), "--bootstrap and --join are mutually exclusive"},
		{"token without join", with("--join-token", "T"), "--join-token needs --join"},
		{"bad log level", with("--log-level", "loud"), `--log-level "loud"`},
		{"bad log format", with("--log-format", "xml"), `--log-format "xml"`},
		{"unknown flag", with("--bogus"), "unknown flag: --bogus"},
		{"stray argument", with("now"), `unknown command "now" for "meshfed server"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ran := false
			r := run(t, deps{runServer: func(context.Context, controlplane.Config) error { ran = true; return nil }}, tt.args...)
			r.expect(t, ExitUsage, tt.want, "Run 'meshfed server --help' for usage.")
			if ran {
				t.Error("the server ran despite the bad flags")
			}
		})
	}
}

func TestServerLogFormatAndErrors(t *testing.T) {
	t.Run("json logs", func(t *testing.T) {
		var got controlplane.Config
		r := run(t, captureServer(t, &got), "server", "--dev", "--log-format", "json", "--log-level", "debug")
		r.expect(t, ExitOK)
		line := strings.SplitN(strings.TrimSpace(r.stderr), "\n", 2)[0]
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %v: %q", err, line)
		}
		if !got.Logger.Enabled(context.Background(), -4) {
			t.Error("--log-level debug does not enable debug logs")
		}
	})
	t.Run("server error exits 1", func(t *testing.T) {
		r := run(t, deps{runServer: func(context.Context, controlplane.Config) error {
			return io.ErrUnexpectedEOF
		}}, "server", "--dev")
		r.expect(t, ExitError, "Error: unexpected EOF")
	})
	t.Run("cancel stops the server", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		started := make(chan struct{})
		go func() {
			<-started
			cancel()
		}()
		r := runCtx(ctx, t, deps{runServer: func(ctx context.Context, _ controlplane.Config) error {
			close(started)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(10 * time.Second):
				return context.DeadlineExceeded
			}
		}}, "server", "--dev")
		r.expect(t, ExitOK)
	})
}

func TestClientConnectionSettings(t *testing.T) {
	f := startFakeServer(t)
	f.services = []*meshfedv1.Service{{Meta: &meshfedv1.Meta{Name: "web", Namespace: "default"}, Port: 80}}

	t.Run("missing address", func(t *testing.T) {
		r := run(t, deps{getenv: f.env(envAddr, "")}, "services", "list")
		r.expect(t, ExitUsage, "Error: no server address: set --addr or MESHFED_ADDR", "Run 'meshfed services list --help'")
	})
	t.Run("missing CA", func(t *testing.T) {
		r := run(t, deps{getenv: f.env(envCAFile, "")}, "services", "list")
		r.expect(t, ExitUsage, "Error: no CA bundle: set --ca-file or MESHFED_CA_FILE")
	})
	t.Run("unreadable CA file", func(t *testing.T) {
		r := run(t, deps{getenv: f.env()}, "services", "list", "--ca-file", filepath.Join(t.TempDir(), "nope.pem"))
		r.expect(t, ExitError, "reading CA file")
	})
	t.Run("environment", func(t *testing.T) {
		r := run(t, deps{getenv: f.env()}, "services", "list")
		r.expect(t, ExitOK)
		if !strings.Contains(r.stdout, "web") {
			t.Errorf("stdout: %q", r.stdout)
		}
	})
	t.Run("flags override the environment", func(t *testing.T) {
		env := func(string) string { return "" }
		r := run(t, deps{getenv: env}, "services", "list", "--addr", f.addr, "--ca-file", f.caFile, "--token", fakeAdminToken)
		r.expect(t, ExitOK)
		r = run(t, deps{getenv: f.env()}, "services", "list", "--token", "wrong")
		r.expect(t, ExitError, "Error: UNAUTHENTICATED: invalid token")
	})
}

func TestServicesOutput(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}

	t.Run("empty list as JSON still has the key", func(t *testing.T) {
		r := run(t, d, "services", "list", "-o", "json")
		r.expect(t, ExitOK)
		var doc map[string]json.RawMessage
		oneJSONDocument(t, r.stdout, &doc)
		if string(doc["services"]) != "[]" {
			t.Errorf(`"services" = %s, want []`, doc["services"])
		}
	})

	for _, name := range []string{"web", "api", "db"} {
		run(t, d, "services", "register", name, "--port", "8080", "--protocol", "http", "--label", "team=a").expect(t, ExitOK)
	}

	t.Run("table", func(t *testing.T) {
		r := run(t, d, "services", "list")
		r.expect(t, ExitOK)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) != 4 {
			t.Fatalf("want a header and 3 rows (across pages), got:\n%s", r.stdout)
		}
		if got := strings.Fields(lines[0]); !reflect.DeepEqual(got, serviceHeaders) {
			t.Errorf("header %q", got)
		}
		if got := strings.Fields(lines[1]); !reflect.DeepEqual(got, []string{"default", "web", "8080", "http", "-", "team=a", "11"}) {
			t.Errorf("row %q", got)
		}
	})
	t.Run("json", func(t *testing.T) {
		r := run(t, d, "services", "list", "-o", "json")
		r.expect(t, ExitOK)
		var raw json.RawMessage
		oneJSONDocument(t, r.stdout, &raw)
		var resp meshfedv1.ListServicesResponse
		if err := protojson.Unmarshal(raw, &resp); err != nil {
			t.Fatalf("not a ListServicesResponse: %v", err)
		}
		if len(resp.Services) != 3 || resp.Services[2].GetMeta().GetName() != "db" || resp.GetNextPageToken() != "" {
			t.Errorf("got %v", &resp)
		}
	})
	t.Run("get as JSON", func(t *testing.T) {
		r := run(t, d, "services", "get", "api", "-o", "json")
		r.expect(t, ExitOK)
		var raw json.RawMessage
		oneJSONDocument(t, r.stdout, &raw)
		var s meshfedv1.Service
		if err := protojson.Unmarshal(raw, &s); err != nil || s.GetMeta().GetName() != "api" || s.GetProtocol() != meshfedv1.Protocol_PROTOCOL_HTTP {
			t.Errorf("got %v, %v", &s, err)
		}
	})
	t.Run("not found", func(t *testing.T) {
		r := run(t, d, "services", "get", "nope", "-n", "shop")
		r.expect(t, ExitError, "Error: NOT_FOUND: service shop/nope not found")
		if r.stdout != "" {
			t.Errorf("stdout on error: %q", r.stdout)
		}
	})
	t.Run("bad output format", func(t *testing.T) {
		run(t, d, "services", "list", "-o", "yaml").expect(t, ExitUsage, `-o/--output "yaml": must be "table" or "json"`)
	})
}

func TestServicesRegister(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}
	r := run(t, d, "services", "register", "payments", "-n", "shop", "--port", "9000", "--protocol", "GRPC",
		"--service-account", "pay", "--label", "a=1", "--label", "b=x=y", "--expected-version", "5")
	r.expect(t, ExitOK)
	if r.stdout != "Registered service shop/payments (version 11)\n" {
		t.Errorf("stdout %q", r.stdout)
	}
	got := f.lastUpdate(t)
	want := &meshfedv1.UpdateServiceRequest{
		Service: &meshfedv1.Service{
			Meta: &meshfedv1.Meta{Name: "payments", Namespace: "shop", Labels: map[string]string{"a": "1", "b": "x=y"}},
			Port: 9000, Protocol: meshfedv1.Protocol_PROTOCOL_GRPC, ServiceAccount: "pay",
		},
		ExpectedVersion: 5,
		AllowMissing:    true,
	}
	if !proto.Equal(got, want) {
		t.Errorf("request\n got %v\nwant %v", got, want)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"services", "register", "web", "--protocol", "http"}, "--port is required"},
		{[]string{"services", "register", "web", "--port", "0", "--protocol", "http"}, "--port 0: must be between 1 and 65535"},
		{[]string{"services", "register", "web", "--port", "70000", "--protocol", "http"}, "--port 70000: must be between 1 and 65535"},
		{[]string{"services", "register", "web", "--port", "80"}, "--protocol is required"},
		{[]string{"services", "register", "web", "--port", "80", "--protocol", "ftp"}, `--protocol "ftp": must be one of http, grpc, tcp`},
		{[]string{"services", "register", "web", "--port", "80", "--protocol", "tcp", "--label", "novalue"}, `--label "novalue": must be key=value`},
		{[]string{"services", "register", "--port", "80", "--protocol", "tcp"}, "missing NAME"},
		{[]string{"services", "register", "a", "b", "--port", "80", "--protocol", "tcp"}, `unexpected argument "b"`},
		{[]string{"services", "register", "web", "--port", "eighty"}, `invalid argument "eighty" for "--port"`},
	} {
		run(t, d, tt.args...).expect(t, ExitUsage, tt.want)
	}
}

func TestGRPCErrors(t *testing.T) {
	f := startFakeServer(t)
	t.Run("permission denied", func(t *testing.T) {
		r := run(t, deps{getenv: f.env(envToken, fakeReadToken)}, "services", "register", "web", "--port", "80", "--protocol", "http")
		r.expect(t, ExitError)
		if r.stderr != "Error: PERMISSION_DENIED: a read token cannot call UpdateService\n" {
			t.Errorf("stderr %q", r.stderr)
		}
	})
	t.Run("unimplemented", func(t *testing.T) {
		for _, args := range [][]string{
			{"peering", "token", "--peer", "west"}, {"peering", "list"},
			{"exports", "set", "web", "--to", "west"}, {"services", "resolve", "web"},
			// Its --token is the peering token: the API token still comes from
			// the environment, else the fake would answer UNAUTHENTICATED.
			{"peering", "establish", "--peer", "east", "--token", "peering-token"},
		} {
			r := run(t, deps{getenv: f.env()}, args...)
			r.expect(t, ExitError, "Error: UNIMPLEMENTED: ", "does not implement")
		}
	})
	t.Run("context added to a status keeps the code first", func(t *testing.T) {
		file := writeFile(t, "p.yaml", "meta: {name: p}\naction: allow\n")
		r := run(t, deps{getenv: f.env()}, "policy", "authz", "apply", "-f", file)
		r.expect(t, ExitError, "Error: INVALID_ARGUMENT: applying authorization policy p: destination: required")
	})
}

func TestTokens(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}

	r := run(t, d, "tokens", "create", "--kind", "workload-join", "--spiffe-id", "spiffe://test.mesh/ns/default/sa/web", "--ttl", "10m", "--uses", "1")
	r.expect(t, ExitOK)
	if r.stdout != "mfd_s3cret\n" {
		t.Errorf("stdout %q, want only the secret", r.stdout)
	}
	req := f.tokenReqs[len(f.tokenReqs)-1]
	if req.GetKind() != meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN || req.GetTtl().AsDuration() != 10*time.Minute || req.GetMaxUses() != 1 {
		t.Errorf("request %v", req)
	}

	r = run(t, d, "tokens", "create", "--kind", "read", "-o", "json")
	r.expect(t, ExitOK)
	var tok map[string]any
	oneJSONDocument(t, r.stdout, &tok)
	if tok["secret"] != "mfd_s3cret" || tok["kind"] != "TOKEN_KIND_READ" {
		t.Errorf("json %v", tok)
	}

	r = run(t, d, "server", "join-token")
	r.expect(t, ExitOK)
	if r.stdout != "mfd_s3cret\n" {
		t.Errorf("join-token stdout %q", r.stdout)
	}
	req = f.tokenReqs[len(f.tokenReqs)-1]
	if req.GetKind() != meshfedv1.TokenKind_TOKEN_KIND_SERVER_JOIN || req.GetTtl().AsDuration() != 30*time.Minute || req.GetMaxUses() != 1 {
		t.Errorf("join-token request %v", req)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"tokens", "create"}, "--kind is required (admin, read, server-join, workload-join)"},
		{[]string{"tokens", "create", "--kind", "root"}, `--kind "root": must be one of admin, read, server-join, workload-join`},
		{[]string{"tokens", "create", "--kind", "workload-join"}, "--spiffe-id is required with --kind workload-join"},
		{[]string{"tokens", "create", "--kind", "admin", "--spiffe-id", "spiffe://x/y"}, "--spiffe-id only applies to --kind workload-join"},
		{[]string{"tokens", "create", "--kind", "admin", "--ttl", "-1m"}, "--ttl -1m0s: must not be negative"},
		{[]string{"tokens", "create", "--kind", "admin", "--ttl", "soon"}, `invalid argument "soon" for "--ttl"`},
	} {
		run(t, d, tt.args...).expect(t, ExitUsage, tt.want)
	}
}

func TestPolicyApply(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}
	file := writeFile(t, "policies.yaml", `# two policies
meta:
  name: allow-frontend
destination: web
action: allow
rules:
- principals: ["spiffe://test.mesh/ns/default/sa/frontend"]
  methods: [GET]
---
meta: {name: deny-other, namespace: shop}
destination: "*"
action: AUTHORIZATION_ACTION_DENY
rules: [{principals: ["spiffe://other.mesh/*"]}]
---
`)
	r := run(t, d, "policy", "authz", "apply", "-f", file, "-n", "prod")
	r.expect(t, ExitOK)
	want := "Applied authorization policy prod/allow-frontend (version 1)\nApplied authorization policy shop/deny-other (version 2)\n"
	if r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	ps := f.policies()
	if len(ps) != 2 || ps[0].GetAction() != meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_ALLOW ||
		ps[1].GetAction() != meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_DENY ||
		ps[0].GetRules()[0].GetMethods()[0] != "GET" {
		t.Fatalf("policies %v", ps)
	}

	t.Run("stdin JSON", func(t *testing.T) {
		d := d
		d.stdin = strings.NewReader(`{"meta": {"name": "p3"}, "destination": "api", "action": "ALLOW", "rules": [{"principals": ["*"]}]}`)
		r := run(t, d, "policy", "authz", "apply", "-f", "-", "-o", "json")
		r.expect(t, ExitOK)
		var raw json.RawMessage
		oneJSONDocument(t, r.stdout, &raw)
		var p meshfedv1.AuthorizationPolicy
		if err := protojson.Unmarshal(raw, &p); err != nil || p.GetMeta().GetName() != "p3" {
			t.Errorf("got %v, %v", &p, err)
		}
	})

	t.Run("several as JSON", func(t *testing.T) {
		r := run(t, d, "policy", "authz", "apply", "-f", file, "-o", "json")
		r.expect(t, ExitOK)
		var doc struct {
			Policies []json.RawMessage `json:"policies"`
		}
		oneJSONDocument(t, r.stdout, &doc)
		if len(doc.Policies) != 2 {
			t.Errorf("got %d policies", len(doc.Policies))
		}
	})

	bad := []struct {
		name, content, want string
	}{
		{"unknown field", "meta: {name: p}\ndestination: web\nrules:\n- principal: [x]\n", "rules[0].principal: unknown field (AuthorizationRule has principals, methods, paths)"},
		{"bad enum", "meta: {name: p}\naction: maybe\n", `action: "maybe" is not one of allow, deny`},
		{"list expected", "meta: {name: p}\nrules: {principals: [x]}\n", "rules: expected a list, got an object"},
		{"object expected", "meta: p\n", "meta: expected an object with the fields of Meta, got a string"},
		{"scalar type", "meta: {name: p}\naction: [allow]\n", "action"},
		{"yaml syntax", "meta: {name: p\n", "bad.yaml:"},
		{"no name", "destination: web\n", "document 1: meta.name is required"},
		{"empty", "# nothing\n", "no document found"},
		{"not an object", "- a\n- b\n", "expected an object with the fields of AuthorizationPolicy, got a list"},
		{"second document bad", "meta: {name: ok}\ndestination: web\n---\nmeta: {name: bad}\nfoo: 1\n", "document 2: foo: unknown field"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.policies())
			file := writeFile(t, "bad.yaml", tt.content)
			r := run(t, d, "policy", "authz", "apply", "-f", file)
			r.expect(t, ExitError, tt.want)
			if n := len(f.policies()); n != before {
				t.Errorf("%d policies applied from a bad file", n-before)
			}
		})
	}
	t.Run("missing -f", func(t *testing.T) {
		run(t, d, "policy", "authz", "apply").expect(t, ExitUsage, "-f/--file is required")
	})
	t.Run("missing file", func(t *testing.T) {
		run(t, d, "policy", "traffic", "apply", "-f", filepath.Join(t.TempDir(), "nope.yaml")).expect(t, ExitError, "no such file")
	})
}

func TestDecodeTrafficPolicy(t *testing.T) {
	docs, err := decodeDocuments("t.yaml", []byte(`
meta: {name: web}
destination: web
timeouts: {connect: 1s, request: 2.5s}
retries: {attempts: 3, per_try_timeout: 1s, retryOn: [5xx]}
load_balancer: least-request
splits: [{version: v1, weight: 90}, {version: v2, weight: 10}]
`), func() *meshfedv1.TrafficPolicy { return &meshfedv1.TrafficPolicy{} })
	if err != nil {
		t.Fatal(err)
	}
	p := docs[0]
	if p.GetLoadBalancer() != meshfedv1.LoadBalancer_LOAD_BALANCER_LEAST_REQUEST || p.GetTimeouts().GetRequest().AsDuration() != 2500*time.Millisecond ||
		p.GetRetries().GetPerTryTimeout().AsDuration() != time.Second || len(p.GetSplits()) != 2 {
		t.Errorf("decoded %v", p)
	}
	// Durations may be written the Go way too.
	docs, err = decodeDocuments("t.yaml", []byte(`
meta: {name: web}
timeouts: {connect: 300ms, request: 1m30s, idle: 2h}
fault: {delay: 1.5ms, delay_percent: 10}
`), func() *meshfedv1.TrafficPolicy { return &meshfedv1.TrafficPolicy{} })
	if err != nil {
		t.Fatal(err)
	}
	if to := docs[0].GetTimeouts(); to.GetConnect().AsDuration() != 300*time.Millisecond || to.GetRequest().AsDuration() != 90*time.Second ||
		to.GetIdle().AsDuration() != 2*time.Hour || docs[0].GetFault().GetDelay().AsDuration() != 1500*time.Microsecond {
		t.Errorf("Go durations decoded as %v", docs[0])
	}
	_, err = decodeDocuments("t.yaml", []byte("meta: {name: web}\ntimeouts: {request: fast}\n"), func() *meshfedv1.TrafficPolicy { return &meshfedv1.TrafficPolicy{} })
	if err == nil || !strings.HasPrefix(err.Error(), "t.yaml: timeouts.request: invalid google.protobuf.Duration value") {
		t.Errorf("bad duration error: %v", err)
	}
}

func TestSnapshot(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}
	f.snapshot = bytes.Repeat([]byte("0123456789abcdef"), (2<<20+1000)/16) // 2 MiB and a bit
	dir := t.TempDir()
	file := filepath.Join(dir, "backup.snap")

	r := run(t, d, "snapshot", "save", file)
	r.expect(t, ExitOK)
	got, err := os.ReadFile(file)
	if err != nil || !bytes.Equal(got, f.snapshot) {
		t.Fatalf("saved %d bytes (err %v), want %d", len(got), err, len(f.snapshot))
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}

	t.Run("restore in 1 MiB chunks", func(t *testing.T) {
		r := run(t, d, "snapshot", "restore", file, "-o", "json")
		r.expect(t, ExitOK)
		var res snapshotResult
		oneJSONDocument(t, r.stdout, &res)
		if res.Index != 99 || res.Bytes != int64(len(f.snapshot)) {
			t.Errorf("result %+v", res)
		}
		if !bytes.Equal(f.restored, f.snapshot) {
			t.Errorf("restored %d bytes, want %d", len(f.restored), len(f.snapshot))
		}
		if want := []int{1 << 20, 1 << 20, len(f.snapshot) - 2<<20}; !reflect.DeepEqual(f.chunkSizes, want) {
			t.Errorf("chunks %v, want %v", f.chunkSizes, want)
		}
	})

	t.Run("failed save leaves the old file alone", func(t *testing.T) {
		f.saveFailAt = 600 << 10
		defer func() { f.saveFailAt = 0 }()
		r := run(t, d, "snapshot", "save", file)
		r.expect(t, ExitError, "Error: INTERNAL: disk on fire")
		got, _ := os.ReadFile(file)
		if !bytes.Equal(got, f.snapshot) {
			t.Error("the previous snapshot was changed by a failed save")
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Errorf("temporary files left behind: %v", entries)
		}
	})
}

func TestWatch(t *testing.T) {
	svc := func(name string) *meshfedv1.Service {
		return &meshfedv1.Service{Meta: &meshfedv1.Meta{Name: name, Namespace: "default", Version: 3}, Port: 80, Protocol: meshfedv1.Protocol_PROTOCOL_HTTP}
	}
	events := []*meshfedv1.WatchServicesResponse{
		{Type: meshfedv1.WatchEventType_WATCH_EVENT_TYPE_UPSERT, Service: svc("web"), Index: 3},
		{Type: meshfedv1.WatchEventType_WATCH_EVENT_TYPE_END_OF_SNAPSHOT, Index: 3},
		{Type: meshfedv1.WatchEventType_WATCH_EVENT_TYPE_DELETE, Service: &meshfedv1.Service{Meta: &meshfedv1.Meta{Name: "web", Namespace: "default"}}, Index: 4},
	}

	t.Run("text lines", func(t *testing.T) {
		f := startFakeServer(t)
		f.watchEvents = events
		r := run(t, deps{getenv: f.env()}, "services", "list", "--watch")
		r.expect(t, ExitOK)
		want := "UPSERT default/web port=80 protocol=http version=3\nEND_OF_SNAPSHOT index=3\nDELETE default/web\n"
		if r.stdout != want {
			t.Errorf("stdout\n%s\nwant\n%s", r.stdout, want)
		}
	})

	t.Run("json lines until interrupted", func(t *testing.T) {
		f := startFakeServer(t)
		f.watchEvents = events
		f.watchBlock = true
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		out := &lineWriter{n: len(events), onLines: cancel}
		var errb bytes.Buffer
		done := make(chan int)
		go func() { done <- runTo(ctx, deps{getenv: f.env()}, out, &errb, "services", "list", "-w", "-o", "json") }()
		select {
		case code := <-done:
			if code != ExitOK {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("the watch did not end when interrupted; output so far:\n%s", out.String())
		}
		sc := bufio.NewScanner(strings.NewReader(out.String()))
		var n int
		for sc.Scan() {
			var ev meshfedv1.WatchServicesResponse
			if err := protojson.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Fatalf("line %d is not one JSON event: %v: %s", n+1, err, sc.Text())
			}
			if ev.GetType() != events[n].GetType() {
				t.Errorf("event %d type %v", n, ev.GetType())
			}
			n++
		}
		if n != len(events) {
			t.Errorf("got %d events, want %d", n, len(events))
		}
	})
}

func TestCommandTree(t *testing.T) {
	t.Run("group without subcommand prints help", func(t *testing.T) {
		r := run(t, deps{}, "services")
		r.expect(t, ExitOK)
		if !strings.Contains(r.stdout, "Available Commands:") || !strings.Contains(r.stdout, "register") {
			t.Errorf("stdout %q", r.stdout)
		}
	})
	t.Run("unknown subcommand", func(t *testing.T) {
		run(t, deps{}, "services", "lsit").expect(t, ExitUsage, `unknown command "lsit" for "meshfed services" (did you mean list?)`)
		run(t, deps{}, "servics").expect(t, ExitUsage, `unknown command "servics" for "meshfed"`, "services")
	})
	t.Run("every command has help with an example", func(t *testing.T) {
		root := newRootCommand(io.Discard, io.Discard, deps{})
		var walk func(c *cobra.Command)
		walk = func(c *cobra.Command) {
			for _, sub := range c.Commands() {
				if sub.Name() == "help" || sub.Name() == "completion" {
					continue
				}
				if sub.Short == "" {
					t.Errorf("%s has no short help", sub.CommandPath())
				}
				if !sub.HasSubCommands() && sub.Example == "" {
					t.Errorf("%s has no example", sub.CommandPath())
				}
				walk(sub)
			}
		}
		walk(root)
	})
	t.Run("contract commands exist", func(t *testing.T) {
		root := newRootCommand(io.Discard, io.Discard, deps{})
		for _, path := range []string{
			"server", "server join-token", "members", "status",
			"services register", "services list", "services get", "services resolve", "services deregister",
			"workloads list", "workloads register", "workloads deregister",
			"policy authz apply", "policy authz list", "policy authz get", "policy authz delete",
			"policy traffic apply", "policy traffic list", "policy traffic get", "policy traffic delete",
			"mesh get", "mesh set", "tokens create", "tokens list", "tokens get", "tokens delete",
			"svid fetch", "ca status", "ca rotate", "ca bundle", "ca settings", "ca import",
			"identities create", "identities list", "identities get", "identities delete",
			"peering token", "peering establish", "peering list", "peering delete",
			"exports set", "exports list", "exports delete", "snapshot save", "snapshot restore",
		} {
			c, rest, err := root.Find(strings.Fields(path))
			if err != nil || len(rest) != 0 || c.CommandPath() != "meshfed "+path {
				t.Errorf("%q: found %q (rest %v, err %v)", path, c.CommandPath(), rest, err)
			}
		}
	})
}

func TestEnums(t *testing.T) {
	d := meshfedv1.TokenKind(0).Descriptor()
	for _, in := range []string{"server-join", "SERVER_JOIN", "token_kind_server_join", "Server-Join"} {
		n, err := parseEnum(d, "--kind", in)
		if err != nil || meshfedv1.TokenKind(n) != meshfedv1.TokenKind_TOKEN_KIND_SERVER_JOIN {
			t.Errorf("parseEnum(%q) = %v, %v", in, n, err)
		}
	}
	if _, err := parseEnum(d, "--kind", "unspecified"); err == nil {
		t.Error("the zero value must not be accepted")
	}
	if got := enumString(meshfedv1.LoadBalancer_LOAD_BALANCER_ROUND_ROBIN); got != "round-robin" {
		t.Errorf("enumString = %q", got)
	}
	if got := enumString(meshfedv1.Protocol_PROTOCOL_UNSPECIFIED); got != "" {
		t.Errorf("enumString(0) = %q", got)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
