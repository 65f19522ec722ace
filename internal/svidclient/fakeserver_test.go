package svidclient_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

var testTD = spiffeid.RequireTrustDomainFromString("test.mesh")

// testAuthority is a root and an intermediate that signs leaves, as one
// authority of the real CA.
type testAuthority struct {
	id    string
	root  *x509.Certificate
	inter *x509.Certificate
	key   crypto.Signer
}

var serial struct {
	mu sync.Mutex
	n  int64
}

func nextSerial() *big.Int {
	serial.mu.Lock()
	defer serial.mu.Unlock()
	serial.n++
	return big.NewInt(serial.n)
}

func newTestAuthority(t testing.TB, id string) *testAuthority {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	ca := func(cn string, pub crypto.PublicKey, parent *x509.Certificate, signer crypto.Signer) *x509.Certificate {
		tmpl := &x509.Certificate{
			SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			URIs: []*url.URL{testTD.ID().URL()},
		}
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	root := ca(id+" root", rootKey.Public(), nil, rootKey)
	inter := ca(id+" intermediate", interKey.Public(), root, rootKey)
	return &testAuthority{id: id, root: root, inter: inter, key: interKey}
}

// sign issues a leaf for pub with the SPIFFE ID id, backdated like the real
// CA does.
func (a *testAuthority) sign(t testing.TB, pub crypto.PublicKey, id spiffeid.ID, ttl time.Duration, dns ...string) []*x509.Certificate {
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		NotBefore:    now.Add(-time.Minute), NotAfter: now.Add(ttl),
		URIs:        []*url.URL{id.URL()},
		DNSNames:    dns,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.inter, pub, a.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return []*x509.Certificate{leaf, a.inter}
}

// fakeBackend is the state behind one or more fake servers: tokens, the
// authorities, the bundle and what watchers acknowledged. It implements the
// WorkloadIdentityService the way the protocol describes it.
type fakeBackend struct {
	t testing.TB

	mu          sync.Mutex
	tokens      map[string]spiffeid.ID
	authorities []*testAuthority // in the bundle
	active      *testAuthority
	seq         uint64
	ttl         time.Duration
	federated   []*meshfedv1.TrustBundle
	changed     chan struct{} // closed and replaced on every bundle change
	acks        []ack
	ackAdded    chan struct{}
	unavailable int       // unary calls to refuse with UNAVAILABLE
	downUntil   time.Time // refuse unary calls with UNAVAILABLE until then
	refuseRenew bool      // answer Renew with UNAUTHENTICATED
	attests     int
	renews      int
	lastCSR     *x509.CertificateRequest
	servers     []*serverIdentity // re-signed when an authority is activated
}

// serverIdentity is a fake server's TLS identity.
type serverIdentity struct {
	src *tlsutil.Source
	key crypto.Signer
	id  spiffeid.ID
}

// ack is one WatchBundleRequest and the server that received it.
type ack struct {
	n      int // position among every acknowledgement received
	server string
	req    *meshfedv1.WatchBundleRequest
}

func newFakeBackend(t testing.TB) *fakeBackend {
	a1 := newTestAuthority(t, "a1")
	return &fakeBackend{
		t:           t,
		tokens:      map[string]spiffeid.ID{},
		authorities: []*testAuthority{a1},
		active:      a1,
		seq:         1,
		ttl:         time.Hour,
		changed:     make(chan struct{}),
		ackAdded:    make(chan struct{}),
	}
}

// addToken binds a token secret to a workload identity.
func (b *fakeBackend) addToken(secret, id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens[secret] = spiffeid.RequireFromString(id)
}

func (b *fakeBackend) set(fn func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fn()
}

// bundleChanged bumps the sequence and wakes the watchers; mu is held.
func (b *fakeBackend) bundleChangedLocked() {
	b.seq++
	close(b.changed)
	b.changed = make(chan struct{})
}

// prepare adds a new authority's root to the bundle; activate makes it sign.
func (b *fakeBackend) prepare(a *testAuthority) {
	b.set(func() {
		b.authorities = append(b.authorities, a)
		for _, si := range b.servers {
			si.src.SetRoots(b.rootsLocked())
		}
		b.bundleChangedLocked()
	})
}

// activate makes a sign, and like real servers, the servers take new
// certificates from it.
func (b *fakeBackend) activate(a *testAuthority) {
	b.set(func() {
		b.activateLocked(a)
		b.bundleChangedLocked()
	})
}

func (b *fakeBackend) activateLocked(a *testAuthority) {
	b.active = a
	for _, si := range b.servers {
		if err := si.src.SetCertificate(a.sign(b.t, si.key.Public(), si.id, time.Hour), si.key); err != nil {
			b.t.Fatal(err)
		}
	}
}

// activateAndRetire activates a and drops every other root from the bundle
// in one change, as a forced rotation does.
func (b *fakeBackend) activateAndRetire(a *testAuthority) {
	b.set(func() {
		b.activateLocked(a)
		b.authorities = []*testAuthority{a}
		b.bundleChangedLocked()
	})
}

// setSequence sends the bundle again with sequence seq, and with a's root
// added when a is not nil.
func (b *fakeBackend) setSequence(seq uint64, a *testAuthority) {
	b.set(func() {
		if a != nil {
			b.authorities = append(b.authorities, a)
		}
		b.seq = seq
		close(b.changed)
		b.changed = make(chan struct{})
	})
}

func (b *fakeBackend) rootsLocked() []*x509.Certificate {
	var roots []*x509.Certificate
	for _, a := range b.authorities {
		roots = append(roots, a.root)
	}
	return roots
}

func (b *fakeBackend) counts() (attests, renews int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.attests, b.renews
}

func (b *fakeBackend) takeUnavailable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.unavailable > 0 {
		b.unavailable--
		return true
	}
	return time.Now().Before(b.downUntil)
}

