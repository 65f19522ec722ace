package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/bench/internal/harness"
)

const namespace = "default"

// controlPlane is a `meshfed server --dev` and an admin connection to it.
type controlPlane struct {
	c        *harness.MeshfedCluster
	conn     *grpc.ClientConn
	td       string
	caFile   string
	proxyBin string
	dir      string
	// proxies started so far, to stop them before the server.
	proxies []*harness.Proc
}

func startControlPlane(ctx context.Context, ps *harness.Procs, meshfedBin, proxyBin, dir string) (*controlPlane, error) {
	c, err := harness.StartMeshfedDev(ctx, ps, meshfedBin, dir)
	if err != nil {
		return nil, fmt.Errorf("meshfed server --dev: %w", err)
	}
	s := c.Servers[0]
	if c.TrustDomain == "" {
		ps.Stop(s.P)
		return nil, errors.New("GetClusterStatus reports no trust domain")
	}
	harness.Logf("meshfed %s dev server: API %s, Raft %s, HTTP %s, trust domain %s", c.Version, s.API, s.Raft, s.HTTP, c.TrustDomain)
	conn, err := harness.DialMeshfed(s.API, c.CAPEM, c.Token)
	if err != nil {
		ps.Stop(s.P)
		return nil, err
	}
	return &controlPlane{c: c, conn: conn, td: c.TrustDomain, caFile: filepath.Join(s.Dir, "ca.pem"), proxyBin: proxyBin, dir: dir}, nil
}

func (cp *controlPlane) close() {
	if cp.conn != nil {
		cp.conn.Close()
	}
}

// stop stops the proxies, then the server they deregister from.
func (cp *controlPlane) stop(ps *harness.Procs) {
	ps.Stop(cp.proxies...)
	ps.Stop(cp.c.Procs()...)
}

// id is the SPIFFE ID of a service's workloads in namespace default (each
// service runs as the service account named like it).
func (cp *controlPlane) id(service string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", cp.td, namespace, service)
}

func (cp *controlPlane) createService(ctx context.Context, name string, port int) error {
	_, err := meshfedv1.NewCatalogServiceClient(cp.conn).CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: &meshfedv1.Service{
		Meta: &meshfedv1.Meta{Namespace: namespace, Name: name}, Port: uint32(port), Protocol: meshfedv1.Protocol_PROTOCOL_HTTP}})
	if err != nil {
		return fmt.Errorf("creating service %s: %w", name, err)
	}
	return nil
}

// allow lets caller (a service's identity) call destination: the mesh's
// default action is DENY.
func (cp *controlPlane) allow(ctx context.Context, destination, caller string) error {
	_, err := meshfedv1.NewPolicyServiceClient(cp.conn).CreateAuthorizationPolicy(ctx, &meshfedv1.CreateAuthorizationPolicyRequest{
		Policy: &meshfedv1.AuthorizationPolicy{
			Meta:        &meshfedv1.Meta{Namespace: namespace, Name: destination + "-from-" + caller},
			Destination: destination,
			Action:      meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_ALLOW,
			Rules:       []*meshfedv1.AuthorizationRule{{Principals: []string{cp.id(caller)}}},
		}})
	if err != nil {
		return fmt.Errorf("allowing %s to call %s: %w", caller, destination, err)
	}
	return nil
}

// joinToken is a workload-join token for a service's identity, usable as
// often as the proxy needs within the run.
func (cp *controlPlane) joinToken(ctx context.Context, service string) (string, error) {
	t, err := meshfedv1.NewTokenServiceClient(cp.conn).CreateToken(ctx, &meshfedv1.CreateTokenRequest{
		Kind:        meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN,
		Description: "proxybench " + service,
		SpiffeId:    cp.id(service),
		Ttl:         durationpb.New(12 * time.Hour),
	})
	if err != nil {
		return "", fmt.Errorf("workload-join token for %s: %w", cp.id(service), err)
	}
	return t.GetSecret(), nil
}

// meshProxy is one meshfed-proxy process.
type meshProxy struct {
	p      *harness.Proc
	listen string // inbound mTLS listener
	admin  string
}

// proxyOptions are the flags of one meshfed-proxy beyond the control
// plane's address and CA.
type proxyOptions struct {
	service  string
	appPort  int
	instance string
	// upstreams are name=127.0.0.1:port, one --upstream flag each.
	upstreams []string
	// ports, when set, are the --listen and --admin ports.
	ports []int
}

