package cli

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestSVIDFetch(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}
	dir := filepath.Join(t.TempDir(), "certs")

	r := run(t, d, "svid", "fetch", "--token", fakeJoinToken, "--out", dir)
	r.expect(t, ExitOK)
	svidPath, keyPath, bundlePath := filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "bundle.pem")
	want := fakeWorkloadID + ": SVID valid until "
	if !strings.HasPrefix(r.stdout, want) || !strings.HasSuffix(r.stdout, "wrote "+svidPath+", "+keyPath+", "+bundlePath+"\n") || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("stdout %q", r.stdout)
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key.pem: %v, %v", fi, err)
	}
	certPEM, err := os.ReadFile(svidPath)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	// The certificate is for the key generated here.
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Errorf("svid.pem and key.pem do not match: %v", err)
	}
	if _, err := x509svid.Load(svidPath, keyPath); err != nil {
		t.Errorf("the files are not an SVID: %v", err)
	}
	if _, err := os.Stat(bundlePath); err != nil {
		t.Error(err)
	}

	t.Run("json", func(t *testing.T) {
		dir := t.TempDir()
		r := run(t, d, "svid", "fetch", "--token", fakeJoinToken, "--out", dir, "--spiffe-id", fakeWorkloadID, "-o", "json")
		r.expect(t, ExitOK)
		var doc map[string]any
		oneJSONDocument(t, r.stdout, &doc)
		if doc["spiffe_id"] != fakeWorkloadID || doc["authority_id"] != "fake-authority" ||
			doc["svid_file"] != filepath.Join(dir, "svid.pem") || doc["key_file"] != filepath.Join(dir, "key.pem") || doc["bundle_file"] != filepath.Join(dir, "bundle.pem") {
			t.Errorf("document %v", doc)
		}
		exp, err := time.Parse(time.RFC3339, doc["expires_at"].(string))
		if err != nil || exp.Before(time.Now()) {
			t.Errorf("expires_at %v: %v", doc["expires_at"], err)
		}
	})

	t.Run("several addresses", func(t *testing.T) {
		dead := "127.0.0.1:1"
		r := run(t, d, "svid", "fetch", "--token", fakeJoinToken, "--out", t.TempDir(), "--addr", dead+", "+f.addr)
		r.expect(t, ExitOK)
	})

	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no out", []string{"svid", "fetch", "--token", fakeJoinToken}, ExitUsage, "--out is required"},
		{"bad spiffe id", []string{"svid", "fetch", "--token", fakeJoinToken, "--out", dir, "--spiffe-id", "http://x"}, ExitUsage, `--spiffe-id "http://x"`},
		{"bad timeout", []string{"svid", "fetch", "--token", fakeJoinToken, "--out", dir, "--timeout", "0s"}, ExitUsage, "--timeout 0s"},
		{"refused token", []string{"svid", "fetch", "--token", "wrong", "--out", dir}, ExitError,
			"Error: UNAUTHENTICATED: attestation refused by " + f.addr + ": invalid token: unknown or revoked\n"},
		{"other identity", []string{"svid", "fetch", "--token", fakeJoinToken, "--out", dir, "--spiffe-id", "spiffe://test.mesh/ns/default/sa/db"}, ExitError,
			"Error: INVALID_ARGUMENT: attestation refused by " + f.addr + ": invalid csr: the token is bound to " + fakeWorkloadID},
		{"no server answers", []string{"svid", "fetch", "--token", fakeJoinToken, "--out", dir, "--addr", "127.0.0.1:1", "--timeout", "500ms"}, ExitError,
			"Error: UNAVAILABLE: no SVID within 500ms (--timeout): attestation: context deadline exceeded; last error: attestation via 127.0.0.1:1: "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			run(t, d, tt.args...).expect(t, tt.code, tt.want)
		})
	}
	t.Run("no token", func(t *testing.T) {
		d := deps{getenv: f.env(envToken, "")}
		run(t, d, "svid", "fetch", "--out", dir).expect(t, ExitUsage, "a workload-join token is required")
	})
}
