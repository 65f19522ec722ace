package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// Tokens the fake server knows.
const (
	fakeAdminToken = "admin-secret"
	fakeReadToken  = "read-secret"
)

// fakeServer is an in-process management API over real TLS with canned
// behaviour, so the CLI's requests and output can be checked without the
// control plane. Services it does not implement answer UNIMPLEMENTED, like
// the real server does for what it lacks.
type fakeServer struct {
	meshfedv1.UnimplementedCatalogServiceServer
	meshfedv1.UnimplementedPolicyServiceServer
	meshfedv1.UnimplementedTokenServiceServer
	meshfedv1.UnimplementedClusterServiceServer
	meshfedv1.UnimplementedWorkloadIdentityServiceServer
	meshfedv1.UnimplementedCAServiceServer
	meshfedv1.UnimplementedIdentityServiceServer
	meshfedv1.UnimplementedMeshSettingsServiceServer

	addr   string
	caFile string

	mu          sync.Mutex
	services    []*meshfedv1.Service
	updates     []*meshfedv1.UpdateServiceRequest
	authz       []*meshfedv1.AuthorizationPolicy
	tokenReqs   []*meshfedv1.CreateTokenRequest
	snapshot    []byte // what SaveSnapshot streams
	saveFailAt  int    // SaveSnapshot fails after this many bytes (0: never)
	restored    []byte
	chunkSizes  []int
	watchEvents []*meshfedv1.WatchServicesResponse
	watchBlock  bool          // keep the watch open after the events
	watchSent   chan struct{} // closed once the events are sent

	// CA and identities (ca_test.go, identities_test.go).
	caSettings     *meshfedv1.CASettings
	caUpdates      []*meshfedv1.UpdateCASettingsRequest
	caImports      []*meshfedv1.ImportAuthorityRequest
	rotateRequests []*meshfedv1.RotateCARequest
	identities     []*meshfedv1.Identity
	identityReqs   []*meshfedv1.CreateIdentityRequest
	identityDels   []*meshfedv1.DeleteRequest

	// Mesh settings (mesh_test.go).
	meshSettings *meshfedv1.MeshSettings
	meshUpdates  []*meshfedv1.UpdateMeshSettingsRequest
}

func startFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	dir := t.TempDir()
	roots, chain, key := testPKI(t, "test.mesh", "s1")
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, tlsutil.EncodeCertificatesPEM(roots), 0o600); err != nil {
		t.Fatal(err)
	}
	src := tlsutil.NewSource(roots)
	if err := src.SetCertificate(chain, key); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{addr: l.Addr().String(), caFile: caFile, watchSent: make(chan struct{})}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsutil.APIServer(src))), grpc.UnaryInterceptor(authInterceptor))
	meshfedv1.RegisterCatalogServiceServer(gs, f)
	meshfedv1.RegisterPolicyServiceServer(gs, f)
	meshfedv1.RegisterTokenServiceServer(gs, f)
	meshfedv1.RegisterClusterServiceServer(gs, f)
	meshfedv1.RegisterWorkloadIdentityServiceServer(gs, f)
	meshfedv1.RegisterCAServiceServer(gs, f)
	meshfedv1.RegisterIdentityServiceServer(gs, f)
	meshfedv1.RegisterMeshSettingsServiceServer(gs, f)
	meshfedv1.RegisterPeeringServiceServer(gs, meshfedv1.UnimplementedPeeringServiceServer{})
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	return f
}

// authInterceptor checks the bearer token: the admin token may do anything,
// the read token only Get/List calls.
func authInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := strings.TrimPrefix(strings.Join(md.Get("authorization"), ""), "Bearer ")
	method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	if method == "Attest" {
		return handler(ctx, req) // authenticated by the token in the request
	}
	switch auth {
	case fakeAdminToken:
	case fakeReadToken:
		if !strings.HasPrefix(method, "Get") && !strings.HasPrefix(method, "List") {
			return nil, status.Errorf(codes.PermissionDenied, "a read token cannot call %s", method)
		}
	default:
		return nil, status.Error(codes.Unauthenticated, "invalid token")
	}
	return handler(ctx, req)
}

