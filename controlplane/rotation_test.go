package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// testWatcher is a workload that watches the bundle the way the client
// library does: it acknowledges every bundle and, when the active authority
// is not the one of its SVID, renews and acknowledges again.
type testWatcher struct {
	t   *testing.T
	c   *testCluster
	ts  *testServer
	mu  sync.Mutex
	svd *meshfedv1.SVIDResponse
	key interface{ Public() any }
	// bundles records every bundle received.
	bundles []*meshfedv1.WatchBundleResponse
	renewed int
}

func startTestWatcher(t *testing.T, c *testCluster, ts *testServer, id string) (*testWatcher, func()) {
	t.Helper()
	tok := workloadToken(t, c, id, 1, time.Minute)
	key := newKey(t)
	resp, err := workloadClient(t, c, ts, "", nil).Workload.Attest(context.Background(), &meshfedv1.AttestRequest{Token: tok.Secret, Csr: csrFor(t, key, nil)})
	if err != nil {
		t.Fatal(err)
	}
	w := &testWatcher{t: t, c: c, ts: ts, svd: resp}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		cl := workloadClient(t, c, ts, resp.GetCertificateChainPem(), key)
		stream, err := cl.Workload.WatchBundle(ctx)
		if err != nil {
			return
		}
		if err := stream.Send(&meshfedv1.WatchBundleRequest{SvidAuthorityId: resp.GetAuthorityId()}); err != nil {
			return
		}
		for {
			b, err := stream.Recv()
			if err != nil {
				return
			}
			w.mu.Lock()
			w.bundles = append(w.bundles, b)
			cur := w.svd
			w.mu.Unlock()
			if b.GetActiveAuthorityId() != cur.GetAuthorityId() {
				key2 := newKey(t)
				wl := workloadClient(t, c, ts, cur.GetCertificateChainPem(), key)
				r2, err := wl.Workload.Renew(ctx, &meshfedv1.RenewRequest{Csr: csrFor(t, key2, nil)})
				if err != nil {
					t.Errorf("renewing after activation: %v", err)
					return
				}
				key = key2
				w.mu.Lock()
				w.svd = r2
				w.renewed++
				w.mu.Unlock()
				cur = r2
			}
			if err := stream.Send(&meshfedv1.WatchBundleRequest{AckSequence: b.GetBundle().GetSequence(), SvidAuthorityId: cur.GetAuthorityId()}); err != nil {
				return
			}
		}
	}()
	return w, func() { cancel(); <-done }
}

func (w *testWatcher) current() *meshfedv1.SVIDResponse {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.svd
}

// rotate runs a rotation request to its end and returns the progress.
func rotate(t *testing.T, cl meshfedv1.CAServiceClient, req *meshfedv1.RotateCARequest) ([]*meshfedv1.RotateCAProgress, error) {
	t.Helper()
	stream, err := cl.RotateCA(context.Background(), req)
	if err != nil {
		return nil, err
	}
	var out []*meshfedv1.RotateCAProgress
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, p)
	}
}

func authorityIn(st *meshfedv1.CAStatus, state meshfedv1.AuthorityState) []*meshfedv1.Authority {
	var out []*meshfedv1.Authority
	for _, a := range st.GetAuthorities() {
		if a.GetState() == state {
			out = append(out, a)
		}
	}
	return out
}