// waitAck waits for an acknowledgement that match accepts.
func (b *fakeBackend) waitAck(t testing.TB, what string, match func(ack) bool) ack {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		b.mu.Lock()
		for _, a := range b.acks {
			if match(a) {
				b.mu.Unlock()
				return a
			}
		}
		ch := b.ackAdded
		b.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			b.mu.Lock()
			defer b.mu.Unlock()
			t.Fatalf("no acknowledgement %s; got %v", what, b.acks)
		}
	}
}

// issue checks a CSR against the identity id and signs it.
func (b *fakeBackend) issueLocked(der []byte, id spiffeid.ID) (*meshfedv1.SVIDResponse, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	b.lastCSR = csr
	switch {
	case len(csr.URIs) == 0:
	case len(csr.URIs) == 1 && csr.URIs[0].String() == id.String():
	default:
		return nil, status.Errorf(codes.PermissionDenied, "csr: the token is bound to %s, not %v", id, csr.URIs)
	}
	chain := b.active.sign(b.t, csr.PublicKey, id, b.ttl)
	return &meshfedv1.SVIDResponse{
		SpiffeId:            id.String(),
		CertificateChainPem: string(tlsutil.EncodeCertificatesPEM(chain)),
		BundlePem:           string(tlsutil.EncodeCertificatesPEM(b.rootsLocked())),
		FederatedBundles:    b.federated,
		AuthorityId:         b.active.id,
	}, nil
}

func (b *fakeBackend) Attest(_ context.Context, r *meshfedv1.AttestRequest) (*meshfedv1.SVIDResponse, error) {
	if b.takeUnavailable() {
		return nil, status.Error(codes.Unavailable, "no leader")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.attests++
	id, ok := b.tokens[r.GetToken()]
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "invalid workload-join token")
	}
	return b.issueLocked(r.GetCsr(), id)
}

// peerID is the SPIFFE ID of the client certificate, verified by TLS.
func peerID(ctx context.Context) (spiffeid.ID, error) {
	p, _ := peer.FromContext(ctx)
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "no client certificate")
	}
	id, err := x509svid.IDFromCert(ti.State.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
	}
	return id, nil
}

