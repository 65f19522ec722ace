package cli_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshfed/meshfed/internal/testharness"
)

// TestE2ESVIDFetch attests with "meshfed svid fetch" against a real server
// and checks the three files with go-spiffe and with openssl.
func TestE2ESVIDFetch(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real server")
	}
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl is not on PATH: this test checks the written files with 'openssl verify'; install openssl")
	}
	c := testharness.StartCluster(t, 1, testharness.ClusterOptions{Name: "dev", Dev: true})
	const id = "spiffe://dev.mesh/ns/default/sa/web"

	token := func(t *testing.T) string {
		t.Helper()
		stdout, stderr, err := c.RunCLI(t, "tokens", "create", "--kind", "workload-join", "--spiffe-id", id, "--ttl", "10m", "--uses", "1")
		if err != nil {
			t.Fatalf("tokens create: %v: %s", err, stderr)
		}
		return strings.TrimSpace(stdout)
	}

	dir := filepath.Join(t.TempDir(), "certs")
	tok := token(t)
	stdout, stderr, err := c.RunCLI(t, "svid", "fetch", "--token", tok, "--out", dir)
	if err != nil {
		t.Fatalf("svid fetch: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	svidPath, keyPath, bundlePath := filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "bundle.pem")
	if !strings.HasPrefix(stdout, id+": SVID valid until ") || !strings.Contains(stdout, svidPath) || strings.Count(stdout, "\n") != 1 {
		t.Errorf("stdout %q", stdout)
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem: %v, %v", fi, err)
	}
	svid, err := x509svid.Load(svidPath, keyPath)
	if err != nil {
		t.Fatalf("loading the SVID: %v", err)
	}
	bundle, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString("dev.mesh"), bundlePath)
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil || got.String() != id {
		t.Fatalf("Verify = %s, %v; want %s", got, err, id)
	}
	if len(svid.Certificates) < 2 {
		t.Fatalf("svid.pem holds %d certificates, want the leaf and its intermediate", len(svid.Certificates))
	}

	// openssl verifies the leaf with the intermediates from svid.pem as
	// untrusted certificates and bundle.pem as the trust anchors.
	inter := filepath.Join(t.TempDir(), "intermediates.pem")
	var interPEM []byte
	rest, _ := os.ReadFile(svidPath)
	blocks := strings.SplitAfter(string(rest), "-----END CERTIFICATE-----\n")
	for _, b := range blocks[1:] {
		interPEM = append(interPEM, b...)
	}
	if err := os.WriteFile(inter, interPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "verify", "-CAfile", bundlePath, "-untrusted", inter, svidPath).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	// svid.pem itself works as the untrusted list (as docs/workload-identity.md shows).
	out, err = exec.Command(openssl, "verify", "-CAfile", bundlePath, "-untrusted", svidPath, svidPath).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify -untrusted svid.pem: %v\n%s", err, out)
	}
	// And the key is the certificate's.
	pub1, err := exec.Command(openssl, "pkey", "-in", keyPath, "-pubout").Output()
	if err != nil {
		t.Fatalf("openssl pkey: %v", err)
	}
	pub2, err := exec.Command(openssl, "x509", "-in", svidPath, "-noout", "-pubkey").Output()
	if err != nil {
		t.Fatalf("openssl x509: %v", err)
	}
	if string(pub1) != string(pub2) {
		t.Errorf("key.pem's public key\n%s\ndiffers from the certificate's\n%s", pub1, pub2)
	}

	t.Run("used-up token", func(t *testing.T) {
		_, stderr, err := c.RunCLI(t, "svid", "fetch", "--token", tok, "--out", t.TempDir())
		if testharness.ExitCode(err) != 1 || !strings.Contains(stderr, "Error: PERMISSION_DENIED: attestation refused by ") || !strings.Contains(stderr, "no uses left") {
			t.Errorf("exit %d, stderr %q", testharness.ExitCode(err), stderr)
		}
	})
	t.Run("unknown token", func(t *testing.T) {
		_, stderr, err := c.RunCLI(t, "svid", "fetch", "--token", "mfd_nope", "--out", t.TempDir())
		if testharness.ExitCode(err) != 1 || !strings.Contains(stderr, "Error: UNAUTHENTICATED: attestation refused by ") {
			t.Errorf("exit %d, stderr %q", testharness.ExitCode(err), stderr)
		}
	})
	t.Run("json with the expected identity", func(t *testing.T) {
		dir := t.TempDir()
		stdout, stderr, err := c.RunCLI(t, "svid", "fetch", "--token", token(t), "--out", dir, "--spiffe-id", id, "-o", "json")
		if err != nil {
			t.Fatalf("%v: %s", err, stderr)
		}
		var doc struct {
			SPIFFEID    string    `json:"spiffe_id"`
			ExpiresAt   time.Time `json:"expires_at"`
			AuthorityID string    `json:"authority_id"`
			SVIDFile    string    `json:"svid_file"`
			KeyFile     string    `json:"key_file"`
			BundleFile  string    `json:"bundle_file"`
		}
		if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
			t.Fatalf("%v: %s", err, stdout)
		}
		if doc.SPIFFEID != id || doc.AuthorityID == "" || doc.KeyFile != filepath.Join(dir, "key.pem") || time.Until(doc.ExpiresAt) < 50*time.Minute {
			t.Errorf("document %+v", doc)
		}
	})
	t.Run("another identity", func(t *testing.T) {
		_, stderr, err := c.RunCLI(t, "svid", "fetch", "--token", token(t), "--out", t.TempDir(), "--spiffe-id", "spiffe://dev.mesh/ns/default/sa/db")
		if testharness.ExitCode(err) != 1 || !strings.Contains(stderr, "Error: INVALID_ARGUMENT: attestation refused by ") || !strings.Contains(stderr, "sa/db") {
			t.Errorf("exit %d, stderr %q", testharness.ExitCode(err), stderr)
		}
	})
}
