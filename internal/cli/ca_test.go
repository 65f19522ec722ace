package cli

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// fakeCADefaults are the settings the fake answers before any update, like
// the real server's defaults.
func fakeCADefaults(s *meshfedv1.CASettings) *meshfedv1.CASettings {
	if s.Meta == nil {
		s.Meta = &meshfedv1.Meta{}
	}
	s.Meta.Name = "global"
	if s.KeyAlgorithm == 0 {
		s.KeyAlgorithm = meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256
	}
	if s.RootTtl == nil {
		s.RootTtl = durationpb.New(87600 * time.Hour)
	}
	if s.IntermediateTtl == nil {
		s.IntermediateTtl = durationpb.New(720 * time.Hour)
	}
	if s.SvidTtl == nil {
		s.SvidTtl = durationpb.New(time.Hour)
	}
	return s
}

func (f *fakeServer) GetCASettings(context.Context, *meshfedv1.GetCASettingsRequest) (*meshfedv1.CASettings, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.caSettings == nil {
		return fakeCADefaults(&meshfedv1.CASettings{}), nil
	}
	return proto.CloneOf(f.caSettings), nil
}

// UpdateCASettings checks the expected version and the SVID lifetime's
// lower bound, as the real server does, and bumps the version.
func (f *fakeServer) UpdateCASettings(_ context.Context, r *meshfedv1.UpdateCASettingsRequest) (*meshfedv1.CASettings, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.caUpdates = append(f.caUpdates, r)
	var cur uint64
	if f.caSettings != nil {
		cur = f.caSettings.GetMeta().GetVersion()
	}
	if e := r.GetExpectedVersion(); e != 0 && e != cur {
		return nil, status.Errorf(codes.FailedPrecondition, "version mismatch: settings \"global\": stored version %d, expected %d", cur, e)
	}
	if d := r.GetSettings().GetSvidTtl(); d != nil && d.AsDuration() < 10*time.Second {
		return nil, status.Errorf(codes.InvalidArgument, "invalid settings.svid_ttl: %s is out of range: must be between 10s and 219000h0m0s", d.AsDuration())
	}
	s := fakeCADefaults(proto.CloneOf(r.GetSettings()))
	s.Meta.Version = cur + 1
	f.caSettings = s
	return proto.CloneOf(s), nil
}

var fakeAuthorities = []*meshfedv1.Authority{
	{
		Id: "a1", State: meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRING, KeyAlgorithm: meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256,
		RootNotAfter: timestamppb.New(time.Date(2036, 1, 2, 3, 4, 5, 0, time.UTC)), IntermediateNotAfter: timestamppb.New(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)),
		StateTime: timestamppb.New(time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)), WatcherSvids: 3,
	},
	{
		Id: "b2", State: meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE, KeyAlgorithm: meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P384, External: true,
		RootNotAfter: timestamppb.New(time.Date(2036, 1, 5, 0, 0, 0, 0, time.UTC)), IntermediateNotAfter: timestamppb.New(time.Date(2026, 2, 4, 0, 0, 0, 0, time.UTC)),
		StateTime: timestamppb.New(time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)),
	},
}

func fakeCAStatus() *meshfedv1.CAStatus {
	st := &meshfedv1.CAStatus{TrustDomain: "test.mesh", BundleSequence: 40, Watchers: 5, WatchersCurrent: 5, RotationStep: "retire"}
	for _, a := range fakeAuthorities {
		st.Authorities = append(st.Authorities, proto.CloneOf(a))
	}
	return st
}

func (f *fakeServer) GetCAStatus(context.Context, *meshfedv1.GetCAStatusRequest) (*meshfedv1.CAStatus, error) {
	return fakeCAStatus(), nil
}

const fakeRootPEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"

func (f *fakeServer) GetTrustBundle(context.Context, *meshfedv1.GetTrustBundleRequest) (*meshfedv1.GetTrustBundleResponse, error) {
	return &meshfedv1.GetTrustBundleResponse{Bundles: []*meshfedv1.TrustBundle{
		{TrustDomain: "test.mesh", RootsPem: []string{fakeRootPEM, strings.TrimSuffix(fakeRootPEM, "\n")}, Sequence: 40},
	}}, nil
}

