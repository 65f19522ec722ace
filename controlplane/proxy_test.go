package controlplane

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// proxyConn is a connection made as meshfed-proxy makes it: with the
// workload's SVID as the client certificate and no bearer token.
type proxyConn struct {
	*client.Client
	Proxy meshfedv1.ProxyServiceClient
}

// workloadSVID attests id with a workload-join token and returns the SVID
// chain and its key.
func workloadSVID(t *testing.T, c *testCluster, id string) (string, crypto.Signer) {
	t.Helper()
	tok := workloadToken(t, c, id, 1, time.Minute)
	key := newKey(t)
	resp, err := workloadClient(t, c, c.servers[0], "", nil).Workload.Attest(context.Background(),
		&meshfedv1.AttestRequest{Token: tok.Secret, Csr: csrFor(t, key, nil)})
	if err != nil {
		t.Fatalf("attesting %s: %v", id, err)
	}
	return resp.GetCertificateChainPem(), key
}

// dialProxy attests id and connects to ts as its proxy.
func dialProxy(t *testing.T, c *testCluster, ts *testServer, id string) *proxyConn {
	t.Helper()
	chain, key := workloadSVID(t, c, id)
	return connectProxy(t, c, ts, chain, key)
}

func connectProxy(t *testing.T, c *testCluster, ts *testServer, chain string, key crypto.Signer) *proxyConn {
	t.Helper()
	cl := workloadClient(t, c, ts, chain, key)
	return &proxyConn{Client: cl, Proxy: meshfedv1.NewProxyServiceClient(cl.Conn)}
}

// wantError checks an error's code and that its message mentions each of
// words.
func wantError(t *testing.T, err error, code codes.Code, words ...string) {
	t.Helper()
	wantCode(t, err, code)
	for _, w := range words {
		if !strings.Contains(status.Convert(err).Message(), w) {
			t.Fatalf("error %q does not mention %q", status.Convert(err).Message(), w)
		}
	}
}

func webEndpoint(instance, addr string) *meshfedv1.RegisterEndpointRequest {
	return &meshfedv1.RegisterEndpointRequest{Service: "web", Instance: instance, Address: addr, Port: 15443,
		Version: "v1", Locality: &meshfedv1.Locality{Region: "eu-west", Zone: "a"}}
}

func getWorkload(t *testing.T, cl *client.Client, name string) *meshfedv1.Workload {
	t.Helper()
	w, err := cl.Catalog.GetWorkload(context.Background(), &meshfedv1.GetRequest{Name: name, Read: &meshfedv1.ReadOptions{Consistent: true}})
	if err != nil {
		t.Fatalf("get workload %s: %v", name, err)
	}
	return w
}

// TestPolicyForWorkloads checks, for every RPC of the API, that a workload
// SVID admits exactly the reads a proxy needs and ProxyService.
func TestPolicyForWorkloads(t *testing.T) {
	seen := 0
	protoregistry.GlobalFiles.RangeFilesByPackage("meshfed.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				full := "/" + string(sd.FullName()) + "/" + string(sd.Methods().Get(j).Name())
				_, m := methodName(full)
				pol := policyFor(full)
				switch {
				case sd.Name() == "ProxyService":
					if pol != (methodPolicy{permProxy, fwdAlways}) {
						t.Errorf("%s: %+v, want SVID only, on the leader", full, pol)
					}
				case workloadReads[strings.TrimPrefix(full, "/")]:
					seen++
					want := fwdIfConsistent
					if strings.HasPrefix(m, "Watch") {
						want = fwdNever
					}
					if pol.perm != permWorkload || pol.forward != want {
						t.Errorf("%s: %+v, want a workload read", full, pol)
					}
				case pol.perm == permWorkload || pol.perm == permProxy:
					t.Errorf("%s admits workload SVIDs", full)
				}
			}
		}
		return true
	})
	if seen != len(workloadReads) {
		t.Fatalf("%d of the %d workload reads are RPCs of the API", seen, len(workloadReads))
	}
}

