package cli_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/testharness"
)

// TestE2ECAAndIdentities drives "ca settings", "identities", "ca import" and
// "ca rotate" of the built binary against a real one-server cluster.
func TestE2ECAAndIdentities(t *testing.T) {
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
	// mustFail runs a command that must exit with code and name want on
	// standard error.
	mustFail := func(t *testing.T, code int, want string, args ...string) {
		t.Helper()
		stdout, stderr, err := c.RunCLI(t, args...)
		if got := testharness.ExitCode(err); got != code || !strings.Contains(stderr, want) {
			t.Errorf("meshfed %s: exit %d, want %d with %q on stderr\nstdout: %s\nstderr: %s", strings.Join(args, " "), got, code, want, stdout, stderr)
		}
	}
	settings := func(t *testing.T) *meshfedv1.CASettings {
		t.Helper()
		var s meshfedv1.CASettings
		if err := protojson.Unmarshal([]byte(mustRun(t, "ca", "settings", "-o", "json")), &s); err != nil {
			t.Fatal(err)
		}
		return &s
	}
	caStatus := func(t *testing.T, extra ...string) *meshfedv1.CAStatus {
		t.Helper()
		var st meshfedv1.CAStatus
		if err := protojson.Unmarshal([]byte(mustRun(t, append([]string{"ca", "status", "-o", "json"}, extra...)...)), &st); err != nil {
			t.Fatal(err)
		}
		return &st
	}

	t.Run("ca settings", func(t *testing.T) {
		def := settings(t)
		if def.GetKeyAlgorithm() != meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256 || def.GetSvidTtl().AsDuration() != time.Hour ||
			def.GetIntermediateTtl().AsDuration() != 720*time.Hour || def.GetRootTtl().AsDuration() != 87600*time.Hour {
			t.Errorf("default settings %v", def)
		}
		out := mustRun(t, "ca", "settings", "--svid-ttl", "5m")
		if !strings.Contains(out, "SVID TTL:") || !strings.Contains(out, "5m") {
			t.Errorf("settings printed %q", out)
		}
		got := settings(t)
		if got.GetSvidTtl().AsDuration() != 5*time.Minute || got.GetMeta().GetVersion() == 0 ||
			got.GetKeyAlgorithm() != def.GetKeyAlgorithm() || got.GetRootTtl().AsDuration() != def.GetRootTtl().AsDuration() ||
			got.GetIntermediateTtl().AsDuration() != def.GetIntermediateTtl().AsDuration() {
			t.Errorf("after --svid-ttl 5m: %v", got)
		}

		// Bad input exits non-zero, names the flag and changes nothing.
		mustFail(t, 2, "--key-algorithm", "ca", "settings", "--key-algorithm", "dsa-1024")
		mustFail(t, 2, "--svid-ttl -5m0s: must not be negative", "ca", "settings", "--svid-ttl", "-5m")
		mustFail(t, 2, "--root-ttl", "ca", "settings", "--root-ttl", "-1h", "--svid-ttl", "10m")
		mustFail(t, 1, "INVALID_ARGUMENT: --svid-ttl: invalid settings.svid_ttl", "ca", "settings", "--svid-ttl", "1s")
		mustFail(t, 1, "INVALID_ARGUMENT: --svid-ttl: invalid settings.svid_ttl", "ca", "settings", "--svid-ttl", "400h")
		mustFail(t, 1, "INVALID_ARGUMENT: --intermediate-ttl: invalid settings.intermediate_ttl", "ca", "settings", "--intermediate-ttl", "50000h")
		mustFail(t, 1, "FAILED_PRECONDITION", "ca", "settings", "--svid-ttl", "7m", "--expected-version", "1")
		if after := settings(t); !proto.Equal(after, got) {
			t.Errorf("bad input changed the settings:\n before %v\n after  %v", got, after)
		}
	})

	t.Run("identities", func(t *testing.T) {
		out := mustRun(t, "identities", "create", "web", "--svid-ttl", "2m", "--dns-name", "web.default.svc")
		if !strings.HasPrefix(out, "Created identity default/web: spiffe://dev.mesh/ns/default/sa/web (version ") {
			t.Errorf("create printed %q", out)
		}
		mustRun(t, "identities", "create", "payments", "-n", "shop", "--service-account", "payments-sa")
		mustFail(t, 1, "ALREADY_EXISTS", "identities", "create", "web")
		mustFail(t, 2, "--svid-ttl", "identities", "create", "api", "--svid-ttl", "-1m")
		mustFail(t, 1, "--dns-name: invalid identity.dns_names[0]", "identities", "create", "api", "--dns-name", "not a name")

		var list meshfedv1.ListIdentitiesResponse
		if err := protojson.Unmarshal([]byte(mustRun(t, "identities", "list", "-o", "json")), &list); err != nil {
			t.Fatal(err)
		}
		ids := map[string]string{}
		for _, i := range list.GetIdentities() {
			ids[i.GetMeta().GetNamespace()+"/"+i.GetMeta().GetName()] = i.GetSpiffeId()
		}
		if len(ids) != 2 || ids["default/web"] != "spiffe://dev.mesh/ns/default/sa/web" || ids["shop/payments"] != "spiffe://dev.mesh/ns/shop/sa/payments-sa" {
			t.Errorf("identities %v", ids)
		}
		table := mustRun(t, "identities", "list", "-n", "shop")
		if !strings.Contains(table, "SPIFFE-ID") || !strings.Contains(table, "payments-sa") || strings.Contains(table, "sa/web") {
			t.Errorf("table %q", table)
		}

		var web meshfedv1.Identity
		if err := protojson.Unmarshal([]byte(mustRun(t, "identities", "get", "web", "-o", "json")), &web); err != nil {
			t.Fatal(err)
		}
		if web.GetSvidTtl().AsDuration() != 2*time.Minute || len(web.GetDnsNames()) != 1 || web.GetDnsNames()[0] != "web.default.svc" {
			t.Errorf("identity %v", &web)
		}

		// An SVID for the registered identity has its lifetime, not the CA's.
		tok := strings.TrimSpace(mustRun(t, "tokens", "create", "--kind", "workload-join", "--spiffe-id", web.GetSpiffeId(), "--ttl", "10m", "--uses", "1"))
		var fetched struct {
			ExpiresAt time.Time `json:"expires_at"`
		}
		if err := json.Unmarshal([]byte(mustRun(t, "svid", "fetch", "--token", tok, "--out", t.TempDir(), "-o", "json")), &fetched); err != nil {
			t.Fatal(err)
		}
		if left := time.Until(fetched.ExpiresAt); left > 2*time.Minute+10*time.Second || left < time.Minute {
			t.Errorf("SVID of a 2m identity expires in %s", left)
		}

		if out := mustRun(t, "identities", "delete", "web"); out != "Deleted identity default/web\n" {
			t.Errorf("delete printed %q", out)
		}
		mustFail(t, 1, "NOT_FOUND", "identities", "get", "web")
		mustFail(t, 1, "NOT_FOUND", "identities", "delete", "web")
	})

	t.Run("import an operator root and rotate onto it", func(t *testing.T) {
		before := caStatus(t)
		if len(before.GetAuthorities()) != 1 || before.GetAuthorities()[0].GetState() != meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE {
			t.Fatalf("status before %v", before)
		}
		bootstrap := before.GetAuthorities()[0].GetId()

		dir := t.TempDir()
		rootFile, keyFile := filepath.Join(dir, "root.pem"), filepath.Join(dir, "root.key")
		rootPEM, keyPEM := operatorRoot(t)
		writeFile(t, rootFile, rootPEM)
		writeFile(t, keyFile, keyPEM)
		_, otherKeyPEM := operatorRoot(t)
		otherKey := filepath.Join(dir, "other.key")
		writeFile(t, otherKey, otherKeyPEM)

		// Bad input changes nothing.
		mustFail(t, 1, "--key: open "+filepath.Join(dir, "missing.key"), "ca", "import", "--root", rootFile, "--key", filepath.Join(dir, "missing.key"))
		mustFail(t, 2, "--key is required", "ca", "import", "--root", rootFile)
		mustFail(t, 1, "INVALID_ARGUMENT: --key: ", "ca", "import", "--root", rootFile, "--key", otherKey)
		if st := caStatus(t); len(st.GetAuthorities()) != 1 || st.GetBundleSequence() != before.GetBundleSequence() {
			t.Fatalf("bad imports changed the authorities: %v", st)
		}

		out := mustRun(t, "ca", "import", "--root", rootFile, "--key", keyFile, "-o", "json")
		if strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, strings.Split(keyPEM, "\n")[1]) {
			t.Fatalf("ca import printed the key: %s", out)
		}
		var imported meshfedv1.Authority
		if err := protojson.Unmarshal([]byte(out), &imported); err != nil {
			t.Fatal(err)
		}
		if imported.GetState() != meshfedv1.AuthorityState_AUTHORITY_STATE_PREPARED || !imported.GetExternal() || imported.GetRootPem() != rootPEM {
			t.Fatalf("imported %v", &imported)
		}
		st := caStatus(t)
		if len(st.GetAuthorities()) != 2 || st.GetRotationStep() != "activate" {
			t.Errorf("status after import %v", st)
		}
		// A second import while one is prepared is refused.
		mustFail(t, 1, "FAILED_PRECONDITION", "ca", "import", "--root", rootFile, "--key", keyFile)

		table := mustRun(t, "ca", "status")
		if !strings.Contains(table, "WATCHER-SVIDS") || !strings.Contains(table, imported.GetId()) {
			t.Errorf("ca status table %q", table)
		}

		// No watchers are connected: the whole rotation runs through.
		out = mustRun(t, "ca", "rotate", "--timeout", "2m")
		for _, want := range []string{"[activate] resuming: authority " + imported.GetId() + " is prepared", "[retire] authority " + bootstrap + " is retired", "rotation finished"} {
			if !strings.Contains(out, want) {
				t.Errorf("rotate output lacks %q:\n%s", want, out)
			}
		}

		// The server rewrote <data-dir>/ca.pem, which the harness passes as
		// MESHFED_CA_FILE. A client that trusts only the new bundle works.
		bundle := mustRun(t, "ca", "bundle")
		if bundle != rootPEM {
			t.Errorf("bundle after the rotation:\n%s\nwant the imported root only:\n%s", bundle, rootPEM)
		}
		newCA := filepath.Join(dir, "ca.pem")
		writeFile(t, newCA, bundle)
		after := caStatus(t, "--ca-file", newCA)
		states := map[string]meshfedv1.AuthorityState{}
		for _, au := range after.GetAuthorities() {
			states[au.GetId()] = au.GetState()
			if au.GetId() == imported.GetId() && au.GetWatcherSvids() != 0 {
				t.Errorf("watcher SVIDs %d without watchers", au.GetWatcherSvids())
			}
		}
		if states[imported.GetId()] != meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE || states[bootstrap] != meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRED {
			t.Errorf("after the rotation: %v", states)
		}
		if after.GetRotationStep() != "" {
			t.Errorf("rotation step %q after a complete rotation", after.GetRotationStep())
		}

		// A workload attests under the imported root.
		tok := strings.TrimSpace(mustRun(t, "--ca-file", newCA, "tokens", "create", "--kind", "workload-join", "--spiffe-id", "spiffe://dev.mesh/ns/default/sa/api", "--uses", "1"))
		certs := t.TempDir()
		mustRun(t, "--ca-file", newCA, "svid", "fetch", "--token", tok, "--out", certs)
		got, err := os.ReadFile(filepath.Join(certs, "bundle.pem"))
		if err != nil || string(got) != rootPEM {
			t.Errorf("bundle.pem %q (%v), want the imported root", got, err)
		}
	})
}

// operatorRoot makes a root CA certificate and its PKCS#8 key, as an
// operator's own PKI would.
func operatorRoot(t *testing.T) (rootPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Example Corp"}, CommonName: "Example Corp mesh root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(5 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