// RotateCA streams the progress of a whole rotation the way the server
// does: one message per step, then a final one without a step carrying the
// status.
func (f *fakeServer) RotateCA(r *meshfedv1.RotateCARequest, stream meshfedv1.CAService_RotateCAServer) error {
	f.mu.Lock()
	f.rotateRequests = append(f.rotateRequests, r)
	f.mu.Unlock()
	for _, p := range []*meshfedv1.RotateCAProgress{
		{Step: meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE, Message: "resuming: authority b2 is prepared"},
		{Step: meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE, Message: "authority b2 is active; a1 is retiring", Done: true},
		{Step: meshfedv1.RotationStep_ROTATION_STEP_RETIRE, Message: "authority a1 is retired", Done: true},
		{Message: "rotation finished", Done: true, Status: fakeCAStatus()},
	} {
		if err := stream.Send(p); err != nil {
			return err
		}
	}
	return nil
}

// ImportAuthority checks that the key belongs to the root (or to the
// intermediate) and answers with the new prepared authority.
func (f *fakeServer) ImportAuthority(_ context.Context, r *meshfedv1.ImportAuthorityRequest) (*meshfedv1.Authority, error) {
	f.mu.Lock()
	f.caImports = append(f.caImports, r)
	f.mu.Unlock()
	certPEM, what := r.GetRootPem(), "root"
	if r.GetIntermediatePem() != "" {
		certPEM, what = r.GetIntermediatePem(), "intermediate"
	}
	cb, _ := pem.Decode([]byte(certPEM))
	kb, _ := pem.Decode([]byte(r.GetPrivateKeyPem()))
	if cb == nil || kb == nil || kb.Type != "PRIVATE KEY" {
		return nil, status.Error(codes.InvalidArgument, "invalid certificate authority: root_pem: no PEM block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "invalid certificate authority: root_pem: %v", err)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "private_key_pem: invalid key: %v", err)
	}
	if !key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
		return nil, status.Errorf(codes.InvalidArgument, "invalid certificate authority: private_key_pem does not belong to the %s: public keys differ", what)
	}
	return &meshfedv1.Authority{
		Id: "c3", State: meshfedv1.AuthorityState_AUTHORITY_STATE_PREPARED, KeyAlgorithm: meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256,
		External: true, RootPem: r.GetRootPem(), RootNotAfter: timestamppb.New(cert.NotAfter),
		StateTime: timestamppb.New(time.Date(2026, 1, 6, 0, 0, 0, 0, time.UTC)),
	}, nil
}

func (f *fakeServer) caUpdateCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.caUpdates)
}

func (f *fakeServer) lastCAUpdate(t *testing.T) *meshfedv1.UpdateCASettingsRequest {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.caUpdates) == 0 {
		t.Fatal("the server received no UpdateCASettings")
	}
	return f.caUpdates[len(f.caUpdates)-1]
}

func (f *fakeServer) importCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.caImports)
}

func TestCASettingsShow(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}

	r := run(t, d, "ca", "settings")
	r.expect(t, ExitOK)
	want := "Key algorithm:    ecdsa-p256\nRoot TTL:         87600h\nIntermediate TTL: 720h\nSVID TTL:         1h\nVersion:          0\n"
	if r.stdout != want {
		t.Errorf("stdout\n%s\nwant\n%s", r.stdout, want)
	}

	r = run(t, d, "ca", "settings", "-o", "json")
	r.expect(t, ExitOK)
	var raw json.RawMessage
	oneJSONDocument(t, r.stdout, &raw)
	var s meshfedv1.CASettings
	if err := protojson.Unmarshal(raw, &s); err != nil || s.GetSvidTtl().AsDuration() != time.Hour || s.GetKeyAlgorithm() != meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256 {
		t.Errorf("got %v, %v", &s, err)
	}
	if n := f.caUpdateCount(); n != 0 {
		t.Errorf("showing the settings sent %d updates", n)
	}
}