// startProxy runs meshfed-proxy with a new workload-join token for the
// service's identity and waits until its admin address answers GET /ready
// with 200.
func (cp *controlPlane) startProxy(ctx context.Context, ps *harness.Procs, o proxyOptions) (*meshProxy, error) {
	tok, err := cp.joinToken(ctx, o.service)
	if err != nil {
		return nil, err
	}
	ports := o.ports
	if ports == nil {
		if ports, err = harness.FreePorts(2); err != nil {
			return nil, err
		}
	}
	m := &meshProxy{listen: fmt.Sprintf("127.0.0.1:%d", ports[0]), admin: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	args := []string{
		"--server", cp.c.Servers[0].API, "--ca-file", cp.caFile, "--token", tok,
		"--service", o.service, "--namespace", namespace, "--port", strconv.Itoa(o.appPort),
		"--listen", m.listen, "--admin", m.admin, "--instance", o.instance,
	}
	for _, u := range o.upstreams {
		args = append(args, "--upstream", u)
	}
	name := "meshfed-proxy " + o.instance
	if m.p, err = ps.Start(name, filepath.Join(cp.dir, o.instance+".log"), nil, cp.proxyBin, args...); err != nil {
		return nil, err
	}
	cp.proxies = append(cp.proxies, m.p)
	hc := &http.Client{Timeout: 2 * time.Second}
	err = harness.WaitFor(ctx, name+" GET /ready", 60*time.Second, []*harness.Proc{m.p}, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.admin+"/ready", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /ready: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// meshfedPair is the client and server proxies in front of the app.
type meshfedPair struct {
	cp             *controlPlane
	client, server *meshProxy
	upstream       string // the client proxy's local listener for "server"
}

func (m *meshfedPair) procs() []*harness.Proc { return []*harness.Proc{m.client.p, m.server.p} }

// startMeshfedPair declares services "server" (the app) and "client", lets
// client call server, and starts a proxy for each: the server proxy in
// front of the app, the client proxy with an upstream listener for
// "server". The client proxy's own app is idleApp, which only answers its
// health checks. It is ready once a request through the upstream listener
// comes back 200, which needs the server's endpoint, both SVIDs and the
// policy to have reached the proxies.
func startMeshfedPair(ctx context.Context, ps *harness.Procs, cp *controlPlane, appPort, idlePort int) (*meshfedPair, error) {
	for _, s := range []struct {
		name string
		port int
	}{{"server", appPort}, {"client", idlePort}} {
		if err := cp.createService(ctx, s.name, s.port); err != nil {
			return nil, err
		}
	}
	if err := cp.allow(ctx, "server", "client"); err != nil {
		return nil, err
	}
	m := &meshfedPair{cp: cp}
	var err error
	harness.Logf("meshfed: starting the server proxy (service server, app on port %d)", appPort)
	if m.server, err = cp.startProxy(ctx, ps, proxyOptions{service: "server", appPort: appPort, instance: "server-0"}); err != nil {
		return nil, err
	}
	ports, err := harness.FreePorts(1)
	if err != nil {
		return nil, err
	}
	m.upstream = fmt.Sprintf("127.0.0.1:%d", ports[0])
	harness.Logf("meshfed: starting the client proxy (upstream server=%s)", m.upstream)
	if m.client, err = cp.startProxy(ctx, ps, proxyOptions{service: "client", appPort: idlePort, instance: "client-0",
		upstreams: []string{"server=" + m.upstream}}); err != nil {
		return nil, err
	}
	cl := newClient(m.upstream, 1)
	defer cl.reset()
	err = harness.WaitFor(ctx, "a request through the meshfed-proxy pair", 60*time.Second, m.procs(), cl.do)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// manyResult is the idle proxy that knows many services.
type manyResult struct {
	services  int
	workloads int
	policies  int
	populate  time.Duration // creating the services, workloads and policies
	ready     time.Duration // proxy start until GET /ready answered 200
	settled   bool          // RSS stopped moving before the bound
	rss       int64         // resident memory once settled
	rssPeak   int64         // highest sample while settling
	// RSS of the pair's proxies with the services in the catalog (which
	// are not their upstreams).
	pairRSS []int64
	// resolved is how many upstreams the proxy's /status listed with at
	// least one endpoint; -1 when it serves no usable /status.
	resolved int
}

// runManyServices declares n more services (svc-0000...), each with one or
// two static workloads on 127.0.0.x and a policy letting "edge" call it,
// then starts a third proxy, for service "edge", with an upstream listener
// for every one of them, waits until it is ready and its resident memory
// has settled, and reports it.
func runManyServices(ctx context.Context, ps *harness.Procs, cp *controlPlane, pair *meshfedPair, n, idlePort int) (*manyResult, error) {
	r := &manyResult{services: n}
	start := time.Now()
	if err := cp.createService(ctx, "edge", idlePort); err != nil {
		return nil, err
	}
	cc := meshfedv1.NewCatalogServiceClient(cp.conn)
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("svc-%04d", i)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i, name := range names {
		r.workloads += 1 + i%2
		r.policies++
		g.Go(func() error {
			if err := cp.createService(gctx, name, 8080); err != nil {
				return err
			}
			for j := range 1 + i%2 {
				_, err := cc.CreateWorkload(gctx, &meshfedv1.CreateWorkloadRequest{Workload: &meshfedv1.Workload{
					Meta:    &meshfedv1.Meta{Namespace: namespace, Name: fmt.Sprintf("%s-%d", name, j)},
					Service: name,
					Address: fmt.Sprintf("127.0.0.%d", 2+(2*i+j)%250),
					Port:    uint32(20000 + i),
					Health:  meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY,
				}})
				if err != nil {
					return fmt.Errorf("creating workload %d of %s: %w", j, name, err)
				}
			}
			return cp.allow(gctx, name, "edge")
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	r.populate = time.Since(start)
	harness.Logf("meshfed: %d services, %d workloads and %d policies created in %v", n, r.workloads, r.policies, r.populate.Round(time.Millisecond))

	// All at once, with the proxy's own two: ports chosen apart can repeat.
	ports, err := harness.FreePorts(n + 2)
	if err != nil {
		return nil, fmt.Errorf("%d free ports for the upstream listeners: %w", n, err)
	}
	ups := make([]string, n)
	for i, name := range names {
		ups[i] = fmt.Sprintf("%s=127.0.0.1:%d", name, ports[i])
	}
	harness.Logf("meshfed: starting a third proxy (service edge) with %d --upstream flags", n)
	start = time.Now()
	edge, err := cp.startProxy(ctx, ps, proxyOptions{service: "edge", appPort: idlePort, instance: "edge-0", upstreams: ups, ports: ports[n:]})
	if err != nil {
		return nil, err
	}
	r.ready = time.Since(start)
	// Its first and last upstream listeners accept connections.
	for _, i := range []int{0, n - 1} {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", ports[i]), 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("upstream listener of %s: %w%s", names[i], err, exitedOf(edge.p))
		}
		c.Close()
	}
	harness.Logf("meshfed: edge proxy ready in %v", r.ready.Round(time.Millisecond))
	// /status is not part of the proxy's contract: where it is served, wait
	// until every upstream has its endpoints.
	if _, _, err := upstreamsResolved(ctx, edge.admin); err == nil {
		err = harness.WaitFor(ctx, "endpoints for every upstream in the edge proxy's /status", 60*time.Second, []*harness.Proc{edge.p}, func(ctx context.Context) error {
			resolved, total, err := upstreamsResolved(ctx, edge.admin)
			if err != nil {
				return err
			}
			r.resolved = resolved
			if total != n || resolved != n {
				return fmt.Errorf("%d of %d upstreams listed, %d with endpoints", total, n, resolved)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		harness.Logf("meshfed: edge proxy's /status lists endpoints for all %d upstreams", n)
	} else {
		r.resolved = -1
		harness.Logf("meshfed: edge proxy's /status not usable (%v); upstream endpoints not checked", err)
	}
	harness.Logf("meshfed: waiting for the edge proxy's resident memory to settle")
	r.rss, r.rssPeak, r.settled, err = settleRSS(ctx, edge.p, 60*time.Second)
	if err != nil {
		return nil, err
	}
	for _, p := range pair.procs() {
		v, err := harness.VMRSS(p.PID())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.Name, err)
		}
		r.pairRSS = append(r.pairRSS, v)
	}
	return r, nil
}

// settleRSS samples p's resident memory every 500 ms until the last six
// samples (3 s) are within 1% (or 256 KiB) of each other, or limit passes,
// and returns the last sample and the peak.
func settleRSS(ctx context.Context, p *harness.Proc, limit time.Duration) (last, peak int64, settled bool, err error) {
	deadline := time.Now().Add(limit)
	var window []int64
	for {
		if err := p.ExitErr(); err != nil {
			return 0, 0, false, err
		}
		v, err := harness.VMRSS(p.PID())
		if err != nil {
			return 0, 0, false, err
		}
		last, peak = v, max(peak, v)
		window = append(window, v)
		if len(window) > 6 {
			window = window[1:]
		}
		if len(window) == 6 {
			lo, hi := window[0], window[0]
			for _, x := range window {
				lo, hi = min(lo, x), max(hi, x)
			}
			if hi-lo <= max(hi/100, 256<<10) {
				return last, peak, true, nil
			}
		}
		if time.Now().After(deadline) {
			return last, peak, false, nil
		}
		select {
		case <-ctx.Done():
			return 0, 0, false, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// upstreamsResolved reads the proxy's GET /status (a JSON document with an
// "upstreams" list, each with its "endpoints") and counts the upstreams and
// those with at least one endpoint.
func upstreamsResolved(ctx context.Context, admin string) (resolved, total int, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/status", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("GET /status: %s", resp.Status)
	}
	var doc struct {
		Upstreams *[]struct {
			Endpoints []string `json:"endpoints"`
		} `json:"upstreams"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return 0, 0, fmt.Errorf("GET /status: %w", err)
	}
	if doc.Upstreams == nil {
		return 0, 0, errors.New("GET /status lists no upstreams")
	}
	for _, u := range *doc.Upstreams {
		if len(u.Endpoints) > 0 {
			resolved++
		}
	}
	return resolved, len(*doc.Upstreams), nil
}