func TestProxyRegisterEndpoint(t *testing.T) {
	c := startTestCluster(t, 1)
	ctx := context.Background()
	s := c.servers[0]
	admin := c.client(t, s)
	for _, sv := range []*meshfedv1.Service{svc("web", 8080), svc("db", 5432),
		{Meta: &meshfedv1.Meta{Name: "api"}, Port: 9000, Protocol: meshfedv1.Protocol_PROTOCOL_GRPC, ServiceAccount: "web"}} {
		if _, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: sv}); err != nil {
			t.Fatal(err)
		}
	}
	web := dialProxy(t, c, s, webID)

	resp, err := web.Proxy.RegisterEndpoint(ctx, webEndpoint("web-0", "10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	w := resp.GetWorkload()
	if !w.GetProxy() || w.GetSpiffeId() != webID || w.GetHealth() != meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY ||
		w.GetMeta().GetNamespace() != "default" || w.GetService() != "web" || w.GetPort() != 15443 || w.GetLocality().GetZone() != "a" {
		t.Fatalf("registered workload: %v", w)
	}
	if resp.GetHeartbeatInterval().AsDuration() != 2*time.Second || resp.GetHeartbeatTtl().AsDuration() != 6*time.Second {
		t.Fatalf("heartbeat interval %v, ttl %v; want the defaults 2s, 6s", resp.GetHeartbeatInterval().AsDuration(), resp.GetHeartbeatTtl().AsDuration())
	}
	// Registering again (a restarted proxy) changes nothing.
	again, err := web.Proxy.RegisterEndpoint(ctx, webEndpoint("web-0", "10.0.0.1"))
	if err != nil || again.GetWorkload().GetMeta().GetVersion() != w.GetMeta().GetVersion() {
		t.Fatalf("registering again: %v, version %d, want %d", err, again.GetWorkload().GetMeta().GetVersion(), w.GetMeta().GetVersion())
	}
	// Another service of the same identity.
	api := webEndpoint("api-0", "10.0.0.2")
	api.Service = "api"
	if _, err := web.Proxy.RegisterEndpoint(ctx, api); err != nil {
		t.Fatalf("endpoint of a service whose service account is the caller's: %v", err)
	}

	t.Run("refused", func(t *testing.T) {
		edit := func(f func(*meshfedv1.RegisterEndpointRequest)) *meshfedv1.RegisterEndpointRequest {
			r := webEndpoint("web-9", "10.0.0.9")
			f(r)
			return r
		}
		for _, tc := range []struct {
			name  string
			req   *meshfedv1.RegisterEndpointRequest
			code  codes.Code
			words []string
		}{
			{"other service account", edit(func(r *meshfedv1.RegisterEndpointRequest) { r.Service = "db" }), codes.PermissionDenied, []string{`"db"`, `"web"`, webID}},
			{"missing service", edit(func(r *meshfedv1.RegisterEndpointRequest) { r.Service = "nope" }), codes.NotFound, []string{`"nope"`}},
			{"no service", edit(func(r *meshfedv1.RegisterEndpointRequest) { r.Service = "" }), codes.InvalidArgument, []string{"invalid service:"}},
			{"no address", edit(func(r *meshfedv1.RegisterEndpointRequest) { r.Address = "" }), codes.InvalidArgument, []string{"invalid address:"}},
			{"host name", edit(func(r *meshfedv1.RegisterEndpointRequest) { r.Address = "web.example" }), codes.InvalidArgument, []string{"invalid address:"}},
			{"port 0", edit(func(r *meshfedv1.RegisterEndpointRequest) { r.Port = 0 }), codes.InvalidArgument, []string{"invalid port:"}},
			{"port too big", edit(func(r *meshfedv1.RegisterEndpointRequest) { r.Port = 70000 }), codes.InvalidArgument, []string{"invalid port:"}},
			{"no instance", edit(func(r *meshfedv1.RegisterEndpointRequest) { r.Instance = "" }), codes.InvalidArgument, []string{"invalid instance:"}},
			{"bad instance", edit(func(r *meshfedv1.RegisterEndpointRequest) { r.Instance = "Web_9" }), codes.InvalidArgument, []string{"invalid instance:"}},
			{"bad version", edit(func(r *meshfedv1.RegisterEndpointRequest) { r.Version = "v 2" }), codes.InvalidArgument, []string{"invalid version:"}},
			{"bad zone", edit(func(r *meshfedv1.RegisterEndpointRequest) { r.Locality.Zone = "-a" }), codes.InvalidArgument, []string{"invalid locality.zone:"}},
			{"unknown health", edit(func(r *meshfedv1.RegisterEndpointRequest) { r.Health = 9 }), codes.InvalidArgument, []string{"invalid health:"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := web.Proxy.RegisterEndpoint(ctx, tc.req)
				wantError(t, err, tc.code, tc.words...)
				_, err = admin.Catalog.GetWorkload(ctx, &meshfedv1.GetRequest{Name: "web-9"})
				wantCode(t, err, codes.NotFound)
			})
		}
	})

	t.Run("credentials", func(t *testing.T) {
		// An operator's token is not an identity a proxy acts as.
		_, err := meshfedv1.NewProxyServiceClient(admin.Conn).RegisterEndpoint(ctx, webEndpoint("web-9", "10.0.0.9"))
		wantError(t, err, codes.PermissionDenied, "bearer token")
		_, err = meshfedv1.NewProxyServiceClient(admin.Conn).Heartbeat(ctx, &meshfedv1.HeartbeatRequest{Instance: "web-0"})
		wantError(t, err, codes.PermissionDenied, "bearer token")
		// Nor is a token beside the SVID.
		withToken := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
		_, err = web.Proxy.RegisterEndpoint(withToken, webEndpoint("web-9", "10.0.0.9"))
		wantError(t, err, codes.PermissionDenied, "bearer token")
		// No credentials at all.
		anon := meshfedv1.NewProxyServiceClient(workloadClient(t, c, s, "", nil).Conn)
		_, err = anon.RegisterEndpoint(ctx, webEndpoint("web-9", "10.0.0.9"))
		wantError(t, err, codes.Unauthenticated, "SVID")
		// A server's certificate is not a workload's.
		srv := meshfedv1.NewProxyServiceClient(workloadClient(t, c, s, string(tlsutil.EncodeCertificatesPEM(s.srv.tls.Certificate())), s.srv.id.key).Conn)
		_, err = srv.RegisterEndpoint(ctx, webEndpoint("web-9", "10.0.0.9"))
		wantCode(t, err, codes.PermissionDenied)
		// Metadata claiming a forwarded identity counts only from a server
		// of the cluster: here web stays web.
		spoof := metadata.AppendToOutgoingContext(ctx, forwardedKey, "1", forwardedWorkloadKey, dbID)
		db := webEndpoint("db-9", "10.0.0.9")
		db.Service = "db"
		_, err = web.Proxy.RegisterEndpoint(spoof, db)
		wantError(t, err, codes.PermissionDenied, webID)
	})

	t.Run("operators' and other identities' workloads", func(t *testing.T) {
		vm, err := admin.Catalog.CreateWorkload(ctx, &meshfedv1.CreateWorkloadRequest{Workload: &meshfedv1.Workload{
			Meta: &meshfedv1.Meta{Name: "vm-1"}, Service: "web", Address: "10.1.0.1", Port: 8080}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = web.Proxy.RegisterEndpoint(ctx, webEndpoint("vm-1", "10.0.0.7"))
		wantError(t, err, codes.FailedPrecondition, "default/vm-1", "operator")
		_, err = web.Proxy.DeregisterEndpoint(ctx, &meshfedv1.DeregisterEndpointRequest{Instance: "vm-1"})
		wantCode(t, err, codes.FailedPrecondition)
		hb, err := web.Proxy.Heartbeat(ctx, &meshfedv1.HeartbeatRequest{Instance: "vm-1", Health: meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY})
		if err != nil || hb.GetRegistered() {
			t.Fatalf("heartbeat for an operator's workload: %v, registered %v", err, hb.GetRegistered())
		}
		if got := getWorkload(t, admin, "vm-1"); got.GetMeta().GetVersion() != vm.GetMeta().GetVersion() || got.GetProxy() || got.GetAddress() != "10.1.0.1" {
			t.Fatalf("an operator's workload changed: %v", got)
		}

		// Operators cannot claim a workload is a proxy's.
		_, err = admin.Catalog.CreateWorkload(ctx, &meshfedv1.CreateWorkloadRequest{Workload: &meshfedv1.Workload{
			Meta: &meshfedv1.Meta{Name: "vm-2"}, Service: "web", Address: "10.1.0.2", Port: 8080, Proxy: true}})
		wantError(t, err, codes.InvalidArgument, "workload.proxy", "set only by meshfed-proxy")
		_, err = admin.Catalog.UpdateWorkload(ctx, &meshfedv1.UpdateWorkloadRequest{AllowMissing: true, Workload: &meshfedv1.Workload{
			Meta: &meshfedv1.Meta{Name: "vm-1"}, Service: "web", Address: "10.1.0.1", Port: 8080, Proxy: true}})
		wantError(t, err, codes.InvalidArgument, "workload.proxy")

		dbProxy := dialProxy(t, c, s, dbID)
		dbReq := &meshfedv1.RegisterEndpointRequest{Service: "db", Instance: "db-0", Address: "10.2.0.1", Port: 15443}
		dbReg, err := dbProxy.Proxy.RegisterEndpoint(ctx, dbReq)
		if err != nil {
			t.Fatal(err)
		}
		_, err = web.Proxy.RegisterEndpoint(ctx, webEndpoint("db-0", "10.0.0.8"))
		wantError(t, err, codes.PermissionDenied, dbID)
		_, err = web.Proxy.DeregisterEndpoint(ctx, &meshfedv1.DeregisterEndpointRequest{Instance: "db-0"})
		wantError(t, err, codes.PermissionDenied, dbID)
		hb, err = web.Proxy.Heartbeat(ctx, &meshfedv1.HeartbeatRequest{Instance: "db-0", Health: meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY})
		if err != nil || hb.GetRegistered() {
			t.Fatalf("heartbeat for another identity's workload: %v, registered %v", err, hb.GetRegistered())
		}
		if got := getWorkload(t, admin, "db-0"); got.GetMeta().GetVersion() != dbReg.GetWorkload().GetMeta().GetVersion() {
			t.Fatalf("another identity's workload changed: %v", got)
		}
	})

	t.Run("heartbeat and deregister", func(t *testing.T) {
		hb, err := web.Proxy.Heartbeat(ctx, &meshfedv1.HeartbeatRequest{Instance: "nope"})
		if err != nil || hb.GetRegistered() {
			t.Fatalf("heartbeat for an unknown instance: %v, registered %v", err, hb.GetRegistered())
		}
		hb, err = web.Proxy.Heartbeat(ctx, &meshfedv1.HeartbeatRequest{Instance: "web-0"})
		if err != nil || !hb.GetRegistered() || hb.GetHeartbeatInterval().AsDuration() != 2*time.Second {
			t.Fatalf("heartbeat: %v, %v", err, hb)
		}
		_, err = web.Proxy.Heartbeat(ctx, &meshfedv1.HeartbeatRequest{Instance: "Web-0"})
		wantError(t, err, codes.InvalidArgument, "invalid instance:")
		_, err = web.Proxy.Heartbeat(ctx, &meshfedv1.HeartbeatRequest{Instance: "web-0", Health: 7})
		wantError(t, err, codes.InvalidArgument, "invalid health:")

		for range 2 { // the second time it is gone already: still success
			if _, err := web.Proxy.DeregisterEndpoint(ctx, &meshfedv1.DeregisterEndpointRequest{Instance: "web-0"}); err != nil {
				t.Fatalf("deregister: %v", err)
			}
		}
		_, err = admin.Catalog.GetWorkload(ctx, &meshfedv1.GetRequest{Name: "web-0"})
		wantCode(t, err, codes.NotFound)
		hb, err = web.Proxy.Heartbeat(ctx, &meshfedv1.HeartbeatRequest{Instance: "web-0"})
		if err != nil || hb.GetRegistered() {
			t.Fatalf("heartbeat after deregistration: %v, registered %v", err, hb.GetRegistered())
		}
	})

	t.Run("what a workload SVID may read", func(t *testing.T) {
		if _, err := admin.Mesh.UpdateMeshSettings(ctx, &meshfedv1.UpdateMeshSettingsRequest{Settings: &meshfedv1.MeshSettings{
			MtlsMode: meshfedv1.MTLSMode_MTLS_MODE_PERMISSIVE}}); err != nil {
			t.Fatal(err)
		}
		_, err := admin.Mesh.UpdateMeshSettings(ctx, &meshfedv1.UpdateMeshSettingsRequest{Settings: &meshfedv1.MeshSettings{MtlsMode: 9}})
		wantError(t, err, codes.InvalidArgument, "settings.mtls_mode", "MTLS_MODE_PERMISSIVE")

		if _, err := web.Catalog.GetService(ctx, &meshfedv1.GetRequest{Name: "db"}); err != nil {
			t.Fatalf("GetService: %v", err)
		}
		if _, err := web.Catalog.GetService(ctx, &meshfedv1.GetRequest{Name: "db", Read: &meshfedv1.ReadOptions{Consistent: true}}); err != nil {
			t.Fatalf("consistent GetService: %v", err)
		}
		if r, err := web.Catalog.Resolve(ctx, &meshfedv1.ResolveRequest{Name: "api"}); err != nil || len(r.GetClusters()) != 1 || len(r.GetClusters()[0].GetEndpoints()) != 1 {
			t.Fatalf("Resolve: %v %v", r, err)
		}
		ms, err := web.Mesh.GetMeshSettings(ctx, &meshfedv1.GetMeshSettingsRequest{})
		if err != nil || ms.GetMtlsMode() != meshfedv1.MTLSMode_MTLS_MODE_PERMISSIVE {
			t.Fatalf("GetMeshSettings: %v %v", ms, err)
		}
		if _, err := web.Policy.ListTrafficPolicies(ctx, &meshfedv1.ListRequest{}); err != nil {
			t.Fatalf("ListTrafficPolicies: %v", err)
		}
		if _, err := web.Policy.ListAuthorizationPolicies(ctx, &meshfedv1.ListRequest{}); err != nil {
			t.Fatalf("ListAuthorizationPolicies: %v", err)
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		rs, err := web.Catalog.WatchResolve(sctx, &meshfedv1.ResolveRequest{Name: "db"})
		if err != nil {
			t.Fatal(err)
		}
		if r, err := rs.Recv(); err != nil || r.GetService().GetMeta().GetName() != "db" {
			t.Fatalf("WatchResolve: %v %v", r, err)
		}
		as, err := web.Policy.WatchAuthorizationPolicies(sctx, &meshfedv1.WatchRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if ev, err := as.Recv(); err != nil || ev.GetType() != meshfedv1.WatchEventType_WATCH_EVENT_TYPE_END_OF_SNAPSHOT {
			t.Fatalf("WatchAuthorizationPolicies: %v %v", ev, err)
		}
		ws, err := web.Mesh.WatchMeshSettings(sctx, &meshfedv1.WatchMeshSettingsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if ev, err := ws.Recv(); err != nil || ev.GetSettings().GetMtlsMode() != meshfedv1.MTLSMode_MTLS_MODE_PERMISSIVE {
			t.Fatalf("WatchMeshSettings: %v %v", ev, err)
		}

		// Everything else needs a token.
		_, err = web.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("evil", 80)})
		wantError(t, err, codes.PermissionDenied, webID)
		_, err = web.Tokens.ListTokens(ctx, &meshfedv1.ListRequest{})
		wantCode(t, err, codes.PermissionDenied)
		_, err = web.Catalog.ListWorkloads(ctx, &meshfedv1.ListRequest{})
		wantCode(t, err, codes.PermissionDenied)
		_, err = web.Catalog.DeleteWorkload(ctx, &meshfedv1.DeleteRequest{Name: "db-0"})
		wantCode(t, err, codes.PermissionDenied)
		_, err = web.Mesh.UpdateMeshSettings(ctx, &meshfedv1.UpdateMeshSettingsRequest{Settings: &meshfedv1.MeshSettings{}})
		wantCode(t, err, codes.PermissionDenied)
		tw, err := web.Tokens.WatchTokens(sctx, &meshfedv1.WatchRequest{})
		if err == nil {
			_, err = tw.Recv()
		}
		wantCode(t, err, codes.PermissionDenied)
		// And without any credentials, the reads are refused too.
		_, err = workloadClient(t, c, s, "", nil).Catalog.GetService(ctx, &meshfedv1.GetRequest{Name: "db"})
		wantCode(t, err, codes.Unauthenticated)
	})
}

// heartbeater sends heartbeats for one instance until stopped, as a proxy
// does: errors (an election) are retried at the next tick.
type heartbeater struct {
	health    atomic.Int32
	unknown   atomic.Int32 // answers with registered=false
	stop      context.CancelFunc
	done      chan struct{}
	mu        sync.Mutex
	lastErr   error
	sent, oks int
}

func startHeartbeats(p *proxyConn, instance string, every time.Duration) *heartbeater {
	ctx, cancel := context.WithCancel(context.Background())
	h := &heartbeater{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			resp, err := p.Proxy.Heartbeat(cctx, &meshfedv1.HeartbeatRequest{Instance: instance, Health: meshfedv1.HealthStatus(h.health.Load())})
			ccancel()
			h.mu.Lock()
			h.sent++
			if err == nil {
				h.oks++
				if !resp.GetRegistered() {
					h.unknown.Add(1)
				}
			} else if ctx.Err() == nil {
				h.lastErr = err
			}
			h.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return h
}

func (h *heartbeater) close() {
	h.stop()
	<-h.done
}

// resolveWatch follows WatchResolve of a service and waits for the
// healthy endpoints of this cluster to be a given set.
type resolveWatch struct {
	stream meshfedv1.CatalogService_WatchResolveClient
	last   []string
}

func (rw *resolveWatch) waitFor(t *testing.T, want ...string) {
	t.Helper()
	slices.Sort(want)
	for !slices.Equal(rw.last, want) {
		r, err := rw.stream.Recv()
		if err != nil {
			t.Fatalf("waiting for endpoints %v (last %v): %v", want, rw.last, err)
		}
		rw.last = nil
		for _, e := range r.GetClusters() {
			for _, ep := range e.GetEndpoints() {
				rw.last = append(rw.last, ep.GetAddress())
			}
		}
		slices.Sort(rw.last)
	}
}

// TestProxyHeartbeatsAndLiveness runs proxies against a cluster of three
// with short heartbeats, calling followers, whose calls are forwarded: the
// leader marks a silent proxy's endpoint unknown, a live one survives a
// leader change, and heartbeats write only changes of health.
func TestProxyHeartbeatsAndLiveness(t *testing.T) {
	const interval, ttl = 100 * time.Millisecond, 600 * time.Millisecond
	c := startTestClusterWith(t, 3, func(cfg *Config) {
		cfg.ProxyHeartbeatInterval, cfg.ProxyHeartbeatTTL = interval, ttl
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := c.client(t, c.leader(t))
	if _, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("web", 8080)}); err != nil {
		t.Fatal(err)
	}
	f := c.follower(t)
	web := dialProxy(t, c, f, webID)
	reg, err := web.Proxy.RegisterEndpoint(ctx, webEndpoint("web-0", "10.0.0.1"))
	if err != nil {
		t.Fatalf("register through a follower: %v", err)
	}
	if reg.GetHeartbeatTtl().AsDuration() != ttl || reg.GetHeartbeatInterval().AsDuration() != interval {
		t.Fatalf("heartbeat interval %v ttl %v", reg.GetHeartbeatInterval().AsDuration(), reg.GetHeartbeatTtl().AsDuration())
	}
	v0 := reg.GetWorkload().GetMeta().GetVersion()
	hb := startHeartbeats(web, "web-0", interval)
	defer hb.close()

	// A caller, here another proxy, watches web's endpoints on a follower.
	stream, err := dialProxy(t, c, f, dbID).Catalog.WatchResolve(ctx, &meshfedv1.ResolveRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	rw := &resolveWatch{stream: stream}
	rw.waitFor(t, "10.0.0.1")
	// A consistent read of a workload SVID is forwarded with its identity.
	if _, err := web.Catalog.GetService(ctx, &meshfedv1.GetRequest{Name: "web", Read: &meshfedv1.ReadOptions{Consistent: true}}); err != nil {
		t.Fatalf("consistent read through a follower: %v", err)
	}
	// A write is refused by the follower, naming the workload.
	_, err = web.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("evil", 80)})
	wantError(t, err, codes.PermissionDenied, webID)

	// A leader change while web-0 sends heartbeats. The new leader has not
	// seen them before, and must not take web-0 for dead.
	old := c.leader(t)
	if err := old.srv.raft.LeadershipTransfer().Error(); err != nil {
		t.Fatal(err)
	}
	if err := poll(10*time.Second, func() error {
		if c.leader(t) == old {
			return errors.New("leadership not transferred")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// A second proxy registers and falls silent at once: the new leader
	// marks it unknown after the TTL, and callers stop getting it.
	start := time.Now()
	if _, err := web.Proxy.RegisterEndpoint(ctx, webEndpoint("web-1", "10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	rw.waitFor(t, "10.0.0.1", "10.0.0.2")
	if err := poll(10*time.Second, func() error {
		if h := getWorkload(t, admin, "web-1").GetHealth(); h != meshfedv1.HealthStatus_HEALTH_STATUS_UNKNOWN {
			return fmt.Errorf("web-1 is %v", h)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("silent proxy marked unknown after %v (ttl %v)", took, ttl)
	if took < ttl {
		t.Fatalf("web-1 marked unknown after %v, before the TTL %v", took, ttl)
	}
	rw.waitFor(t, "10.0.0.1")
	res, err := web.Catalog.Resolve(ctx, &meshfedv1.ResolveRequest{Name: "web"})
	if err != nil || len(res.GetClusters()[0].GetEndpoints()) != 1 {
		t.Fatalf("Resolve returns an unknown endpoint: %v %v", res, err)
	}
	res, err = web.Catalog.Resolve(ctx, &meshfedv1.ResolveRequest{Name: "web", IncludeUnhealthy: true})
	if err != nil || len(res.GetClusters()[0].GetEndpoints()) != 2 {
		t.Fatalf("Resolve with include_unhealthy: %v %v", res, err)
	}

	// All this time web-0's heartbeats wrote nothing, and the new leader,
	// past its grace of one TTL, kept it healthy.
	if w := getWorkload(t, admin, "web-0"); w.GetMeta().GetVersion() != v0 || w.GetHealth() != meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY {
		t.Fatalf("web-0 after heartbeats and a leader change: version %d (registered at %d), %v", w.GetMeta().GetVersion(), v0, w.GetHealth())
	}
	hb.mu.Lock()
	t.Logf("heartbeats: %d sent, %d answered, last error %v", hb.sent, hb.oks, hb.lastErr)
	hb.mu.Unlock()
	if n := hb.unknown.Load(); n > 0 {
		t.Fatalf("%d heartbeats of a registered endpoint answered registered=false", n)
	}

	// A heartbeat brings web-1 back.
	resp, err := web.Proxy.Heartbeat(ctx, &meshfedv1.HeartbeatRequest{Instance: "web-1"})
	if err != nil || !resp.GetRegistered() {
		t.Fatalf("heartbeat of a proxy marked unknown: %v %v", resp, err)
	}
	if h := getWorkload(t, admin, "web-1").GetHealth(); h != meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY {
		t.Fatalf("web-1 is %v after a heartbeat", h)
	}
	rw.waitFor(t, "10.0.0.1", "10.0.0.2")
	if _, err := web.Proxy.DeregisterEndpoint(ctx, &meshfedv1.DeregisterEndpointRequest{Instance: "web-1"}); err != nil {
		t.Fatalf("deregister through a follower: %v", err)
	}
	rw.waitFor(t, "10.0.0.1")

	// The application of web-0 turns unhealthy, then healthy again: each
	// change is written once.
	hb.health.Store(int32(meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY))
	rw.waitFor(t)
	unhealthy := getWorkload(t, admin, "web-0")
	hb.health.Store(int32(meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY))
	rw.waitFor(t, "10.0.0.1")
	healthy := getWorkload(t, admin, "web-0")
	if unhealthy.GetHealth() != meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY || healthy.GetMeta().GetVersion() <= unhealthy.GetMeta().GetVersion() {
		t.Fatalf("health changes: %v at %d, then %v at %d", unhealthy.GetHealth(), unhealthy.GetMeta().GetVersion(), healthy.GetHealth(), healthy.GetMeta().GetVersion())
	}

	// The proxy is killed: its heartbeats stop, and so do its endpoints.
	hb.close()
	rw.waitFor(t)
	if h := getWorkload(t, admin, "web-0").GetHealth(); h != meshfedv1.HealthStatus_HEALTH_STATUS_UNKNOWN {
		t.Fatalf("web-0 is %v after its heartbeats stopped", h)
	}
}

// TestProxyRefusesPeerWorkloads checks that a workload of a federated
// trust domain, whose SVID this cluster trusts for mTLS between proxies,
// cannot register endpoints or read through the API here.
func TestProxyRefusesPeerWorkloads(t *testing.T) {
	east := startNamedCluster(t, "east", 1)
	west := startNamedCluster(t, "west", 1)
	peerClusters(t, east, west, "east", "west")
	ctx := context.Background()
	if _, err := east.client(t, east.servers[0]).Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("web", 8080)}); err != nil {
		t.Fatal(err)
	}
	chain, key := workloadSVID(t, west, "spiffe://west.mesh/ns/default/sa/web")
	p := connectProxy(t, east, east.servers[0], chain, key)
	// The handshake succeeds once east has west's bundle; then the call is
	// refused by who the caller is.
	var refused error
	if err := poll(10*time.Second, func() error {
		_, refused = p.Proxy.RegisterEndpoint(ctx, webEndpoint("web-0", "10.0.0.1"))
		if status.Code(refused) != codes.PermissionDenied {
			return fmt.Errorf("register with a peer's SVID: %v", refused)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantError(t, refused, codes.PermissionDenied, "east.mesh")
	_, err := p.Catalog.GetService(ctx, &meshfedv1.GetRequest{Name: "web"})
	wantCode(t, err, codes.PermissionDenied)
	rs, err := p.Catalog.WatchResolve(ctx, &meshfedv1.ResolveRequest{Name: "web"})
	if err == nil {
		_, err = rs.Recv()
	}
	wantCode(t, err, codes.PermissionDenied)
}
