package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func (f *fakeServer) GetMeshSettings(context.Context, *meshfedv1.GetMeshSettingsRequest) (*meshfedv1.MeshSettings, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.meshSettings == nil {
		return &meshfedv1.MeshSettings{Meta: &meshfedv1.Meta{Name: "global"}}, nil
	}
	return proto.CloneOf(f.meshSettings), nil
}

// UpdateMeshSettings checks the expected version, as the real server does,
// and bumps the version.
func (f *fakeServer) UpdateMeshSettings(_ context.Context, r *meshfedv1.UpdateMeshSettingsRequest) (*meshfedv1.MeshSettings, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.meshUpdates = append(f.meshUpdates, r)
	cur := f.meshSettings.GetMeta().GetVersion()
	if e := r.GetExpectedVersion(); e != 0 && e != cur {
		return nil, status.Errorf(codes.FailedPrecondition, "version mismatch: settings \"global\": stored version %d, expected %d", cur, e)
	}
	s := proto.CloneOf(r.GetSettings())
	if s.Meta == nil {
		s.Meta = &meshfedv1.Meta{}
	}
	s.Meta.Name, s.Meta.Version = "global", cur+1
	f.meshSettings = s
	return proto.CloneOf(s), nil
}

func (f *fakeServer) meshUpdateCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.meshUpdates)
}

func (f *fakeServer) lastMeshUpdate(t *testing.T) *meshfedv1.UpdateMeshSettingsRequest {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.meshUpdates) == 0 {
		t.Fatal("the server received no UpdateMeshSettings")
	}
	return f.meshUpdates[len(f.meshUpdates)-1]
}

// keyValue returns the value of the line "key: value" of a key-value
// listing.
func keyValue(t *testing.T, out, key string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %q line in\n%s", key, out)
	return ""
}

func TestMeshSetMTLSMode(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}
	f.meshSettings = &meshfedv1.MeshSettings{
		Meta: &meshfedv1.Meta{Name: "global", Version: 7}, AccessLogs: true,
		DefaultAuthorizationAction: meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_ALLOW,
	}

	// Only the mTLS mode changes; the version read is the expected one.
	r := run(t, d, "mesh", "set", "--mtls-mode", "permissive")
	r.expect(t, ExitOK)
	if got := keyValue(t, r.stdout, "mTLS mode"); got != "permissive" {
		t.Errorf("mTLS mode %q, want permissive", got)
	}
	want := &meshfedv1.UpdateMeshSettingsRequest{
		Settings: &meshfedv1.MeshSettings{
			Meta: &meshfedv1.Meta{Name: "global", Version: 7}, AccessLogs: true,
			DefaultAuthorizationAction: meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_ALLOW,
			MtlsMode:                   meshfedv1.MTLSMode_MTLS_MODE_PERMISSIVE,
		},
		ExpectedVersion: 7,
	}
	if got := f.lastMeshUpdate(t); !proto.Equal(got, want) {
		t.Errorf("request\n got %v\nwant %v", got, want)
	}

	// Any case, and -o json spells the constant.
	r = run(t, d, "mesh", "set", "--mtls-mode", "STRICT", "-o", "json")
	r.expect(t, ExitOK)
	var raw json.RawMessage
	oneJSONDocument(t, r.stdout, &raw)
	var s meshfedv1.MeshSettings
	if err := protojson.Unmarshal(raw, &s); err != nil || s.GetMtlsMode() != meshfedv1.MTLSMode_MTLS_MODE_STRICT || !s.GetAccessLogs() {
		t.Errorf("got %v, %v", &s, err)
	}
	if !strings.Contains(r.stdout, `"mtlsMode": "MTLS_MODE_STRICT"`) {
		t.Errorf("stdout %s", r.stdout)
	}

	before := f.meshUpdateCount()
	file := writeFile(t, "mesh.yaml", "mtlsMode: permissive\n")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--mtls-mode", "optional"}, `--mtls-mode "optional": must be one of strict, permissive`},
		{[]string{"--mtls-mode", ""}, `--mtls-mode "": must be one of strict, permissive`},
		{[]string{"--mtls-mode", "unspecified"}, `--mtls-mode "unspecified": must be one of strict, permissive`},
		{[]string{"-f", file, "--mtls-mode", "strict"}, "-f and --mtls-mode cannot be combined"},
	} {
		t.Run(strings.ReplaceAll(strings.Join(tt.args, " "), file, "FILE"), func(t *testing.T) {
			run(t, d, append([]string{"mesh", "set"}, tt.args...)...).expect(t, ExitUsage, tt.want, "Run 'meshfed mesh set --help'")
		})
	}
	if n := f.meshUpdateCount(); n != before {
		t.Errorf("%d updates sent for bad command lines", n-before)
	}
}

// TestMeshSetFromFile: a settings file spells the mode as a flag does, as
// the constant, or under the proto's field name.
func TestMeshSetFromFile(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}
	for _, tt := range []struct {
		content string
		want    meshfedv1.MTLSMode
	}{
		{"mtlsMode: permissive\n", meshfedv1.MTLSMode_MTLS_MODE_PERMISSIVE},
		{"mtls_mode: strict\naccessLogs: true\n", meshfedv1.MTLSMode_MTLS_MODE_STRICT},
		{`{"mtlsMode": "MTLS_MODE_PERMISSIVE"}`, meshfedv1.MTLSMode_MTLS_MODE_PERMISSIVE},
		{"mtlsMode: PERMISSIVE\n", meshfedv1.MTLSMode_MTLS_MODE_PERMISSIVE},
		{"accessLogs: true\n", meshfedv1.MTLSMode_MTLS_MODE_UNSPECIFIED},
	} {
		t.Run(tt.content, func(t *testing.T) {
			r := run(t, d, "mesh", "set", "-f", writeFile(t, "mesh.yaml", tt.content))
			r.expect(t, ExitOK)
			if got := f.lastMeshUpdate(t).GetSettings().GetMtlsMode(); got != tt.want {
				t.Errorf("mtls_mode %v, want %v", got, tt.want)
			}
			wantLine := enumString(tt.want)
			if wantLine == "" {
				wantLine = "strict (default)"
			}
			if got := keyValue(t, r.stdout, "mTLS mode"); got != wantLine {
				t.Errorf("mTLS mode %q, want %q", got, wantLine)
			}
		})
	}

	before := f.meshUpdateCount()
	r := run(t, d, "mesh", "set", "-f", writeFile(t, "mesh.yaml", "mtlsMode: optional\n"))
	r.expect(t, ExitError, `mtlsMode: "optional" is not one of strict, permissive`)
	if n := f.meshUpdateCount(); n != before {
		t.Errorf("%d updates sent for a bad file", n-before)
	}
}
