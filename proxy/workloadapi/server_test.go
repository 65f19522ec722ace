package workloadapi_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	wl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshfed/meshfed/proxy/workloadapi"
)

const appPath = "/ns/default/sa/app"

// fixture is a source holding an SVID of example.org, the example.org
// bundle and a federated bundle of federated.test.
type fixture struct {
	src  *fakeSource
	ca   *testCA
	fed  *testCA
	svid *x509svid.SVID
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{src: newFakeSource(), ca: newCA(t, "example.org"), fed: newCA(t, "federated.test")}
	f.svid = f.ca.issue(t, appPath)
	f.src.setBundle(f.ca.bundle())
	f.src.setBundle(f.fed.bundle())
	f.src.setSVID(f.svid)
	return f
}

func addr(path string) wl.ClientOption { return wl.WithAddr("unix://" + path) }

func newClient(t *testing.T, ctx context.Context, path string) *wl.Client {
	t.Helper()
	c, err := wl.New(ctx, addr(path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newX509Source(t *testing.T, ctx context.Context, path string) *wl.X509Source {
	t.Helper()
	s, err := wl.NewX509Source(ctx, wl.WithClientOptions(addr(path)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// rawClient is a plain gRPC client of the socket, which adds no header.
func rawClient(t *testing.T, path string) workload.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func requireCode(t *testing.T, err error, want codes.Code, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != want {
		t.Fatalf("got %v, want code %v", err, want)
	}
	if msg != "" && st.Message() != msg {
		t.Fatalf("got message %q, want %q", st.Message(), msg)
	}
}

func TestGoSpiffeClientGetsSVIDAndBundles(t *testing.T) {
	f := newFixture(t)
	_, path := startServer(t, f.src)
	ctx := testCtx(t)
	c := newClient(t, ctx, path)

	svid, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	requireSameSVID(t, svid, f.svid)

	xc, err := c.FetchX509Context(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(xc.SVIDs) != 1 {
		t.Fatalf("%d SVIDs, want 1", len(xc.SVIDs))
	}
	requireSameSVID(t, xc.DefaultSVID(), f.svid)
	if n := xc.Bundles.Len(); n != 2 {
		t.Fatalf("X.509 context has %d bundles, want 2", n)
	}
	requireBundle(t, xc.Bundles, f.ca.td, f.ca.root)
	requireBundle(t, xc.Bundles, f.fed.td, f.fed.root)

	set, err := c.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := set.Len(); n != 2 {
		t.Fatalf("%d bundles, want 2", n)
	}
	requireBundle(t, set, f.ca.td, f.ca.root)
	requireBundle(t, set, f.fed.td, f.fed.root)

	// The X509Source applications use: it holds the SVID, and its bundles
	// verify it.
	src := newX509Source(t, ctx, path)
	got, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	requireSameSVID(t, got, f.svid)
	if _, _, err := x509svid.Verify(got.Certificates, src); err != nil {
		t.Fatalf("SVID does not verify against the served bundle: %v", err)
	}
	fb, err := src.GetX509BundleForTrustDomain(f.fed.td)
	if err != nil {
		t.Fatal(err)
	}
	if !sameAuthorities(fb, f.fed.root) {
		t.Fatal("federated bundle differs")
	}
}

// TestWireFormat checks the encoding of the messages themselves.
func TestWireFormat(t *testing.T) {
	f := newFixture(t)
	_, path := startServer(t, f.src)
	ctx := withHeader(testCtx(t))
	api := rawClient(t, path)

	stream, err := api.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Svids) != 1 {
		t.Fatalf("%d SVIDs, want 1", len(resp.Svids))
	}
	s := resp.Svids[0]
	if s.SpiffeId != "spiffe://example.org"+appPath {
		t.Errorf("spiffe_id = %q", s.SpiffeId)
	}
	chain := append(append([]byte{}, f.svid.Certificates[0].Raw...), f.ca.inter.Raw...)
	if !bytes.Equal(s.X509Svid, chain) {
		t.Error("x509_svid is not the DER chain, leaf first")
	}
	if key, err := x509.ParsePKCS8PrivateKey(s.X509SvidKey); err != nil {
		t.Errorf("x509_svid_key is not PKCS#8: %v", err)
	} else if !key.(*ecdsa.PrivateKey).Equal(f.svid.PrivateKey) {
		t.Error("x509_svid_key is not the SVID's key")
	}
	if !bytes.Equal(s.Bundle, f.ca.root.Raw) {
		t.Error("bundle is not the own trust domain's root")
	}
	if len(resp.FederatedBundles) != 1 || !bytes.Equal(resp.FederatedBundles["spiffe://federated.test"], f.fed.root.Raw) {
		t.Errorf("federated_bundles = %d entries, want spiffe://federated.test", len(resp.FederatedBundles))
	}

	bstream, err := api.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	bresp, err := bstream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(bresp.Bundles) != 2 ||
		!bytes.Equal(bresp.Bundles["spiffe://example.org"], f.ca.root.Raw) ||
		!bytes.Equal(bresp.Bundles["spiffe://federated.test"], f.fed.root.Raw) {
		t.Errorf("bundles = %d entries, want spiffe://example.org and spiffe://federated.test", len(bresp.Bundles))
	}
}

func TestRotationReachesX509Source(t *testing.T) {
	f := newFixture(t)
	_, path := startServer(t, f.src)
	ctx := testCtx(t)
	src := newX509Source(t, ctx, path)

	current := func() *x509svid.SVID {
		s, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	requireSameSVID(t, current(), f.svid)

	// A renewal: new key, new certificate.
	next := f.ca.issue(t, appPath)
	f.src.setSVID(next)
	eventually(t, "the renewed SVID", func() bool { return current().Certificates[0].Equal(next.Certificates[0]) })
	requireSameSVID(t, current(), next)

	// A CA rotation adds a root to the own bundle.
	newRoot := newCA(t, "example.org").root
	f.src.setBundle(x509bundle.FromX509Authorities(f.ca.td, []*x509.Certificate{f.ca.root, newRoot}))
	eventually(t, "the rotated own bundle", func() bool {
		b, err := src.GetX509BundleForTrustDomain(f.ca.td)
		return err == nil && sameAuthorities(b, f.ca.root, newRoot)
	})

	// A federated trust domain appears and the old one goes away.
	other := newCA(t, "other.test")
	f.src.setBundle(other.bundle())
	f.src.removeBundle(f.fed.td)
	eventually(t, "the new federation", func() bool {
		_, errOld := src.GetX509BundleForTrustDomain(f.fed.td)
		b, err := src.GetX509BundleForTrustDomain(other.td)
		return errOld != nil && err == nil && sameAuthorities(b, other.root)
	})
	requireSameSVID(t, current(), next)
}

// bundleWatcher records the updates of a go-spiffe bundle watch.
type bundleWatcher struct {
	ctx     context.Context
	updates chan *x509bundle.Set
}

func (w *bundleWatcher) OnX509BundlesUpdate(s *x509bundle.Set) {
	select {
	case w.updates <- s:
	case <-w.ctx.Done():
	}
}

func (w *bundleWatcher) OnX509BundlesWatchError(error) {}

func TestBundleWatcherSeesChanges(t *testing.T) {
	f := newFixture(t)
	_, path := startServer(t, f.src)
	ctx, cancel := context.WithCancel(testCtx(t))
	c := newClient(t, ctx, path)
	w := &bundleWatcher{ctx: ctx, updates: make(chan *x509bundle.Set)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.WatchX509Bundles(ctx, w)
	}()
	defer wg.Wait()
	defer cancel()

	next := func() *x509bundle.Set {
		t.Helper()
		select {
		case s := <-w.updates:
			return s
		case <-ctx.Done():
			t.Fatal("no bundle update")
			return nil
		}
	}
	set := next()
	requireBundle(t, set, f.ca.td, f.ca.root)
	requireBundle(t, set, f.fed.td, f.fed.root)

	// Renewing the SVID does not change the bundles: no update. The next
	// update is the bundle change (made once the stream has looked at the
	// source after the renewal).
	reads := f.src.reads.Load()
	f.src.setSVID(f.ca.issue(t, appPath))
	eventually(t, "the server to read the source", func() bool { return f.src.reads.Load() > reads })
	fed2 := newCA(t, "federated.test")
	f.src.setBundle(fed2.bundle())
	set = next()
	requireBundle(t, set, f.fed.td, fed2.root)
	requireBundle(t, set, f.ca.td, f.ca.root)
}

// TestNoUpdateWithoutChange checks that a notification that changes
// nothing sends nothing.
func TestNoUpdateWithoutChange(t *testing.T) {
	f := newFixture(t)
	_, path := startServer(t, f.src)
	ctx := withHeader(testCtx(t))
	api := rawClient(t, path)

	stream, err := api.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	// Wake the stream without changing anything, and wait until it read
	// the source again, so that the change below comes after.
	reads := f.src.reads.Load()
	f.src.notify(0)
	eventually(t, "the server to read the source", func() bool { return f.src.reads.Load() > reads })

	next := f.ca.issue(t, appPath)
	f.src.setSVID(next)
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(resp.Svids[0].X509Svid, next.Certificates[0].Raw) {
		t.Fatal("the update after a no-op notification is not the renewed SVID")
	}
}

func TestSecurityHeaderRequired(t *testing.T) {
	f := newFixture(t)
	_, path := startServer(t, f.src)
	ctx := testCtx(t)
	api := rawClient(t, path)
	const msg = "security header missing from request"

	for name, ctx := range map[string]context.Context{
		"absent": ctx,
		"false":  metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "false"),
		"twice":  metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true", "workload.spiffe.io", "true"),
	} {
		t.Run(name, func(t *testing.T) {
			s, err := api.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			requireCode(t, err, codes.InvalidArgument, msg)

			b, err := api.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
			if err == nil {
				_, err = b.Recv()
			}
			requireCode(t, err, codes.InvalidArgument, msg)

			_, err = api.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"x"}})
			requireCode(t, err, codes.InvalidArgument, msg)
		})
	}
}

func TestJWTProfileUnimplemented(t *testing.T) {
	f := newFixture(t)
	_, path := startServer(t, f.src)
	ctx := testCtx(t)
	const msg = "meshfed issues X.509 SVIDs only"

	api := rawClient(t, path)
	hctx := withHeader(ctx)
	_, err := api.FetchJWTSVID(hctx, &workload.JWTSVIDRequest{Audience: []string{"x"}})
	requireCode(t, err, codes.Unimplemented, msg)
	_, err = api.ValidateJWTSVID(hctx, &workload.ValidateJWTSVIDRequest{Audience: "x", Svid: "y"})
	requireCode(t, err, codes.Unimplemented, msg)
	s, err := api.FetchJWTBundles(hctx, &workload.JWTBundlesRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	requireCode(t, err, codes.Unimplemented, msg)
	w, err := api.FetchWITSVID(hctx, &workload.WITSVIDRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	requireCode(t, err, codes.Unimplemented, msg)

	// As go-spiffe reports it.
	c := newClient(t, ctx, path)
	_, err = c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "x"})
	requireCode(t, err, codes.Unimplemented, msg)
	_, err = c.FetchJWTBundles(ctx)
	requireCode(t, err, codes.Unimplemented, msg)
}

// contextWatcher records a go-spiffe X.509 context watch.
type contextWatcher struct {
	mu      sync.Mutex
	errs    []error
	first   chan *wl.X509Context
	updated bool
}

func (w *contextWatcher) OnX509ContextUpdate(c *wl.X509Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.updated {
		w.updated = true
		w.first <- c
	}
}

func (w *contextWatcher) OnX509ContextWatchError(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.updated {
		w.errs = append(w.errs, err)
	}
}

// TestWaitsForFirstSVID: before the proxy has an SVID, streams wait, and
// the clients get it as soon as it arrives, without an error and a retry.
func TestWaitsForFirstSVID(t *testing.T) {
	src := newFakeSource()
	_, path := startServer(t, src)
	// The goroutines below end when ctx is cancelled, before the test
	// waits for them.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()

	c := newClient(t, ctx, path)
	w := &contextWatcher{first: make(chan *wl.X509Context, 1)}
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.WatchX509Context(ctx, w)
	}()

	type result[T any] struct {
		v   T
		err error
	}
	sourceC := make(chan result[*wl.X509Source], 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		s, err := wl.NewX509Source(ctx, wl.WithClientOptions(addr(path)))
		sourceC <- result[*wl.X509Source]{s, err}
	}()
	bundlesC := make(chan result[*x509bundle.Set], 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		s, err := c.FetchX509Bundles(ctx)
		bundlesC <- result[*x509bundle.Set]{s, err}
	}()

	// All three streams are open and waiting.
	eventually(t, "three open streams", func() bool { return src.subscribers() == 3 })

	// The bundle comes first: the bundle stream answers, the SVID streams
	// keep waiting for the SVID.
	ca := newCA(t, "example.org")
	src.setBundle(ca.bundle())
	select {
	case r := <-bundlesC:
		if r.err != nil {
			t.Fatal(r.err)
		}
		requireBundle(t, r.v, ca.td, ca.root)
	case <-ctx.Done():
		t.Fatal("FetchX509Bundles did not return after the bundle was set")
	}

	svid := ca.issue(t, appPath)
	src.setSVID(svid)
	select {
	case r := <-sourceC:
		if r.err != nil {
			t.Fatal(r.err)
		}
		defer r.v.Close()
		got, err := r.v.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		requireSameSVID(t, got, svid)
	case <-ctx.Done():
		t.Fatal("NewX509Source did not return after the SVID was set")
	}
	select {
	case xc := <-w.first:
		requireSameSVID(t, xc.DefaultSVID(), svid)
	case <-ctx.Done():
		t.Fatal("no X.509 context update")
	}
	w.mu.Lock()
	errs := w.errs
	w.mu.Unlock()
	if len(errs) != 0 {
		t.Fatalf("the watch saw errors before the first SVID: %v", errs)
	}
}

func TestCloseEndsStreams(t *testing.T) {
	f := newFixture(t)
	srv, path := startServer(t, f.src)
	ctx := withHeader(testCtx(t))
	api := rawClient(t, path)

	s, err := api.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	// A stream still waiting for its first response ends too.
	empty := newFakeSource()
	srv2, path2 := startServer(t, empty)
	waiting, err := rawClient(t, path2).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the waiting stream", func() bool { return empty.subscribers() == 1 })

	for _, c := range []struct {
		srv    *workloadapi.Server
		stream grpc.ServerStreamingClient[workload.X509SVIDResponse]
	}{{srv, s}, {srv2, waiting}} {
		closed := make(chan error, 1)
		go func() { closed <- c.srv.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(waitFor):
			t.Fatal("Close did not return")
		}
		_, err := c.stream.Recv()
		if code := status.Code(err); code != codes.Unavailable {
			t.Fatalf("stream ended with %v, want Unavailable", err)
		}
	}
	if f.src.subscribers() != 0 || empty.subscribers() != 0 {
		t.Fatal("a stream is still subscribed after Close")
	}
}

func socketMode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	info, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Type() != fs.ModeSocket {
		t.Fatalf("%s is not a socket: %v", path, info.Mode())
	}
	return info.Mode().Perm()
}

func TestSocketFile(t *testing.T) {
	f := newFixture(t)
	newServer := func(t *testing.T, path string, mode fs.FileMode) *workloadapi.Server {
		t.Helper()
		srv, err := workloadapi.New(f.src, workloadapi.Config{Path: path, Mode: mode, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		return srv
	}
	fetch := func(t *testing.T, path string) {
		t.Helper()
		ctx := testCtx(t)
		svid, err := newClient(t, ctx, path).FetchX509SVID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		requireSameSVID(t, svid, f.svid)
	}

	t.Run("mode", func(t *testing.T) {
		for _, c := range []struct{ set, want fs.FileMode }{{0, 0o660}, {0o600, 0o600}, {0o666, 0o666}} {
			path := filepath.Join(shortDir(t), "api.sock")
			srv := newServer(t, path, c.set)
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			if got := socketMode(t, path); got != c.want {
				t.Errorf("Mode %v: socket mode %v, want %v", c.set, got, c.want)
			}
			if err := srv.Close(); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("close removes the socket", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "api.sock")
		srv := newServer(t, path, 0)
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(); err == nil {
			t.Fatal("second Start succeeded")
		}
		fetch(t, path)
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("socket still there after Close: %v", err)
		}
		if err := srv.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if err := srv.Start(); err == nil {
			t.Fatal("Start after Close succeeded")
		}
	})

	t.Run("close leaves a file that replaced the socket", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "api.sock")
		srv := newServer(t, path, 0)
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("other"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "other" {
			t.Fatalf("Close touched a file it did not create: %q, %v", b, err)
		}
	})

	t.Run("refuses a file that is not a socket", func(t *testing.T) {
		dir := shortDir(t)
		file := filepath.Join(dir, "file")
		if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		sub := filepath.Join(dir, "dir")
		if err := os.Mkdir(sub, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{file, sub} {
			err := newServer(t, path, 0).Start()
			if err == nil || !strings.Contains(err.Error(), "not a socket") {
				t.Fatalf("Start on %s: %v, want a refusal", path, err)
			}
		}
		if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
			t.Fatalf("file changed: %q, %v", b, err)
		}
		if _, err := os.Stat(sub); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("replaces a stale socket", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "api.sock")
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		l.Close()
		socketMode(t, path) // still there
		if err := newServer(t, path, 0o600).Start(); err != nil {
			t.Fatal(err)
		}
		if got := socketMode(t, path); got != 0o600 {
			t.Fatalf("socket mode %v, want 0600", got)
		}
		fetch(t, path)
	})

	t.Run("refuses a socket in use", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "api.sock")
		if err := newServer(t, path, 0).Start(); err != nil {
			t.Fatal(err)
		}
		err := newServer(t, path, 0).Start()
		if err == nil || !strings.Contains(err.Error(), "another process is serving") {
			t.Fatalf("second server on the same path: %v, want a refusal", err)
		}
		fetch(t, path)
	})

	t.Run("missing directory", func(t *testing.T) {
		dir := filepath.Join(shortDir(t), "missing")
		err := newServer(t, filepath.Join(dir, "api.sock"), 0).Start()
		if err == nil || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), dir) {
			t.Fatalf("Start in a missing directory: %v", err)
		}
	})
}

func TestNewChecksConfig(t *testing.T) {
	src := newFakeSource()
	for name, c := range map[string]struct {
		src workloadapi.Source
		cfg workloadapi.Config
	}{
		"nil source":   {nil, workloadapi.Config{Path: "/tmp/x.sock"}},
		"no path":      {src, workloadapi.Config{}},
		"not a mode":   {src, workloadapi.Config{Path: "/tmp/x.sock", Mode: fs.ModeSocket | 0o600}},
		"setuid mode?": {src, workloadapi.Config{Path: "/tmp/x.sock", Mode: fs.ModeSetuid | 0o600}},
	} {
		if _, err := workloadapi.New(c.src, c.cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	srv, err := workloadapi.New(src, workloadapi.Config{Path: "rel.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(srv.Path()) {
		t.Errorf("Path %q is not absolute", srv.Path())
	}
	if err := srv.Close(); err != nil {
		t.Errorf("Close without Start: %v", err)
	}
}
