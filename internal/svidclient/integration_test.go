package svidclient_test

import (
	"context"
	"crypto"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/svidclient"
	"github.com/meshfed/meshfed/internal/testharness"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

func TestMain(m *testing.M) { os.Exit(testharness.Main(m)) }

// workloadToken creates a workload-join token for id through admin.
func workloadToken(t testing.TB, admin *client.Client, id string, uses uint32) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := admin.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{
		Kind:     meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN,
		SpiffeId: id,
		MaxUses:  uses,
		Ttl:      durationpb.New(10 * time.Minute),
	})
	if err != nil {
		t.Fatalf("creating a workload-join token for %s: %v", id, err)
	}
	return tok.GetSecret()
}

// clusterConfig is a client Config for the servers of c, in order.
func clusterConfig(t testing.TB, c *testharness.Cluster, token string, servers ...*testharness.Server) svidclient.Config {
	var addrs []string
	for _, s := range servers {
		addrs = append(addrs, s.APIAddr)
	}
	return svidclient.Config{
		Addrs:          addrs,
		CAFile:         c.CAFile,
		Token:          token,
		Logger:         testLogger(t),
		RequestTimeout: 3 * time.Second,
		MinBackoff:     50 * time.Millisecond,
		MaxBackoff:     time.Second,
		RenewJitter:    300 * time.Millisecond,
	}
}