func (b *fakeBackend) Renew(ctx context.Context, r *meshfedv1.RenewRequest) (*meshfedv1.SVIDResponse, error) {
	if b.takeUnavailable() {
		return nil, status.Error(codes.Unavailable, "no leader")
	}
	id, err := peerID(ctx)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.renews++
	if b.refuseRenew {
		return nil, status.Error(codes.Unauthenticated, "client certificate does not chain to the current trust bundle")
	}
	return b.issueLocked(r.GetCsr(), id)
}

func (b *fakeBackend) bundleResponseLocked() *meshfedv1.WatchBundleResponse {
	var pems []string
	for _, r := range b.rootsLocked() {
		pems = append(pems, string(tlsutil.EncodeCertificatesPEM([]*x509.Certificate{r})))
	}
	return &meshfedv1.WatchBundleResponse{
		Bundle:            &meshfedv1.TrustBundle{TrustDomain: testTD.Name(), RootsPem: pems, Sequence: b.seq},
		FederatedBundles:  b.federated,
		ActiveAuthorityId: b.active.id,
	}
}

// watchBundle serves one stream for the server named server.
func (b *fakeBackend) watchBundle(server string, stream meshfedv1.WorkloadIdentityService_WatchBundleServer) error {
	if _, err := peerID(stream.Context()); err != nil {
		return err
	}
	if _, err := stream.Recv(); err != nil {
		return err
	}
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.acks = append(b.acks, ack{len(b.acks), server, req})
			close(b.ackAdded)
			b.ackAdded = make(chan struct{})
			b.mu.Unlock()
		}
	}()
	for {
		b.mu.Lock()
		resp, changed := b.bundleResponseLocked(), b.changed
		b.mu.Unlock()
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// fakeServer is one gRPC server in front of a backend, over real TLS with a
// server identity from the backend's first authority.
type fakeServer struct {
	meshfedv1.UnimplementedWorkloadIdentityServiceServer
	*fakeBackend
	name string
	addr string
	gs   *grpc.Server
	lis  net.Listener
	once sync.Once
}

func (s *fakeServer) WatchBundle(stream meshfedv1.WorkloadIdentityService_WatchBundleServer) error {
	return s.watchBundle(s.name, stream)
}

func (s *fakeServer) Attest(ctx context.Context, r *meshfedv1.AttestRequest) (*meshfedv1.SVIDResponse, error) {
	return s.fakeBackend.Attest(ctx, r)
}

func (s *fakeServer) Renew(ctx context.Context, r *meshfedv1.RenewRequest) (*meshfedv1.SVIDResponse, error) {
	return s.fakeBackend.Renew(ctx, r)
}

// serve starts a server named name for b on a free loopback port; it stops
// when the test ends.
func (b *fakeBackend) serve(t testing.TB, name string) *fakeServer {
	t.Helper()
	b.mu.Lock()
	a := b.active
	b.mu.Unlock()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sid := spiffeid.RequireFromSegments(testTD, "meshfed", "server", name)
	src := tlsutil.NewSource(nil)
	if err := src.SetCertificate(a.sign(t, key.Public(), sid, time.Hour), key); err != nil {
		t.Fatal(err)
	}
	b.set(func() {
		src.SetRoots(b.rootsLocked())
		b.servers = append(b.servers, &serverIdentity{src: src, key: key, id: sid})
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{fakeBackend: b, name: name, addr: lis.Addr().String(), lis: lis}
	s.gs = grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsutil.APIServer(src))))
	meshfedv1.RegisterWorkloadIdentityServiceServer(s.gs, s)
	go s.gs.Serve(lis)
	t.Cleanup(s.stop)
	return s
}

// stop ends the server and every stream on it.
func (s *fakeServer) stop() { s.once.Do(s.gs.Stop) }

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
