package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/federation"
	"github.com/meshfed/meshfed/internal/client"
)

// startNamedCluster starts n servers of cluster name (trust domain
// <name>.mesh) with short peer timings.
func startNamedCluster(t *testing.T, name string, n int) *testCluster {
	t.Helper()
	return startTestClusterWith(t, n, func(cfg *Config) {
		cfg.Cluster, cfg.TrustDomain = name, name+".mesh"
		cfg.peerHeartbeat, cfg.peerBackoff = 300*time.Millisecond, 100*time.Millisecond
	})
}

// peerClusters makes acceptor issue a token for dialer and dialer establish with
// it; both sides name the other by its cluster name.
func peerClusters(t *testing.T, acceptor, dialer *testCluster, acceptorName, dialerName string) {
	t.Helper()
	ctx := context.Background()
	tok, err := acceptor.client(t, acceptor.servers[0]).Peering.GeneratePeeringToken(ctx, &meshfedv1.GeneratePeeringTokenRequest{Peer: dialerName})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dialer.client(t, dialer.servers[0]).Peering.EstablishPeering(ctx, &meshfedv1.EstablishPeeringRequest{Peer: acceptorName, Token: tok.GetToken()}); err != nil {
		t.Fatal(err)
	}
	waitPeering(t, acceptor, dialerName, meshfedv1.PeeringState_PEERING_STATE_ACTIVE)
	waitPeering(t, dialer, acceptorName, meshfedv1.PeeringState_PEERING_STATE_ACTIVE)
}

func waitPeering(t *testing.T, c *testCluster, name string, want meshfedv1.PeeringState) *meshfedv1.Peering {
	t.Helper()
	var last *meshfedv1.Peering
	err := poll(20*time.Second, func() error {
		p, err := c.client(t, c.leader(t)).Peering.GetPeering(context.Background(), &meshfedv1.GetRequest{Name: name})
		if err != nil {
			return err
		}
		last = p
		if p.GetState() != want {
			return fmt.Errorf("peering %s is %v (last error %q), want %v", name, p.GetState(), p.GetLastError(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return last
}

// poll calls cond until it returns nil or timeout passes.
func poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func registerService(t *testing.T, cl *client.Client, name string, addrs ...string) {
	t.Helper()
	ctx := context.Background()
	if _, err := cl.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{AllowMissing: true, Service: &meshfedv1.Service{
		Meta: &meshfedv1.Meta{Namespace: "default", Name: name}, Port: 8080, Protocol: meshfedv1.Protocol_PROTOCOL_HTTP}}); err != nil {
		t.Fatal(err)
	}
	for i, a := range addrs {
		if _, err := cl.Catalog.UpdateWorkload(ctx, &meshfedv1.UpdateWorkloadRequest{AllowMissing: true, Workload: &meshfedv1.Workload{
			Meta: &meshfedv1.Meta{Namespace: "default", Name: fmt.Sprintf("%s-%d", name, i)}, Service: name,
			Address: a, Port: 15006, Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY}}); err != nil {
			t.Fatal(err)
		}
	}
}

// importsOf returns the services c imports, by "namespace/name", with their
// endpoint addresses.
func importsOf(t *testing.T, c *testCluster) map[string][]string {
	t.Helper()
	resp, err := c.client(t, c.leader(t)).Peering.ListImportedServices(context.Background(), &meshfedv1.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, s := range resp.GetServices() {
		key := s.GetMeta().GetNamespace() + "/" + s.GetMeta().GetName()
		out[key] = []string{}
		for _, e := range s.GetEndpoints() {
			out[key] = append(out[key], e.GetAddress())
		}
	}
	return out
}

func waitImports(t *testing.T, c *testCluster, want map[string][]string) {
	t.Helper()
	err := poll(20*time.Second, func() error {
		got := importsOf(t, c)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("imports %v, want %v", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPeeringExportImport(t *testing.T) {
	east := startNamedCluster(t, "east", 1)
	west := startNamedCluster(t, "west", 1)
	ctx := context.Background()
	peerClusters(t, east, west, "east", "west")

	wc := west.client(t, west.servers[0])
	registerService(t, wc, "payments", "10.0.0.1")
	registerService(t, wc, "internal", "10.0.0.9")
	if _, err := wc.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
		Meta: &meshfedv1.Meta{Namespace: "default", Name: "payments"}, Peers: []string{"east"}}}); err != nil {
		t.Fatal(err)
	}
	waitImports(t, east, map[string][]string{"default/west.payments": {"10.0.0.1"}})

	// An endpoint change reaches east.
	registerService(t, wc, "payments", "10.0.0.1", "10.0.0.2")
	waitImports(t, east, map[string][]string{"default/west.payments": {"10.0.0.1", "10.0.0.2"}})

	// Exports flow the other way too.
	ec := east.client(t, east.servers[0])
	registerService(t, ec, "web", "10.1.0.1")
	if _, err := ec.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
		Meta: &meshfedv1.Meta{Namespace: "default", Name: "web"}, Peers: []string{"west"}}}); err != nil {
		t.Fatal(err)
	}
	waitImports(t, west, map[string][]string{"default/east.web": {"10.1.0.1"}})

	// Unexporting removes it.
	if _, err := wc.Peering.DeleteServiceExport(ctx, &meshfedv1.DeleteRequest{Namespace: "default", Name: "payments"}); err != nil {
		t.Fatal(err)
	}
	waitImports(t, east, map[string][]string{})

	// Exporting to a peering that does not exist is refused.
	_, err := wc.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
		Meta: &meshfedv1.Meta{Namespace: "default", Name: "payments"}, Peers: []string{"nowhere"}}})
	wantCode(t, err, codes.FailedPrecondition)
}