// env is a getenv pointing the CLI at the fake server as admin.
func (f *fakeServer) env(extra ...string) func(string) string {
	vals := map[string]string{envAddr: f.addr, envToken: fakeAdminToken, envCAFile: f.caFile}
	for i := 0; i+1 < len(extra); i += 2 {
		vals[extra[i]] = extra[i+1]
	}
	return func(k string) string { return vals[k] }
}

func (f *fakeServer) UpdateService(_ context.Context, r *meshfedv1.UpdateServiceRequest) (*meshfedv1.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updates = append(f.updates, r)
	s := proto.CloneOf(r.GetService())
	if s.Meta.Namespace == "" {
		s.Meta.Namespace = "default"
	}
	s.Meta.Version = uint64(len(f.updates) + 10)
	f.services = append(f.services, s)
	return s, nil
}

func (f *fakeServer) GetService(_ context.Context, r *meshfedv1.GetRequest) (*meshfedv1.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.services {
		if s.GetMeta().GetName() == r.GetName() && s.GetMeta().GetNamespace() == r.GetNamespace() {
			return s, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "service %s/%s not found", r.GetNamespace(), r.GetName())
}

// ListServices pages two services at a time, the token being the offset.
func (f *fakeServer) ListServices(_ context.Context, r *meshfedv1.ListRequest) (*meshfedv1.ListServicesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var match []*meshfedv1.Service
	for _, s := range f.services {
		if r.GetNamespace() == "" || s.GetMeta().GetNamespace() == r.GetNamespace() {
			match = append(match, s)
		}
	}
	off := 0
	if tok := r.GetPage().GetPageToken(); tok != "" {
		off, _ = strconv.Atoi(tok)
	}
	end := min(off+2, len(match))
	resp := &meshfedv1.ListServicesResponse{Services: match[off:end], Index: 42}
	if end < len(match) {
		resp.NextPageToken = strconv.Itoa(end)
	}
	return resp, nil
}

func (f *fakeServer) WatchServices(_ *meshfedv1.WatchRequest, stream meshfedv1.CatalogService_WatchServicesServer) error {
	for _, ev := range f.watchEvents {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	close(f.watchSent)
	if f.watchBlock {
		<-stream.Context().Done()
	}
	return nil
}

func (f *fakeServer) UpdateAuthorizationPolicy(_ context.Context, r *meshfedv1.UpdateAuthorizationPolicyRequest) (*meshfedv1.AuthorizationPolicy, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !r.GetAllowMissing() {
		return nil, status.Error(codes.InvalidArgument, "expected allow_missing")
	}
	if r.GetPolicy().GetDestination() == "" {
		return nil, status.Error(codes.InvalidArgument, "destination: required")
	}
	p := proto.CloneOf(r.GetPolicy())
	if p.Meta.Namespace == "" {
		p.Meta.Namespace = "default"
	}
	p.Meta.Version = uint64(len(f.authz) + 1)
	f.authz = append(f.authz, p)
	return p, nil
}

func (f *fakeServer) CreateToken(_ context.Context, r *meshfedv1.CreateTokenRequest) (*meshfedv1.Token, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokenReqs = append(f.tokenReqs, r)
	return &meshfedv1.Token{
		Meta:     &meshfedv1.Meta{Name: "tok-1", Version: 7},
		Kind:     r.GetKind(),
		SpiffeId: r.GetSpiffeId(),
		MaxUses:  r.GetMaxUses(),
		Secret:   "mfd_s3cret",
	}, nil
}

func (f *fakeServer) SaveSnapshot(_ *meshfedv1.SaveSnapshotRequest, stream meshfedv1.ClusterService_SaveSnapshotServer) error {
	data := f.snapshot
	const chunk = 300 << 10
	sent := 0
	for len(data) > 0 {
		if f.saveFailAt > 0 && sent >= f.saveFailAt {
			return status.Error(codes.Internal, "disk on fire")
		}
		n := min(chunk, len(data))
		if err := stream.Send(&meshfedv1.SnapshotChunk{Data: data[:n]}); err != nil {
			return err
		}
		data, sent = data[n:], sent+n
	}
	return nil
}

func (f *fakeServer) RestoreSnapshot(stream meshfedv1.ClusterService_RestoreSnapshotServer) error {
	var buf bytes.Buffer
	var sizes []int
	for {
		c, err := stream.Recv()
		if err != nil {
			break
		}
		sizes = append(sizes, len(c.GetData()))
		buf.Write(c.GetData())
	}
	f.mu.Lock()
	f.restored, f.chunkSizes = buf.Bytes(), sizes
	f.mu.Unlock()
	return stream.SendAndClose(&meshfedv1.RestoreSnapshotResponse{Index: 99})
}

func (f *fakeServer) ListMembers(context.Context, *meshfedv1.ListMembersRequest) (*meshfedv1.ListMembersResponse, error) {
	return &meshfedv1.ListMembersResponse{}, nil
}

// fakeJoinToken is the workload-join token Attest accepts, bound to fakeWorkloadID.
const (
	fakeJoinToken  = "join-secret"
	fakeWorkloadID = "spiffe://test.mesh/ns/default/sa/web"
)

// Attest issues a certificate for the CSR's key if the token matches. A CSR
// without a SAN gets the token's identity; one with a URI SAN must ask for
// exactly that identity. The certificate is its own root, so it verifies
// against the returned bundle.
func (f *fakeServer) Attest(_ context.Context, r *meshfedv1.AttestRequest) (*meshfedv1.SVIDResponse, error) {
	if r.GetToken() != fakeJoinToken {
		return nil, status.Error(codes.Unauthenticated, "invalid token: unknown or revoked")
	}
	csr, err := x509.ParseCertificateRequest(r.GetCsr())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "invalid csr: %v", err)
	}
	id, _ := url.Parse(fakeWorkloadID)
	switch {
	case len(csr.URIs) == 0:
	case len(csr.URIs) == 1 && csr.URIs[0].String() == fakeWorkloadID:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "invalid csr: the token is bound to %s, not %v", fakeWorkloadID, csr.URIs)
	}
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	root := &x509.Certificate{SerialNumber: big.NewInt(4), Subject: pkix.Name{CommonName: "fake root"}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, root, root, signer.Public(), signer)
	if err != nil {
		return nil, err
	}
	root, _ = x509.ParseCertificate(rootDER)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(3), URIs: []*url.URL{id}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, csr.PublicKey, signer)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	return &meshfedv1.SVIDResponse{
		SpiffeId:            fakeWorkloadID,
		CertificateChainPem: string(tlsutil.EncodeCertificatesPEM([]*x509.Certificate{cert})),
		BundlePem:           string(tlsutil.EncodeCertificatesPEM([]*x509.Certificate{root})),
		AuthorityId:         "fake-authority",
	}, nil
}

func (f *fakeServer) lastUpdate(t *testing.T) *meshfedv1.UpdateServiceRequest {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.updates) == 0 {
		t.Fatal("the server received no UpdateService")
	}
	return f.updates[len(f.updates)-1]
}

func (f *fakeServer) policies() []*meshfedv1.AuthorizationPolicy {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.authz)
}

// testPKI makes a root and a server certificate with the SPIFFE ID of
// server node in trust domain td, as the real CA would.
func testPKI(t *testing.T, td, node string) (roots, chain []*x509.Certificate, key *ecdsa.PrivateKey) {
	t.Helper()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rootTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test root"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := url.Parse(fmt.Sprintf("spiffe://%s/meshfed/server/%s", td, node))
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		URIs:         []*url.URL{id},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, &key.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(leafDER)
	return []*x509.Certificate{root}, []*x509.Certificate{leaf}, key
}