func TestCASettingsUpdate(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}

	// Only the given field changes; the version read is the expected one.
	r := run(t, d, "ca", "settings", "--svid-ttl", "5m")
	r.expect(t, ExitOK)
	if !strings.Contains(r.stdout, "SVID TTL:         5m\n") || !strings.Contains(r.stdout, "Version:          1\n") {
		t.Errorf("stdout %q", r.stdout)
	}
	want := &meshfedv1.UpdateCASettingsRequest{Settings: fakeCADefaults(&meshfedv1.CASettings{SvidTtl: durationpb.New(5 * time.Minute)})}
	if got := f.lastCAUpdate(t); !proto.Equal(got, want) {
		t.Errorf("request\n got %v\nwant %v", got, want)
	}

	r = run(t, d, "ca", "settings", "--key-algorithm", "RSA-4096", "--root-ttl", "43800h", "--intermediate-ttl", "360h", "-o", "json")
	r.expect(t, ExitOK)
	var raw json.RawMessage
	oneJSONDocument(t, r.stdout, &raw)
	got := f.lastCAUpdate(t)
	if got.GetExpectedVersion() != 1 || got.GetSettings().GetKeyAlgorithm() != meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_4096 ||
		got.GetSettings().GetRootTtl().AsDuration() != 43800*time.Hour || got.GetSettings().GetIntermediateTtl().AsDuration() != 360*time.Hour ||
		got.GetSettings().GetSvidTtl().AsDuration() != 5*time.Minute {
		t.Errorf("request %v", got)
	}

	t.Run("0 restores the default", func(t *testing.T) {
		r := run(t, d, "ca", "settings", "--svid-ttl", "0")
		r.expect(t, ExitOK)
		if got := f.lastCAUpdate(t); got.GetSettings().GetSvidTtl() != nil || got.GetSettings().GetRootTtl().AsDuration() != 43800*time.Hour {
			t.Errorf("request %v", got)
		}
		if !strings.Contains(r.stdout, "SVID TTL:         1h\n") {
			t.Errorf("stdout %q", r.stdout)
		}
	})
	t.Run("stale expected version", func(t *testing.T) {
		r := run(t, d, "ca", "settings", "--svid-ttl", "2m", "--expected-version", "1")
		r.expect(t, ExitError, "Error: FAILED_PRECONDITION: version mismatch")
		if cur, _ := f.GetCASettings(context.Background(), nil); cur.GetSvidTtl().AsDuration() != time.Hour {
			t.Errorf("settings changed: %v", cur)
		}
	})
	t.Run("the server's bound names the flag", func(t *testing.T) {
		r := run(t, d, "ca", "settings", "--svid-ttl", "1s")
		r.expect(t, ExitError)
		if want := "Error: INVALID_ARGUMENT: --svid-ttl: invalid settings.svid_ttl: 1s is out of range"; !strings.HasPrefix(r.stderr, want) {
			t.Errorf("stderr %q, want prefix %q", r.stderr, want)
		}
	})

	before := f.caUpdateCount()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--key-algorithm", "dsa"}, `--key-algorithm "dsa": must be one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-4096`},
		{[]string{"--key-algorithm", ""}, `--key-algorithm "": must be one of`},
		{[]string{"--svid-ttl", "-5m"}, "--svid-ttl -5m0s: must not be negative"},
		{[]string{"--root-ttl", "-1h", "--svid-ttl", "5m"}, "--root-ttl -1h0m0s: must not be negative"},
		{[]string{"--intermediate-ttl", "soon"}, `invalid argument "soon" for "--intermediate-ttl"`},
		{[]string{"--expected-version", "3"}, "--expected-version needs a setting to change"},
		{[]string{"now"}, `unexpected argument "now"`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			run(t, d, append([]string{"ca", "settings"}, tt.args...)...).expect(t, ExitUsage, tt.want, "Run 'meshfed ca settings --help'")
		})
	}
	if n := f.caUpdateCount(); n != before {
		t.Errorf("%d updates sent for bad command lines", n-before)
	}
}

