package workloadapi_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"

	"github.com/meshfed/meshfed/internal/svidclient"
	"github.com/meshfed/meshfed/proxy/workloadapi"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitFor bounds every wait of the tests.
const waitFor = 15 * time.Second

// testCtx is a context ended with the test, or after waitFor.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds, failing the test after waitFor.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testCA is a root and an intermediate of one trust domain; leaves are
// signed by the intermediate, so SVID chains have two certificates.
type testCA struct {
	td       spiffeid.TrustDomain
	root     *x509.Certificate
	inter    *x509.Certificate
	interKey crypto.Signer
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func sign(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newCA(t *testing.T, td string) *testCA {
	t.Helper()
	now := time.Now()
	tdID := spiffeid.RequireTrustDomainFromString(td)
	caTemplate := func(cn string) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber:          serial(t),
			Subject:               pkix.Name{CommonName: cn},
			NotBefore:             now.Add(-time.Minute),
			NotAfter:              now.Add(time.Hour),
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			URIs:                  []*url.URL{tdID.ID().URL()},
		}
	}
	rootKey, interKey := newKey(t), newKey(t)
	rootTmpl := caTemplate(td + " root")
	root := sign(t, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	inter := sign(t, caTemplate(td+" intermediate"), root, interKey.Public(), rootKey)
	return &testCA{td: tdID, root: root, inter: inter, interKey: interKey}
}

// issue returns a fresh SVID (new key, new certificate) for path.
func (ca *testCA) issue(t *testing.T, path string) *x509svid.SVID {
	t.Helper()
	id, err := spiffeid.FromPath(ca.td, path)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	now := time.Now()
	leaf := sign(t, &x509.Certificate{
		SerialNumber: serial(t),
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(30 * time.Minute),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URL()},
	}, ca.inter, key.Public(), ca.interKey)
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf, ca.inter}, PrivateKey: key}
}

// bundle is the trust domain's bundle: its root.
func (ca *testCA) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.root})
}

// fakeSource is an in-memory workloadapi.Source that notifies like
// svidclient.Client does.
type fakeSource struct {
	mu      sync.Mutex
	svid    *x509svid.SVID
	bundles map[spiffeid.TrustDomain]*x509bundle.Bundle
	subs    map[chan svidclient.Event]struct{}
	// reads counts X509Bundles calls: each response the server builds
	// makes one.
	reads atomic.Int64
}

var _ workloadapi.Source = (*fakeSource)(nil)

func newFakeSource() *fakeSource {
	return &fakeSource{
		bundles: map[spiffeid.TrustDomain]*x509bundle.Bundle{},
		subs:    map[chan svidclient.Event]struct{}{},
	}
}

func (f *fakeSource) GetX509SVID() (*x509svid.SVID, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.svid == nil {
		return nil, errors.New("no SVID yet")
	}
	return f.svid, nil
}

func (f *fakeSource) X509Bundles() *x509bundle.Set {
	f.reads.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	set := x509bundle.NewSet()
	for _, b := range f.bundles {
		set.Add(b)
	}
	return set
}

func (f *fakeSource) Subscribe() (<-chan svidclient.Event, func()) {
	ch := make(chan svidclient.Event, 1)
	f.mu.Lock()
	f.subs[ch] = struct{}{}
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		delete(f.subs, ch)
		f.mu.Unlock()
	}
}

// subscribers is the number of open subscriptions: one per open stream.
func (f *fakeSource) subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

func (f *fakeSource) setSVID(s *x509svid.SVID) {
	f.mu.Lock()
	f.svid = s
	f.mu.Unlock()
	f.notify(svidclient.EventSVID)
}

func (f *fakeSource) setBundle(b *x509bundle.Bundle) {
	f.mu.Lock()
	f.bundles[b.TrustDomain()] = b
	f.mu.Unlock()
	f.notify(svidclient.EventBundle)
}

func (f *fakeSource) removeBundle(td spiffeid.TrustDomain) {
	f.mu.Lock()
	delete(f.bundles, td)
	f.mu.Unlock()
	f.notify(svidclient.EventBundle)
}

// notify wakes every subscriber, merging into a value not yet read.
func (f *fakeSource) notify(ev svidclient.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		e := ev
		for {
			select {
			case ch <- e:
			default:
				select {
				case old := <-ch:
					e |= old
				default:
				}
				continue
			}
			break
		}
	}
}

// shortDir is a fresh directory with a path short enough for sockets.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startServer serves src on a socket in a fresh directory until the test
// ends, and returns the server and the socket path.
func startServer(t *testing.T, src workloadapi.Source) (*workloadapi.Server, string) {
	t.Helper()
	path := filepath.Join(shortDir(t), "api.sock")
	srv, err := workloadapi.New(src, workloadapi.Config{Path: path, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return srv, path
}

// requireSameSVID fails unless got has want's ID, chain and private key.
func requireSameSVID(t *testing.T, got, want *x509svid.SVID) {
	t.Helper()
	if got.ID != want.ID {
		t.Fatalf("SVID ID = %s, want %s", got.ID, want.ID)
	}
	if len(got.Certificates) != len(want.Certificates) {
		t.Fatalf("chain of %d certificates, want %d", len(got.Certificates), len(want.Certificates))
	}
	for i := range got.Certificates {
		if !got.Certificates[i].Equal(want.Certificates[i]) {
			t.Fatalf("certificate %d of the chain differs", i)
		}
	}
	gotKey, err := x509.MarshalPKCS8PrivateKey(got.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	wantKey, err := x509.MarshalPKCS8PrivateKey(want.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gotKey, wantKey) {
		t.Fatal("private key differs")
	}
}

// sameAuthorities reports whether b holds exactly certs, in order.
func sameAuthorities(b *x509bundle.Bundle, certs ...*x509.Certificate) bool {
	got := b.X509Authorities()
	if len(got) != len(certs) {
		return false
	}
	for i := range got {
		if !got[i].Equal(certs[i]) {
			return false
		}
	}
	return true
}

// requireBundle fails unless set holds td's bundle with exactly certs.
func requireBundle(t *testing.T, set *x509bundle.Set, td spiffeid.TrustDomain, certs ...*x509.Certificate) {
	t.Helper()
	b, ok := set.Get(td)
	if !ok {
		t.Fatalf("no bundle for %s", td)
	}
	if !sameAuthorities(b, certs...) {
		t.Fatalf("bundle of %s does not hold the expected %d authorities", td, len(certs))
	}
}