func TestFederatedTrustAndResolve(t *testing.T) {
	east := startNamedCluster(t, "east", 1)
	west := startNamedCluster(t, "west", 1)
	ctx := context.Background()
	peerClusters(t, east, west, "east", "west")
	ec, wc := east.client(t, east.servers[0]), west.client(t, west.servers[0])

	// payments runs in both clusters; west exports it to east.
	registerService(t, ec, "payments", "10.1.0.1")
	registerService(t, wc, "payments", "10.0.0.1", "10.0.0.2")
	if _, err := wc.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
		Meta: &meshfedv1.Meta{Namespace: "default", Name: "payments"}, Peers: []string{"east"}}}); err != nil {
		t.Fatal(err)
	}
	waitImports(t, east, map[string][]string{"default/west.payments": {"10.0.0.1", "10.0.0.2"}})
	res, err := ec.Catalog.Resolve(ctx, &meshfedv1.ResolveRequest{Name: "payments"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetClusters()) != 2 || res.GetClusters()[0].GetCluster() != "east" || res.GetClusters()[1].GetCluster() != "west" ||
		res.GetClusters()[1].GetPeer() != "west" || len(res.GetClusters()[1].GetEndpoints()) != 2 {
		t.Fatalf("resolve payments in east: %v", res.GetClusters())
	}
	_, err = ec.Catalog.Resolve(ctx, &meshfedv1.ResolveRequest{Name: "nothing"})
	wantCode(t, err, codes.NotFound)

	// east trusts west's roots: an SVID from west verifies against east's
	// federated bundle.
	fed, err := ec.CA.GetTrustBundle(ctx, &meshfedv1.GetTrustBundleRequest{Federated: true})
	if err != nil {
		t.Fatal(err)
	}
	var westBundle *meshfedv1.TrustBundle
	for _, b := range fed.GetBundles() {
		if b.GetTrustDomain() == "west.mesh" {
			westBundle = b
		}
	}
	if westBundle == nil || westBundle.GetPeer() != "west" {
		t.Fatalf("east's federated bundles: %v", fed.GetBundles())
	}
	tok, err := wc.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{Kind: meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN, SpiffeId: "spiffe://west.mesh/ns/default/sa/payments", MaxUses: 1})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := workloadClient(t, west, west.servers[0], "", nil).Workload.Attest(ctx, &meshfedv1.AttestRequest{Token: tok.GetSecret(), Csr: csrFor(t, newKey(t), nil)})
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("west.mesh")
	var roots []*x509.Certificate
	for _, r := range westBundle.GetRootsPem() {
		roots = append(roots, certs(t, r)...)
	}
	if _, _, err := x509svid.Verify(certs(t, svid.GetCertificateChainPem()), x509bundle.FromX509Authorities(td, roots)); err != nil {
		t.Fatalf("west's SVID does not verify against east's federated bundle: %v", err)
	}

	// A rotation in west reaches east's federated bundle before west
	// activates: activate waits for east's acknowledgement.
	if _, err := rotate(t, wc.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_PREPARE}); err != nil {
		t.Fatal(err)
	}
	if err := poll(10*time.Second, func() error {
		fed, err := ec.CA.GetTrustBundle(ctx, &meshfedv1.GetTrustBundleRequest{Federated: true})
		if err != nil {
			return err
		}
		for _, b := range fed.GetBundles() {
			if b.GetTrustDomain() == "west.mesh" && len(b.GetRootsPem()) == 2 {
				return nil
			}
		}
		return fmt.Errorf("east does not have west's new root yet")
	}); err != nil {
		t.Fatal(err)
	}
	progress, err := rotate(t, wc.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE, Timeout: durationpb.New(20 * time.Second)})
	if err != nil {
		t.Fatalf("activate: %v (%v)", err, progress)
	}
	if !strings.Contains(progress[0].GetMessage(), "1 peers have the new bundle") {
		t.Fatalf("activate did not count the peer: %q", progress[0].GetMessage())
	}
	// ca status counts the peer as on the current bundle.
	if err := poll(10*time.Second, func() error {
		st, err := wc.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
		if err != nil {
			return err
		}
		if st.GetPeers() != 1 || st.GetPeersCurrent() != 1 {
			return fmt.Errorf("ca status: %d peers, %d on the current bundle", st.GetPeers(), st.GetPeersCurrent())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// linkSwitch dials peer clusters while on; switching it off closes what it
// opened and refuses new connections, cutting a peering link.
type linkSwitch struct {
	mu    sync.Mutex
	off   bool
	conns []net.Conn
}

func (l *linkSwitch) dial(ctx context.Context, addr string) (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.off {
		return nil, fmt.Errorf("dial %s: link cut by test", addr)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		l.conns = append(l.conns, c)
	}
	return c, err
}

func (l *linkSwitch) set(on bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.off = !on
	if !on {
		for _, c := range l.conns {
			c.Close()
		}
		l.conns = nil
	}
}

// importedStale reports whether every service east imports is stale.
func importedStale(t *testing.T, c *testCluster) (bool, error) {
	resp, err := c.client(t, c.leader(t)).Peering.ListImportedServices(context.Background(), &meshfedv1.ListRequest{})
	if err != nil {
		return false, err
	}
	if len(resp.GetServices()) == 0 {
		return false, fmt.Errorf("nothing imported")
	}
	for _, s := range resp.GetServices() {
		if !s.GetStale() {
			return false, nil
		}
	}
	return true, nil
}

func TestPeeringSurvivesLeaderLossAndCuts(t *testing.T) {
	east := startNamedCluster(t, "east", 3)
	link := &linkSwitch{}
	west := startTestClusterWith(t, 3, func(cfg *Config) {
		cfg.Cluster, cfg.TrustDomain = "west", "west.mesh"
		cfg.peerHeartbeat, cfg.peerBackoff = 300*time.Millisecond, 100*time.Millisecond
		cfg.peerDial = link.dial
	})
	ctx := context.Background()
	peerClusters(t, east, west, "east", "west")
	registerService(t, west.client(t, west.leader(t)), "payments", "10.0.0.1", "10.0.0.2")
	if _, err := west.client(t, west.leader(t)).Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
		Meta: &meshfedv1.Meta{Namespace: "default", Name: "payments"}, Peers: []string{"east"}}}); err != nil {
		t.Fatal(err)
	}
	waitImports(t, east, map[string][]string{"default/west.payments": {"10.0.0.1", "10.0.0.2"}})

	// The acceptor's leader dies: west's link finds the new one.
	old := east.leader(t)
	old.stop()
	east.servers = without(east.servers, old)
	registerService(t, west.client(t, west.leader(t)), "payments", "10.0.0.1", "10.0.0.2", "10.0.0.3")
	waitImports(t, east, map[string][]string{"default/west.payments": {"10.0.0.1", "10.0.0.2", "10.0.0.3"}})

	// The dialer's leader dies: the new leader takes the link over.
	old = west.leader(t)
	old.stop()
	west.servers = without(west.servers, old)
	registerService(t, west.client(t, west.leader(t)), "payments", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
	waitImports(t, east, map[string][]string{"default/west.payments": {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}})

	// Cut the link: east keeps the imports, marked stale; west says the
	// peering is disconnected.
	link.set(false)
	if err := poll(20*time.Second, func() error {
		stale, err := importedStale(t, east)
		if err != nil {
			return err
		}
		if !stale {
			return fmt.Errorf("imports not marked stale yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	p := waitPeering(t, west, "east", meshfedv1.PeeringState_PEERING_STATE_DISCONNECTED)
	if p.GetLastError() == "" {
		t.Fatal("a disconnected peering does not say why")
	}
	// Changes during the cut: one endpoint gone, a new service exported.
	wc := west.client(t, west.leader(t))
	if _, err := wc.Catalog.DeleteWorkload(ctx, &meshfedv1.DeleteRequest{Namespace: "default", Name: "payments-0"}); err != nil {
		t.Fatal(err)
	}
	registerService(t, wc, "ledger", "10.0.1.1")
	if _, err := wc.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
		Meta: &meshfedv1.Meta{Namespace: "default", Name: "ledger"}, Peers: []string{"east"}}}); err != nil {
		t.Fatal(err)
	}
	waitImports(t, east, map[string][]string{"default/west.payments": {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}})

	// The link is back: everything made during the cut arrives, nothing
	// is duplicated, and nothing is stale any more.
	link.set(true)
	waitImports(t, east, map[string][]string{
		"default/west.ledger":   {"10.0.1.1"},
		"default/west.payments": {"10.0.0.2", "10.0.0.3", "10.0.0.4"},
	})
	if err := poll(10*time.Second, func() error {
		resp, err := east.client(t, east.leader(t)).Peering.ListImportedServices(ctx, &meshfedv1.ListRequest{})
		if err != nil {
			return err
		}
		for _, s := range resp.GetServices() {
			if s.GetStale() || s.GetLastSync() == nil {
				return fmt.Errorf("%s stale=%v last_sync=%v", s.GetMeta().GetName(), s.GetStale(), s.GetLastSync())
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	waitPeering(t, west, "east", meshfedv1.PeeringState_PEERING_STATE_ACTIVE)
}

func without(list []*testServer, gone *testServer) []*testServer {
	var out []*testServer
	for _, s := range list {
		if s != gone {
			out = append(out, s)
		}
	}
	return out
}

func TestPeeringIsNotTransitiveAndDeletesBothSides(t *testing.T) {
	east := startNamedCluster(t, "east", 1)
	west := startNamedCluster(t, "west", 1)
	north := startNamedCluster(t, "north", 1)
	ctx := context.Background()
	peerClusters(t, east, west, "east", "west")
	peerClusters(t, west, north, "west", "north")
	ec, wc := east.client(t, east.servers[0]), west.client(t, west.servers[0])

	registerService(t, ec, "payments", "10.1.0.1")
	if _, err := ec.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
		Meta: &meshfedv1.Meta{Namespace: "default", Name: "payments"}, Peers: []string{"west"}}}); err != nil {
		t.Fatal(err)
	}
	registerService(t, wc, "web", "10.0.0.1")
	// west exports its own web, and tries to pass on east's payments: an
	// import is never exported onward.
	for _, name := range []string{"web", "payments"} {
		if _, err := wc.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
			Meta: &meshfedv1.Meta{Namespace: "default", Name: name}, Peers: []string{"north"}}}); err != nil {
			t.Fatal(err)
		}
	}
	waitImports(t, west, map[string][]string{"default/east.payments": {"10.1.0.1"}})
	waitImports(t, north, map[string][]string{"default/west.web": {"10.0.0.1"}})

	// Deleting the peering on east removes it on both sides, with the
	// imports and the bundles.
	if _, err := ec.Peering.DeletePeering(ctx, &meshfedv1.DeleteRequest{Name: "west"}); err != nil {
		t.Fatal(err)
	}
	if err := poll(20*time.Second, func() error {
		for _, c := range []*testCluster{east, west} {
			resp, err := c.client(t, c.servers[0]).Peering.ListPeerings(ctx, &meshfedv1.ListRequest{})
			if err != nil {
				return err
			}
			for _, p := range resp.GetPeerings() {
				if p.GetPeerCluster() == "east" || p.GetPeerCluster() == "west" {
					return fmt.Errorf("peering %s still exists", p.GetMeta().GetName())
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	waitImports(t, west, map[string][]string{})
	fed, err := ec.CA.GetTrustBundle(ctx, &meshfedv1.GetTrustBundleRequest{Federated: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(fed.GetBundles()) != 1 {
		t.Fatalf("east still holds %d bundles after the deletion", len(fed.GetBundles()))
	}
	// north is untouched.
	waitPeering(t, north, "west", meshfedv1.PeeringState_PEERING_STATE_ACTIVE)
}

// rawPeerStream opens a peer stream to a server as an unknown party: no
// client certificate, only what it puts in its open.
func rawPeerStream(t *testing.T, c *testCluster, open *meshfedv1.PeerOpen) error {
	t.Helper()
	cl := workloadClient(t, c, c.leader(t), "", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := meshfedv1.NewPeerStreamServiceClient(cl.Conn).Stream(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_Open{Open: open}}); err != nil {
		return err
	}
	_, err = st.Recv()
	return err
}

func TestPeeringRefusesBadTokens(t *testing.T) {
	east := startNamedCluster(t, "east", 1)
	west := startNamedCluster(t, "west", 1)
	ctx := context.Background()
	ec, wc := east.client(t, east.servers[0]), west.client(t, west.servers[0])
	westBundle, err := wc.CA.GetTrustBundle(ctx, &meshfedv1.GetTrustBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	openAs := func(cluster, secret string) *meshfedv1.PeerOpen {
		b := proto.Clone(westBundle.GetBundles()[0]).(*meshfedv1.TrustBundle)
		return &meshfedv1.PeerOpen{Cluster: cluster, TrustDomain: "west.mesh", Secret: secret, Bundle: b}
	}

	tok, err := ec.Peering.GeneratePeeringToken(ctx, &meshfedv1.GeneratePeeringTokenRequest{Peer: "west"})
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := federation.DecodeToken(tok.GetToken(), time.Now())
	if err != nil {
		t.Fatal(err)
	}

	// Straight at the peer stream: no secret, a forged one, and the right
	// one presented by another cluster.
	wantCode(t, rawPeerStream(t, east, openAs("west", "")), codes.Unauthenticated)
	wantCode(t, rawPeerStream(t, east, openAs("west", "mfd_forged")), codes.Unauthenticated)
	wantCode(t, rawPeerStream(t, east, openAs("north", decoded.Secret)), codes.PermissionDenied)
	// A bundle that is not the claimed trust domain's.
	bad := openAs("west", decoded.Secret)
	bad.Bundle.TrustDomain = "other.mesh"
	wantCode(t, rawPeerStream(t, east, bad), codes.InvalidArgument)
	// None of that spent the token or changed the peering.
	p := waitPeering(t, east, "west", meshfedv1.PeeringState_PEERING_STATE_PENDING)
	if p.GetPeerTrustDomain() != "" {
		t.Fatalf("a refused stream changed the peering: %v", p)
	}

	// Through the API: forged, expired and own-cluster tokens.
	for _, bad := range []string{"", "not a token", "mfpeer1.!!!", expiredToken(t, decoded)} {
		_, err := wc.Peering.EstablishPeering(ctx, &meshfedv1.EstablishPeeringRequest{Peer: "east", Token: bad})
		wantCode(t, err, codes.InvalidArgument)
	}
	own, err := wc.Peering.GeneratePeeringToken(ctx, &meshfedv1.GeneratePeeringTokenRequest{Peer: "self"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = wc.Peering.EstablishPeering(ctx, &meshfedv1.EstablishPeeringRequest{Peer: "self2", Token: own.GetToken()})
	wantCode(t, err, codes.InvalidArgument)

	// The real thing works once; the spent secret is refused afterwards.
	if _, err := wc.Peering.EstablishPeering(ctx, &meshfedv1.EstablishPeeringRequest{Peer: "east", Token: tok.GetToken()}); err != nil {
		t.Fatal(err)
	}
	waitPeering(t, east, "west", meshfedv1.PeeringState_PEERING_STATE_ACTIVE)
	wantCode(t, rawPeerStream(t, east, openAs("west", decoded.Secret)), codes.AlreadyExists)
	b2 := openAs("north", decoded.Secret)
	b2.TrustDomain, b2.Bundle.TrustDomain = "north.mesh", "north.mesh"
	wantCode(t, rawPeerStream(t, east, b2), codes.Unauthenticated)
}

// expiredToken re-encodes tok with an expiry in the past.
func expiredToken(t *testing.T, tok federation.Token) string {
	t.Helper()
	tok.ExpireTime = time.Now().Add(-time.Minute)
	s, err := tok.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPeeringDeletedWhileLinkDown deletes a peering on either side while
// the link is cut: the side that deleted keeps a tombstone (imports and the
// peer's roots gone at once) until the link is back and the peer has been
// told; then both sides are gone. A second delete gives up on telling.
func TestPeeringDeletedWhileLinkDown(t *testing.T) {
	east := startNamedCluster(t, "east", 1)
	link := &linkSwitch{}
	west := startTestClusterWith(t, 1, func(cfg *Config) {
		cfg.Cluster, cfg.TrustDomain = "west", "west.mesh"
		cfg.peerHeartbeat, cfg.peerBackoff = 300*time.Millisecond, 100*time.Millisecond
		cfg.peerDial = link.dial
	})
	ctx := context.Background()
	ec, wc := east.client(t, east.servers[0]), west.client(t, west.servers[0])
	registerService(t, ec, "payments", "10.1.0.1")
	registerService(t, wc, "web", "10.0.0.1")
	exportBoth := func() {
		t.Helper()
		for _, x := range []struct {
			cl        *client.Client
			svc, peer string
		}{{ec, "payments", "west"}, {wc, "web", "east"}} {
			if _, err := x.cl.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
				Meta: &meshfedv1.Meta{Namespace: "default", Name: x.svc}, Peers: []string{x.peer}}}); err != nil {
				t.Fatal(err)
			}
		}
		waitImports(t, east, map[string][]string{"default/west.web": {"10.0.0.1"}})
		waitImports(t, west, map[string][]string{"default/east.payments": {"10.1.0.1"}})
	}
	gone := func(c *testCluster, name string) error {
		_, err := c.client(t, c.servers[0]).Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: name})
		if status.Code(err) == codes.NotFound {
			return nil
		}
		return fmt.Errorf("peering %s on %s: %v", name, c.servers[0].cfg.Cluster, err)
	}
	federated := func(cl *client.Client) int {
		t.Helper()
		b, err := cl.CA.GetTrustBundle(ctx, &meshfedv1.GetTrustBundleRequest{Federated: true})
		if err != nil {
			t.Fatal(err)
		}
		return len(b.GetBundles()) - 1 // the own bundle comes first
	}
	cut := func() {
		t.Helper()
		link.set(false)
		waitPeering(t, east, "west", meshfedv1.PeeringState_PEERING_STATE_DISCONNECTED)
		waitPeering(t, west, "east", meshfedv1.PeeringState_PEERING_STATE_DISCONNECTED)
	}

	// Connected, a deletion on the dialing side reaches the acceptor: the
	// close is not lost when the dialer tears its connection down.
	t.Run("deleted on the dialer while connected", func(t *testing.T) {
		peerClusters(t, east, west, "east", "west")
		exportBoth()
		if _, err := wc.Peering.DeletePeering(ctx, &meshfedv1.DeleteRequest{Name: "east"}); err != nil {
			t.Fatal(err)
		}
		if err := poll(10*time.Second, func() error {
			return errors.Join(gone(east, "west"), gone(west, "east"))
		}); err != nil {
			t.Fatal(err)
		}
		waitImports(t, east, map[string][]string{})
	})

	for _, side := range []string{"acceptor", "dialer"} {
		t.Run("deleted on the "+side, func(t *testing.T) {
			peerClusters(t, east, west, "east", "west")
			exportBoth()
			cut()
			here, hereCl, name, there, thereName := east, ec, "west", west, "east"
			if side == "dialer" {
				here, hereCl, name, there, thereName = west, wc, "east", east, "west"
			}
			if _, err := hereCl.Peering.DeletePeering(ctx, &meshfedv1.DeleteRequest{Name: name}); err != nil {
				t.Fatal(err)
			}
			p := waitPeering(t, here, name, meshfedv1.PeeringState_PEERING_STATE_DELETING)
			if !strings.Contains(p.GetLastError(), "delete again") {
				t.Errorf("a deleting peering says %q", p.GetLastError())
			}
			waitImports(t, here, map[string][]string{})
			if n := federated(hereCl); n != 0 {
				t.Errorf("%d federated bundles left on the deleting side", n)
			}
			_, err := hereCl.Peering.GeneratePeeringToken(ctx, &meshfedv1.GeneratePeeringTokenRequest{Peer: name})
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "being deleted") {
				t.Errorf("a token for a deleting peering: %v", err)
			}
			_, err = hereCl.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
				Meta: &meshfedv1.Meta{Namespace: "default", Name: "payments"}, Peers: []string{name}}})
			if status.Code(err) != codes.FailedPrecondition {
				t.Errorf("an export to a deleting peering: %v", err)
			}
			// The other side knows nothing yet: it keeps its imports, stale.
			if err := gone(there, thereName); err == nil {
				t.Fatal("the other side lost its peering while the link was cut")
			}
			link.set(true)
			if err := poll(20*time.Second, func() error {
				return errors.Join(gone(east, "west"), gone(west, "east"))
			}); err != nil {
				t.Fatal(err)
			}
			waitImports(t, there, map[string][]string{})
			if n := federated(ec) + federated(wc); n != 0 {
				t.Errorf("%d federated bundles left after the deletion", n)
			}
		})
	}

	t.Run("a second delete gives up on telling the peer", func(t *testing.T) {
		peerClusters(t, east, west, "east", "west")
		cut()
		for range 2 {
			if _, err := ec.Peering.DeletePeering(ctx, &meshfedv1.DeleteRequest{Name: "west"}); err != nil {
				t.Fatal(err)
			}
		}
		if err := gone(east, "west"); err != nil {
			t.Fatal(err)
		}
		// west was never told; an operator deletes it there too.
		if err := gone(west, "east"); err == nil {
			t.Fatal("west's peering went away without being told")
		}
		if _, err := wc.Peering.DeletePeering(ctx, &meshfedv1.DeleteRequest{Name: "east"}); err != nil {
			t.Fatal(err)
		}
		if _, err := wc.Peering.DeletePeering(ctx, &meshfedv1.DeleteRequest{Name: "east"}); err != nil {
			t.Fatal(err)
		}
		if err := gone(west, "east"); err != nil {
			t.Fatal(err)
		}
		link.set(true)
	})
}

// TestPeerLinkReplacement: a new stream from the same peer replaces the
// running session, which ends as replaced and leaves its successor
// registered, so that a delete still reaches the live session.
func TestPeerLinkReplacement(t *testing.T) {
	l := newPeerLinks()
	ctxA, cancelA := context.WithCancelCause(context.Background())
	a, doneA := l.start("west", cancelA)
	if l.superseded("west", a) || !l.superseded("west", nil) {
		t.Fatal("a lone session counts as superseded, or a link loop does not see it running")
	}
	ctxB, cancelB := context.WithCancelCause(context.Background())
	b, doneB := l.start("west", cancelB)
	if !errors.Is(context.Cause(ctxA), errReplaced) {
		t.Fatalf("the first session ended with %v, want errReplaced", context.Cause(ctxA))
	}
	// The first session must not mark the peering down: the link is up.
	if !l.superseded("west", a) || l.superseded("west", b) {
		t.Fatal("superseded does not tell the replaced session from its successor")
	}
	doneA()
	if ctxB.Err() != nil {
		t.Fatal("the replacing session was cancelled")
	}
	if !l.close("west", "deleted") {
		t.Fatal("close found no running session after the replaced one ended")
	}
	if !errors.Is(context.Cause(ctxB), errClosedHere) {
		t.Fatalf("the live session ended with %v, want errClosedHere", context.Cause(ctxB))
	}
	if r, ok := l.closeReason("west"); !ok || r != "deleted" {
		t.Fatalf("close reason %q, %v", r, ok)
	}
	doneB()
	if l.close("west", "again") {
		t.Fatal("a session is still registered after both ended")
	}
	if l.superseded("west", b) || l.superseded("west", nil) {
		t.Fatal("a peering with no session running counts as superseded")
	}
}