func TestFormatTTL(t *testing.T) {
	for d, want := range map[time.Duration]string{
		87600 * time.Hour: "87600h", time.Hour: "1h", 90 * time.Minute: "1h30m", 5 * time.Minute: "5m",
		45 * time.Second: "45s", time.Hour + time.Second: "1h0m1s", 1500 * time.Millisecond: "1.5s",
	} {
		if got := formatTTL(durationpb.New(d)); got != want {
			t.Errorf("formatTTL(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestCAStatusAndBundle(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}

	r := run(t, d, "ca", "status")
	r.expect(t, ExitOK)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	var header int
	for i, l := range lines {
		if strings.HasPrefix(l, "AUTHORITY") {
			header = i
		}
	}
	if got := strings.Fields(lines[header]); !reflect.DeepEqual(got, authorityHeaders) {
		t.Fatalf("header %q in\n%s", got, r.stdout)
	}
	wantRows := [][]string{
		{"a1", "retiring", "ecdsa-p256", "2036-01-02T03:04:05Z", "2026-02-01T00:00:00Z", "no", "3", "2026-01-05T00:00:00Z"},
		{"b2", "active", "ecdsa-p384", "2036-01-05T00:00:00Z", "2026-02-04T00:00:00Z", "yes", "0", "2026-01-05T00:00:00Z"},
	}
	for i, want := range wantRows {
		if got := strings.Fields(lines[header+1+i]); !reflect.DeepEqual(got, want) {
			t.Errorf("row %d %q, want %q", i, got, want)
		}
	}
	for _, kv := range []string{"Trust domain:    test.mesh", "Bundle sequence: 40", "Bundle watchers: 5 (5 on the current bundle)", "Rotation step:   retire"} {
		if !strings.Contains(r.stdout, kv) {
			t.Errorf("stdout lacks %q:\n%s", kv, r.stdout)
		}
	}

	r = run(t, d, "ca", "status", "-o", "json")
	r.expect(t, ExitOK)
	var doc struct {
		Authorities []struct {
			ID           string `json:"id"`
			WatcherSvids int    `json:"watcherSvids"`
		} `json:"authorities"`
	}
	oneJSONDocument(t, r.stdout, &doc)
	if len(doc.Authorities) != 2 || doc.Authorities[0].WatcherSvids != 3 {
		t.Errorf("json %+v", doc)
	}

	r = run(t, d, "ca", "bundle")
	r.expect(t, ExitOK)
	if r.stdout != fakeRootPEM+fakeRootPEM {
		t.Errorf("bundle %q", r.stdout)
	}
	r = run(t, d, "ca", "bundle", "--federated")
	r.expect(t, ExitOK)
	if !strings.HasPrefix(r.stdout, "# trust domain test.mesh, sequence 40\n-----BEGIN CERTIFICATE-----") {
		t.Errorf("federated bundle %q", r.stdout)
	}
	r = run(t, d, "ca", "bundle", "-o", "json")
	r.expect(t, ExitOK)
	var b struct {
		Bundles []struct {
			TrustDomain string   `json:"trustDomain"`
			RootsPem    []string `json:"rootsPem"`
		} `json:"bundles"`
	}
	oneJSONDocument(t, r.stdout, &b)
	if len(b.Bundles) != 1 || b.Bundles[0].TrustDomain != "test.mesh" || len(b.Bundles[0].RootsPem) != 2 {
		t.Errorf("json %+v", b)
	}
}

func TestCARotate(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}

	r := run(t, d, "ca", "rotate")
	r.expect(t, ExitOK)
	wantStart := "[activate] resuming: authority b2 is prepared\n[activate] authority b2 is active; a1 is retiring\n[retire] authority a1 is retired\nrotation finished\n\nTrust domain:"
	if !strings.HasPrefix(r.stdout, wantStart) {
		t.Errorf("stdout\n%s\nwant it to start with\n%s", r.stdout, wantStart)
	}
	if !strings.Contains(r.stdout, "WATCHER-SVIDS") {
		t.Errorf("no status table:\n%s", r.stdout)
	}

	r = run(t, d, "ca", "rotate", "--step", "activate", "--force", "--timeout", "90s", "-o", "json")
	r.expect(t, ExitOK)
	var raw json.RawMessage
	oneJSONDocument(t, r.stdout, &raw)
	var p meshfedv1.RotateCAProgress
	if err := protojson.Unmarshal(raw, &p); err != nil || !p.GetDone() || len(p.GetStatus().GetAuthorities()) != 2 {
		t.Errorf("json %v, %v", &p, err)
	}
	if !strings.Contains(r.stderr, "[retire] authority a1 is retired\nrotation finished\n") {
		t.Errorf("progress on stderr %q", r.stderr)
	}
	f.mu.Lock()
	req := f.rotateRequests[len(f.rotateRequests)-1]
	f.mu.Unlock()
	if req.GetStep() != meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE || !req.GetForce() || req.GetTimeout().AsDuration() != 90*time.Second {
		t.Errorf("request %v", req)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--step", "finish"}, `--step "finish": must be one of prepare, activate, retire`},
		{[]string{"--timeout", "-1s"}, "--timeout -1s: must not be negative"},
	} {
		run(t, d, append([]string{"ca", "rotate"}, tt.args...)...).expect(t, ExitUsage, tt.want)
	}
}

// testCA makes a self-signed CA certificate and its key.
func testCA(t *testing.T, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func certPEM(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

func TestCAImport(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}
	root, rootKey := testCA(t, "operator root", nil, nil)
	inter, interKey := testCA(t, "operator intermediate", root, rootKey)
	_, otherKey := testCA(t, "other", nil, nil)

	sec1, err := x509.MarshalECPrivateKey(rootKey)
	if err != nil {
		t.Fatal(err)
	}
	rootKeyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}))
	pkcs8, err := x509.MarshalPKCS8PrivateKey(interKey)
	if err != nil {
		t.Fatal(err)
	}
	interKeyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))
	otherDER, _ := x509.MarshalPKCS8PrivateKey(otherKey)
	otherKeyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: otherDER}))
	// Key material as it appears in a file: no output may contain it.
	secrets := []string{
		strings.Split(rootKeyPEM, "\n")[1], strings.Split(interKeyPEM, "\n")[1], strings.Split(otherKeyPEM, "\n")[1],
		"PRIVATE KEY",
	}
	noSecrets := func(t *testing.T, r result) {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(r.stdout, s) || strings.Contains(r.stderr, s) {
				t.Errorf("output contains key material %q:\nstdout %s\nstderr %s", s, r.stdout, r.stderr)
			}
		}
	}

	// openssl writes text before the PEM block with "x509 -text"; an
	// "EC PARAMETERS" block precedes the key with "ecparam -genkey".
	rootFile := writeFile(t, "root.pem", "Certificate:\n    Data: ...\n"+certPEM(root))
	rootKeyFile := writeFile(t, "root.key", "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"+rootKeyPEM)
	interFile := writeFile(t, "inter.pem", certPEM(inter))
	interKeyFile := writeFile(t, "inter.key", interKeyPEM)
	otherKeyFile := writeFile(t, "other.key", otherKeyPEM)

	t.Run("root and its key", func(t *testing.T) {
		r := run(t, d, "ca", "import", "--root", rootFile, "--key", rootKeyFile)
		r.expect(t, ExitOK)
		noSecrets(t, r)
		if !strings.HasPrefix(r.stdout, "Imported authority c3 (ecdsa-p256); it is prepared.\n") || !strings.Contains(r.stdout, `Run "meshfed ca rotate"`) ||
			!strings.Contains(r.stdout, "WATCHER-SVIDS") {
			t.Errorf("stdout\n%s", r.stdout)
		}
		f.mu.Lock()
		req := f.caImports[len(f.caImports)-1]
		f.mu.Unlock()
		if req.GetRootPem() != certPEM(root) || req.GetIntermediatePem() != "" {
			t.Errorf("root_pem %q, intermediate_pem %q", req.GetRootPem(), req.GetIntermediatePem())
		}
		// The SEC 1 key is sent as PKCS#8.
		b, _ := pem.Decode([]byte(req.GetPrivateKeyPem()))
		if b == nil || b.Type != "PRIVATE KEY" {
			t.Fatalf("private_key_pem is not PKCS#8 PEM")
		}
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil || !rootKey.Equal(k) {
			t.Errorf("private_key_pem is not the root's key (%v)", err)
		}
	})
	t.Run("intermediate and its key, as JSON", func(t *testing.T) {
		r := run(t, d, "ca", "import", "--root", rootFile, "--intermediate", interFile, "--key", interKeyFile, "-o", "json")
		r.expect(t, ExitOK)
		noSecrets(t, r)
		var raw json.RawMessage
		oneJSONDocument(t, r.stdout, &raw)
		var au meshfedv1.Authority
		if err := protojson.Unmarshal(raw, &au); err != nil || au.GetState() != meshfedv1.AuthorityState_AUTHORITY_STATE_PREPARED || !au.GetExternal() {
			t.Errorf("json %v, %v", &au, err)
		}
		f.mu.Lock()
		req := f.caImports[len(f.caImports)-1]
		f.mu.Unlock()
		if req.GetIntermediatePem() != certPEM(inter) || req.GetPrivateKeyPem() != interKeyPEM {
			t.Errorf("request %v", req)
		}
	})
	t.Run("the server's refusal names the flag", func(t *testing.T) {
		r := run(t, d, "ca", "import", "--root", rootFile, "--key", otherKeyFile)
		r.expect(t, ExitError, "Error: INVALID_ARGUMENT: --key: invalid certificate authority: private_key_pem does not belong to the root")
		noSecrets(t, r)
	})

	missing := filepath.Join(t.TempDir(), "missing.key")
	encrypted := writeFile(t, "enc.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkq\n-----END ENCRYPTED PRIVATE KEY-----\n")
	legacyEncrypted := writeFile(t, "legacy.key", "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00000000000000000000000000000000\n\nAAAA\n-----END EC PRIVATE KEY-----\n")
	garbage := writeFile(t, "garbage.pem", "not a pem file\n")
	before := f.importCount()
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no root", []string{"--key", rootKeyFile}, ExitUsage, "--root is required"},
		{"no key", []string{"--root", rootFile}, ExitUsage, "--key is required (the private key of the root, PEM)"},
		{"no key for the intermediate", []string{"--root", rootFile, "--intermediate", interFile}, ExitUsage, "--key is required (the private key of the intermediate, PEM)"},
		{"missing key file", []string{"--root", rootFile, "--key", missing}, ExitError, "Error: --key: open " + missing + ": no such file or directory"},
		{"missing root file", []string{"--root", missing, "--key", rootKeyFile}, ExitError, "Error: --root: open " + missing},
		{"key given as root", []string{"--root", rootKeyFile, "--key", rootKeyFile}, ExitError, "--root " + rootKeyFile + ": holds a private key, not a certificate"},
		{"certificate given as key", []string{"--root", rootFile, "--key", rootFile}, ExitError, "--key " + rootFile + ": no PEM private key found"},
		{"not PEM", []string{"--root", garbage, "--key", rootKeyFile}, ExitError, "--root " + garbage + ": no PEM certificate found"},
		{"bad intermediate", []string{"--root", rootFile, "--intermediate", garbage, "--key", rootKeyFile}, ExitError, "--intermediate " + garbage + ": no PEM certificate found"},
		{"encrypted key", []string{"--root", rootFile, "--key", encrypted}, ExitError, "--key " + encrypted + ": the key is encrypted"},
		{"legacy encrypted key", []string{"--root", rootFile, "--key", legacyEncrypted}, ExitError, "--key " + legacyEncrypted + ": the key is encrypted"},
		{"two keys", []string{"--root", rootFile, "--key", writeFile(t, "two.key", interKeyPEM+otherKeyPEM)}, ExitError, "holds more than one private key"},
		{"argument", []string{"root.pem"}, ExitUsage, `unexpected argument "root.pem"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, d, append([]string{"ca", "import"}, tt.args...)...)
			r.expect(t, tt.code, tt.want)
			noSecrets(t, r)
		})
	}
	if n := f.importCount(); n != before {
		t.Errorf("%d imports sent for bad input", n-before)
	}
}

func TestWithFieldFlag(t *testing.T) {
	fields := map[string]string{"settings.svid_ttl": "--svid-ttl", "settings.intermediate_ttl": "--intermediate-ttl", "root_pem": "--root", "private_key_pem": "--key"}
	for msg, want := range map[string]string{
		"invalid settings.svid_ttl: 2h is more than half of intermediate_ttl (1h)": "--svid-ttl",
		"invalid settings.intermediate_ttl: 1h is more than half of root_ttl (1h)": "--intermediate-ttl",
		"invalid certificate authority: root_pem: not a CA certificate":            "--root",
		"private_key_pem: invalid key: no PEM block found":                         "--key",
		"invalid root_pem: required":                                               "--root",
		"invalid certificate authority: xroot_pem: other":                          "",
		"something else": "",
	} {
		err := withFieldFlag(status.Error(codes.InvalidArgument, msg), fields)
		got := errorMessage(err)
		wantMsg := "INVALID_ARGUMENT: " + msg
		if want != "" {
			wantMsg = "INVALID_ARGUMENT: " + want + ": " + msg
		}
		if got != wantMsg {
			t.Errorf("%q: got %q, want %q", msg, got, wantMsg)
		}
	}
	// Other codes are left alone.
	err := withFieldFlag(status.Error(codes.NotFound, "invalid root_pem"), fields)
	if got := errorMessage(err); got != "NOT_FOUND: invalid root_pem" {
		t.Errorf("got %q", got)
	}
}