func TestRotationWithWatchers(t *testing.T) {
	c := startTestCluster(t, 3)
	ctx := context.Background()
	// Watchers on a follower and on the leader: propagation is counted
	// across servers.
	w1, stop1 := startTestWatcher(t, c, c.follower(t), webID)
	defer stop1()
	w2, stop2 := startTestWatcher(t, c, c.leader(t), dbID)
	defer stop2()

	admin := c.client(t, c.follower(t))
	before, err := admin.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	oldActive := authorityIn(before, meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE)
	if len(oldActive) != 1 {
		t.Fatalf("before rotation: %v", before)
	}
	oldRoot := certs(t, oldActive[0].GetRootPem())[0]

	// Through a follower: the stream is forwarded to the leader.
	progress, err := rotate(t, admin.CA, &meshfedv1.RotateCARequest{Timeout: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatalf("rotation: %v (progress %v)", err, progress)
	}
	var msgs []string
	for _, p := range progress {
		msgs = append(msgs, p.GetMessage())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"prepared authority", "is active", "is retired"} {
		if !strings.Contains(all, want) {
			t.Fatalf("progress lacks %q:\n%s", want, all)
		}
	}
	final := progress[len(progress)-1].GetStatus()
	if final == nil {
		t.Fatal("the last progress message carries no status")
	}
	newActive := authorityIn(final, meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE)
	retired := authorityIn(final, meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRED)
	if len(newActive) != 1 || len(retired) != 1 || retired[0].GetId() != oldActive[0].GetId() || newActive[0].GetId() == oldActive[0].GetId() {
		t.Fatalf("after rotation: %v", final)
	}
	// The watchers acknowledge the bundle without the old root. Read from
	// the leader from here on: a follower may not have applied the retire.
	admin = c.client(t, c.leader(t))
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := admin.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if st.GetWatchers() == 2 && st.GetWatchersCurrent() == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watchers %d, current %d; want 2 and 2", st.GetWatchers(), st.GetWatchersCurrent())
		}
		time.Sleep(50 * time.Millisecond)
	}
	newRoot := certs(t, newActive[0].GetRootPem())[0]

	// Both watchers moved to the new authority and saw the new root
	// before it signed anything.
	for _, w := range []*testWatcher{w1, w2} {
		if w.current().GetAuthorityId() != newActive[0].GetId() {
			t.Fatalf("watcher still holds an SVID of %s", w.current().GetAuthorityId())
		}
		w.mu.Lock()
		sawBothRoots := false
		for _, b := range w.bundles {
			if len(b.GetBundle().GetRootsPem()) == 2 && b.GetActiveAuthorityId() == oldActive[0].GetId() {
				sawBothRoots = true
			}
		}
		w.mu.Unlock()
		if !sawBothRoots {
			t.Fatal("a watcher never saw the bundle with both roots while the old authority was active")
		}
	}

	// The bundle now holds only the new root, and new SVIDs chain to it
	// alone.
	tb, err := admin.CA.GetTrustBundle(ctx, &meshfedv1.GetTrustBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if roots := tb.GetBundles()[0].GetRootsPem(); len(roots) != 1 || !certs(t, roots[0])[0].Equal(newRoot) {
		t.Fatalf("bundle after retire: %v", roots)
	}
	chain := certs(t, w1.current().GetCertificateChainPem())
	if !verifiesAgainst(chain, newRoot) {
		t.Fatal("an SVID issued after activation does not verify against the new root")
	}
	key := newKey(t)
	resp, err := workloadClient(t, c, c.servers[0], "", nil).Workload.Attest(ctx, &meshfedv1.AttestRequest{
		Token: workloadToken(t, c, webID, 1, time.Minute).Secret, Csr: csrFor(t, key, nil)})
	if err != nil {
		t.Fatal(err)
	}
	chain = certs(t, resp.GetCertificateChainPem())
	if len(chain) != 2 || !verifiesAgainst(chain, newRoot) || verifiesAgainst(chain, oldRoot) {
		t.Fatalf("an SVID issued after retire has %d certificates; it must chain only to the new root", len(chain))
	}

	// Every server moved its own certificate to the new authority and the
	// cluster still replicates.
	for _, ts := range c.servers {
		if got := ts.srv.ownCertAuthority(); got != newActive[0].GetId() {
			t.Fatalf("%s presents a certificate of %q", ts.cfg.NodeID, got)
		}
	}
	if _, err := c.client(t, c.follower(t)).Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svcNamed("after-rotation")}); err != nil {
		t.Fatal(err)
	}

	// Nothing is left to retire or activate.
	_, err = rotate(t, admin.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_RETIRE})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = rotate(t, admin.CA, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE})
	wantCode(t, err, codes.FailedPrecondition)
}

func verifiesAgainst(chain []*x509.Certificate, root *x509.Certificate) bool {
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

func certs(t *testing.T, pemData string) []*x509.Certificate {
	t.Helper()
	out, err := tlsutil.ParseCertificatesPEM([]byte(pemData))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func svcNamed(name string) *meshfedv1.Service {
	return &meshfedv1.Service{Meta: &meshfedv1.Meta{Namespace: "default", Name: name}, Port: 80, Protocol: meshfedv1.Protocol_PROTOCOL_HTTP}
}
