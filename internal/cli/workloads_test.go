package cli

import (
	"bytes"
	"strings"
	"testing"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func TestWorkloadsTableShowsSource(t *testing.T) {
	var out bytes.Buffer
	a := &app{stdout: &out}
	if err := a.printWorkloads([]*meshfedv1.Workload{
		{Meta: &meshfedv1.Meta{Namespace: "default", Name: "vm-1"}, Service: "web", Address: "10.1.0.1", Port: 8080},
		{Meta: &meshfedv1.Meta{Namespace: "default", Name: "web-0"}, Service: "web", Address: "10.0.0.1", Port: 15443,
			Health: meshfedv1.HealthStatus_HEALTH_STATUS_UNKNOWN, Proxy: true},
	}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("table:\n%s", out.String())
	}
	for i, want := range [][]string{
		{"NAMESPACE", "NAME", "SERVICE", "ADDRESS", "PORT", "HEALTH", "SOURCE"},
		{"default", "vm-1", "web", "10.1.0.1", "8080", "-", "static"},
		{"default", "web-0", "web", "10.0.0.1", "15443", "unknown", "proxy"},
	} {
		if got := strings.Fields(lines[i])[:len(want)]; strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("line %d: %q, want it to start with %q", i, lines[i], want)
		}
	}
}

func TestMeshSettingsShowMTLSMode(t *testing.T) {
	for mode, want := range map[meshfedv1.MTLSMode]string{
		meshfedv1.MTLSMode_MTLS_MODE_UNSPECIFIED: "strict (default)",
		meshfedv1.MTLSMode_MTLS_MODE_STRICT:      "strict",
		meshfedv1.MTLSMode_MTLS_MODE_PERMISSIVE:  "permissive",
	} {
		var out bytes.Buffer
		a := &app{stdout: &out}
		if err := a.printMeshSettings(&meshfedv1.MeshSettings{MtlsMode: mode}); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, l := range strings.Split(out.String(), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && k == "mTLS mode" {
				found = true
				if strings.TrimSpace(v) != want {
					t.Errorf("%v: %q, want %q", mode, strings.TrimSpace(v), want)
				}
			}
		}
		if !found {
			t.Errorf("%v: no mTLS mode line in\n%s", mode, out.String())
		}
	}
}