// TestIntegrationWorkloadIdentity runs the library against a real
// three-server cluster: attestation, verification, renewal (on demand and
// at half life with a short SVID lifetime), mutual TLS between two
// workloads, refused tokens, and failover when a server stops.
func TestIntegrationWorkloadIdentity(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real servers")
	}
	c := testharness.StartCluster(t, 3, testharness.ClusterOptions{Name: "east", LogLevel: "info"})
	s1, s2, s3 := c.Servers[0], c.Servers[1], c.Servers[2]
	admin := c.Client(t, s1)
	td := spiffeid.RequireTrustDomainFromString("east.mesh")
	webID := spiffeid.RequireFromSegments(td, "ns", "default", "sa", "web")
	dbID := spiffeid.RequireFromSegments(td, "ns", "default", "sa", "db")

	web := started(t, clusterConfig(t, c, workloadToken(t, admin, webID.String(), 1), s1, s2, s3))

	t.Run("attested SVID", func(t *testing.T) {
		svid, err := web.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		id, _, err := x509svid.Verify(svid.Certificates, web)
		if err != nil {
			t.Fatalf("the SVID does not verify against the bundle: %v", err)
		}
		if id != webID {
			t.Errorf("SVID for %s, want %s", id, webID)
		}
		if !svid.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(svid.Certificates[0].PublicKey) {
			t.Error("the certificate is not for the locally generated key")
		}
		// The bundle is the cluster's: the CA file's roots verify the SVID.
		roots, err := tlsutil.LoadCertificatesFile(c.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(td, roots)); err != nil {
			t.Errorf("the SVID does not verify against ca.pem: %v", err)
		}
		st := web.Status()
		if st.AuthorityID == "" || st.ID != webID {
			t.Errorf("status %+v", st)
		}
	})

	t.Run("bundle stream acknowledged", func(t *testing.T) {
		waitFor(t, "the first bundle", func() bool { return web.Status().BundleSequence > 0 })
		// The servers count the watcher as current and know its authority.
		err := testharness.Poll(10*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			st, err := admin.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
			if err != nil {
				return err
			}
			if st.GetWatchers() < 1 || st.GetWatchersCurrent() != st.GetWatchers() {
				return errors.New("the watcher has not acknowledged the bundle: " + st.String())
			}
			for _, a := range st.GetAuthorities() {
				if a.GetId() == web.Status().AuthorityID && a.GetWatcherSvids() >= 1 {
					return nil
				}
			}
			return errors.New("no authority counts the watcher's SVID: " + st.String())
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("renewal", func(t *testing.T) {
		before := leafOf(t, web)
		if err := web.Renew(context.Background()); err != nil {
			t.Fatal(err)
		}
		after := leafOf(t, web)
		if after.SerialNumber.Cmp(before.SerialNumber) == 0 {
			t.Fatal("renewal returned the same certificate")
		}
		if id, _ := x509svid.IDFromCert(after); id != webID {
			t.Errorf("renewed SVID for %s", id)
		}
		// With a 10s lifetime the client renews on its own, at half life.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := admin.CA.UpdateCASettings(ctx, &meshfedv1.UpdateCASettingsRequest{
			Settings: &meshfedv1.CASettings{SvidTtl: durationpb.New(10 * time.Second)},
		}); err != nil {
			t.Fatalf("UpdateCASettings: %v", err)
		}
		if err := web.Renew(ctx); err != nil {
			t.Fatal(err)
		}
		short := leafOf(t, web)
		if life := time.Until(short.NotAfter); life > 11*time.Second {
			t.Fatalf("SVID lives %s after setting svid_ttl to 10s", life)
		}
		waitFor(t, "a renewal at half life", func() bool { return leafOf(t, web).SerialNumber.Cmp(short.SerialNumber) != 0 })
		if time.Now().After(short.NotAfter) {
			t.Error("renewed only after expiry")
		}
		if _, err := admin.CA.UpdateCASettings(ctx, &meshfedv1.UpdateCASettingsRequest{}); err != nil {
			t.Fatalf("UpdateCASettings: %v", err)
		}
	})

	t.Run("mutual TLS between workloads", func(t *testing.T) {
		db := started(t, clusterConfig(t, c, workloadToken(t, admin, dbID.String(), 1), s2, s3, s1))
		other := started(t, clusterConfig(t, c, workloadToken(t, admin, "spiffe://east.mesh/ns/default/sa/other", 1), s3))
		addr := serveTLS(t, db.ServerTLSConfig(tlsconfig.AuthorizeID(webID)))
		if err := handshake(addr, web.ClientTLSConfig(tlsconfig.AuthorizeID(dbID))); err != nil {
			t.Fatalf("web to db: %v", err)
		}
		if err := handshake(addr, other.ClientTLSConfig(tlsconfig.AuthorizeID(dbID))); err == nil {
			t.Fatal("db accepted a workload that is not web")
		}
		if err := handshake(addr, web.ClientTLSConfig(tlsconfig.AuthorizeID(webID))); err == nil {
			t.Fatal("web accepted db in place of web")
		}
	})

	t.Run("refused tokens", func(t *testing.T) {
		used := workloadToken(t, admin, "spiffe://east.mesh/ns/default/sa/once", 1)
		for _, tt := range []struct {
			name  string
			token string
			code  codes.Code
		}{
			{"unknown", "mfd_not-a-token", codes.Unauthenticated},
			{"admin token", c.AdminToken, codes.PermissionDenied},
			{"fresh", used, codes.OK},
			{"used up", used, codes.PermissionDenied},
		} {
			t.Run(tt.name, func(t *testing.T) {
				cl, err := svidclient.New(clusterConfig(t, c, tt.token, s1, s2, s3))
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				err = cl.Attest(ctx)
				if tt.code == codes.OK {
					if err != nil {
						t.Fatal(err)
					}
					return
				}
				if !errors.Is(err, svidclient.ErrRefused) || status.Code(err) != tt.code {
					t.Fatalf("Attest = %v, want %v refused", err, tt.code)
				}
				if ctx.Err() != nil {
					t.Error("the client retried a refused token until the deadline")
				}
			})
		}
	})

	t.Run("CA rotation", func(t *testing.T) {
		old := web.Status().AuthorityID
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// Activation waits for web to acknowledge the new root, retirement
		// for web to renew onto the new authority.
		stream, err := admin.CA.RotateCA(ctx, &meshfedv1.RotateCARequest{Timeout: durationpb.New(25 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		for {
			p, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("rotation: %v", err)
			}
			t.Logf("rotation: [%v] %s", p.GetStep(), p.GetMessage())
		}
		st := web.Status()
		if st.AuthorityID == old || st.AuthorityID != st.ActiveAuthorityID {
			t.Fatalf("after rotation the SVID is from %s, active %s (was %s)", st.AuthorityID, st.ActiveAuthorityID, old)
		}
		// The retired root leaves the client's bundle, and the SVID verifies
		// against what is left.
		waitFor(t, "the bundle without the retired root", func() bool {
			b, err := web.GetX509BundleForTrustDomain(td)
			return err == nil && len(b.X509Authorities()) == 1
		})
		svid, _ := web.GetX509SVID()
		if _, _, err := x509svid.Verify(svid.Certificates, web); err != nil {
			t.Errorf("after rotation: %v", err)
		}
		// Renewal keeps working against servers that now present
		// certificates of the new authority.
		if err := web.Renew(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("failover", func(t *testing.T) {
		// s1 holds web's bundle stream (it was first in the list).
		if err := s1.Stop(); err != nil {
			t.Fatal(err)
		}
		// Renewal moves on to s2, waiting out a leader election if s1 led.
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := web.Renew(ctx); err != nil {
			t.Fatalf("renewal with s1 stopped: %v", err)
		}
		// Admin writes go to the leader; wait for the election s1's exit
		// may have started.
		admin2 := c.Client(t, c.Leader())
		// A new workload listing the stopped server first still attests.
		cl := started(t, clusterConfig(t, c, workloadToken(t, admin2, "spiffe://east.mesh/ns/default/sa/late", 1), s1, s2, s3))
		if _, err := cl.GetX509SVID(); err != nil {
			t.Fatal(err)
		}
		// web's bundle stream reconnected to another server: a bundle change
		// made now reaches it.
		stream, err := admin2.CA.RotateCA(ctx, &meshfedv1.RotateCARequest{Step: meshfedv1.RotationStep_ROTATION_STEP_PREPARE})
		if err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := stream.Recv(); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("prepare: %v", err)
			}
		}
		waitFor(t, "the prepared root on the reconnected bundle stream", func() bool {
			b, err := web.GetX509BundleForTrustDomain(td)
			return err == nil && len(b.X509Authorities()) == 2
		})
	})
}
