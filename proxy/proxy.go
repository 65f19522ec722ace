package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/svidclient"
	"github.com/meshfed/meshfed/proxy/authz"
	"github.com/meshfed/meshfed/proxy/workloadapi"
)

const tlsTLS13 = tls.VersionTLS13

// Proxy is one meshfed-proxy: the identity, the control plane connection,
// the inbound listener, the upstream listeners and the admin endpoint of a
// workload.
type Proxy struct {
	cfg Config
	log *slog.Logger

	id   *svidclient.Client
	td   spiffeid.TrustDomain
	self spiffeid.ID
	ctl  atomic.Pointer[control]
	m    *metrics
	acc  *accessLog

	// service is the proxy's own service as read at start.
	service *meshfedv1.Service

	settings atomic.Pointer[meshfedv1.MeshSettings]
	// tracer exports the spans of sampled requests; runCtx is Run's.
	tracer tracer
	runCtx context.Context
	// rateLimit is the service's inbound rate limit; nil: none.
	rateLimit atomic.Pointer[rateLimit]
	engine    atomic.Pointer[authz.Engine]
	engineMu  sync.Mutex
	policies  []*meshfedv1.AuthorizationPolicy
	// policyChanged wakes the check of established inbound TCP
	// connections against a new engine.
	policyChanged chan struct{}

	upstreams []*upstream
	// listeners accepts on the upstreams' listeners.
	listeners *listenerGroup
	// traffic holds the traffic policies of the upstreams' namespaces, by
	// namespace and destination.
	trafficMu sync.Mutex
	traffic   map[string]map[string]*meshfedv1.TrafficPolicy
	in        *inbound

	// Readiness: identity (implied by having started), configuration
	// received, endpoint registered, every upstream resolved once.
	settingsSynced atomic.Bool
	policiesSynced atomic.Bool
	registered     atomic.Bool
	draining       atomic.Bool
	appHealth      atomic.Int32 // meshfedv1.HealthStatus
	healthKnown    atomic.Bool
	healthChanged  chan struct{}

	instance string
	address  string

	wg sync.WaitGroup
}

// New checks cfg and returns a Proxy; Run starts it.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	p := &Proxy{
		cfg:           cfg,
		log:           cfg.Logger,
		m:             newMetrics(),
		acc:           newAccessLog(os.Stdout),
		policyChanged: make(chan struct{}, 1),
		healthChanged: make(chan struct{}, 1),
		traffic:       map[string]map[string]*meshfedv1.TrafficPolicy{},
	}
	p.instance = cfg.Instance
	if p.instance == "" {
		p.instance = os.Getenv("POD_NAME")
	}
	if p.instance == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("--instance: not given and the host name is unknown: %w", err)
		}
		ap, _ := parseHostPort(cfg.Listen)
		p.instance = defaultInstance(cfg.Service, h, int(ap.Port()))
	}
	if err := dnsLabel("--instance", p.instance); err != nil {
		return nil, fmt.Errorf("%v (set --instance or POD_NAME)", err)
	}
	addr, err := registeredAddress(cfg)
	if err != nil {
		return nil, err
	}
	p.address = addr
	p.appHealth.Store(int32(meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY))
	for _, u := range cfg.Upstreams {
		p.upstreams = append(p.upstreams, newUpstream(p, u))
	}
	return p, nil
}

// registeredAddress is the IP callers reach the inbound listener on.
func registeredAddress(cfg Config) (string, error) {
	if cfg.Address != "" {
		return cfg.Address, nil
	}
	ap, _ := parseHostPort(cfg.Listen)
	if ip := ap.Addr(); ip.IsValid() && !ip.IsUnspecified() {
		return ip.String(), nil
	}
	ifaces, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range ifaces {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
				return n.IP.String(), nil
			}
		}
	}
	return "", errors.New("--address: not given, the listener has no specific IP and the host has no non-loopback IPv4 address")
}

// Run starts the proxy and serves until ctx ends (SIGTERM), then drains:
// it deregisters the endpoint, keeps serving for DrainDelay so that callers
// learn it is gone, waits for in-flight requests (at most DrainTimeout) and
// stops. It returns an error if the proxy could not start.
func (p *Proxy) Run(ctx context.Context) error {
	runCtx, cancel := context.WithCancel(context.Background())
	p.runCtx = runCtx
	p.tracer.p = p
	defer cancel()
	defer p.wg.Wait()

	id, err := svidclient.New(svidclient.Config{
		Addrs:  p.cfg.Servers,
		CAFile: p.cfg.CAFile,
		Token:  p.cfg.Token,
		Logger: p.log.With("component", "identity"),
	})
	if err != nil {
		return err
	}
	p.id = id
	p.log.Info("attesting", "servers", p.cfg.Servers, "service", p.cfg.Service, "namespace", p.cfg.Namespace)
	if err := id.Start(ctx); err != nil {
		return fmt.Errorf("obtaining an SVID: %w", err)
	}
	defer id.Close()
	svid, err := id.GetX509SVID()
	if err != nil {
		return err
	}
	p.self, p.td = svid.ID, svid.ID.TrustDomain()
	if ns, ok := namespaceOf(p.self); !ok || ns != p.cfg.Namespace {
		return fmt.Errorf("--token: bound to %s, which is not a workload identity of namespace %q", p.self, p.cfg.Namespace)
	}
	p.log.Info("obtained SVID", "spiffe_id", p.self.String(), "expires", svid.Certificates[0].NotAfter)

	ctl, err := dialControl(p.cfg.Servers, id, p.td)
	if err != nil {
		return err
	}
	p.ctl.Store(ctl)
	defer func() { p.control().conn.Close() }()

	svc, err := p.awaitService(ctx)
	if err != nil {
		return err
	}
	p.service = svc
	// The service's identity must be this proxy's: otherwise callers would
	// refuse it, and the control plane refuses its registration.
	if want := serviceIdentity(p.td, svc); want != p.self {
		return fmt.Errorf("--token: bound to %s, but workloads of service %s/%s run as %s", p.self, p.cfg.Namespace, p.cfg.Service, want)
	}
	p.engine.Store(authz.Compile(authz.Destination{Namespace: p.cfg.Namespace, Service: p.cfg.Service}, meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_DENY, nil))

	// Listeners first, so that a port in use fails the start.
	in, err := newInbound(p)
	if err != nil {
		return err
	}
	p.in = in
	p.listeners = newListenerGroup(p.log)
	for _, u := range p.upstreams {
		if err := u.listen(); err != nil {
			in.close()
			p.listeners.close()
			return err
		}
	}
	var admin *http.Server
	if p.cfg.Admin != "off" {
		ln, err := net.Listen("tcp", p.cfg.Admin)
		if err != nil {
			return fmt.Errorf("--admin: %w", err)
		}
		admin = &http.Server{Handler: p.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
		p.goFn(func() { _ = admin.Serve(ln) })
	}
	var wapi *workloadapi.Server
	if p.cfg.WorkloadAPISocket != "" {
		wapi, err = workloadapi.New(id, workloadapi.Config{Path: p.cfg.WorkloadAPISocket, Logger: p.log.With("component", "workload-api")})
		if err == nil {
			err = wapi.Start()
		}
		if err != nil {
			return fmt.Errorf("--workload-api-socket: %w", err)
		}
	}

	p.goFn(func() { p.retryLoop(runCtx, "mesh settings", p.watchSettings) })
	p.goFn(func() { p.retryLoop(runCtx, "authorization policies", p.watchPolicies) })
	p.goFn(func() { p.followSVID(runCtx) })
	// Traffic policies: the upstreams' namespaces, and the proxy's own for
	// its service's rate limit.
	namespaces := map[string]bool{}
	watchTraffic := func(ns string) {
		if namespaces[ns] {
			return
		}
		namespaces[ns] = true
		p.goFn(func() {
			p.retryLoop(runCtx, "traffic policies "+ns, func(ctx context.Context) error { return p.watchTraffic(ctx, ns) })
		})
	}
	watchTraffic(p.cfg.Namespace)
	for _, u := range p.upstreams {
		watchTraffic(u.cfg.Namespace)
	}
	if len(p.upstreams) > 0 {
		p.goFn(func() { p.retryLoop(runCtx, "resolve upstreams", p.watchUpstreams) })
	}
	p.goFn(func() { in.serve() })
	p.goFn(func() { p.checkHealth(runCtx) })
	p.goFn(func() { p.register(runCtx) })
	p.goFn(func() { p.recheckConnections(runCtx) })

	p.goFn(func() { p.settle(runCtx) })
	p.log.Info("proxy started", "listen", in.ln.Addr().String(), "admin", p.cfg.Admin, "upstreams", len(p.upstreams),
		"service", p.cfg.Service, "protocol", svc.GetProtocol().String())
	<-ctx.Done()

	// Drain.
	p.draining.Store(true)
	p.log.Info("draining: deregistering the endpoint")
	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	if _, err := p.control().proxy.DeregisterEndpoint(dctx, &meshfedv1.DeregisterEndpointRequest{Instance: p.instance}); err != nil {
		p.log.Warn("deregistering the endpoint failed; the control plane will mark it unknown", "err", err)
	}
	dcancel()
	if p.cfg.DrainDelay > 0 {
		t := time.NewTimer(p.cfg.DrainDelay)
		<-t.C
	}
	sctx, scancel := context.WithTimeout(context.Background(), p.cfg.DrainTimeout)
	in.shutdown(sctx)
	for _, u := range p.upstreams {
		u.shutdown(sctx)
	}
	p.listeners.close()
	scancel()
	if admin != nil {
		_ = admin.Close()
	}
	if wapi != nil {
		_ = wapi.Close()
	}
	cancel()
	p.log.Info("stopped")
	return nil
}

func (p *Proxy) goFn(fn func()) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		fn()
	}()
}

// awaitService reads the proxy's own service, waiting for an operator to
// register it.
func (p *Proxy) awaitService(ctx context.Context) (*meshfedv1.Service, error) {
	logged := false
	wait := 200 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		svc, err := p.control().catalog.GetService(cctx, &meshfedv1.GetRequest{Namespace: p.cfg.Namespace, Name: p.cfg.Service})
		cancel()
		if err == nil {
			return svc, nil
		}
		switch status.Code(err) {
		case codes.NotFound:
			if !logged {
				p.log.Warn("waiting for the service to be registered", "service", p.cfg.Service, "namespace", p.cfg.Namespace)
				logged = true
			}
		case codes.PermissionDenied, codes.Unauthenticated:
			return nil, fmt.Errorf("reading service %s/%s: %w", p.cfg.Namespace, p.cfg.Service, err)
		default:
			p.log.Info("reading the service", "err", err)
		}
		if !sleepCtx(ctx, wait) {
			return nil, ctx.Err()
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// Ready reports whether the proxy serves traffic as configured.
func (p *Proxy) Ready() (bool, string) {
	switch {
	case p.draining.Load():
		return false, "draining"
	case !p.settingsSynced.Load():
		return false, "waiting for mesh settings"
	case !p.policiesSynced.Load():
		return false, "waiting for authorization policies"
	case !p.registered.Load():
		return false, "waiting for the endpoint registration"
	}
	for _, u := range p.upstreams {
		if !u.resolved.Load() {
			return false, "waiting for endpoints of " + u.cfg.key()
		}
	}
	return true, "ready"
}

// control returns the current control plane connection.
func (p *Proxy) control() *control { return p.ctl.Load() }

// followSVID keeps the certificate expiry metric current and, after every
// renewal, moves the control plane connection to one that presents the new
// SVID: servers check the caller's certificate against the current bundle
// on every call, and an SVID of a retired authority no longer passes. The
// streams on the old connection end and their loops reopen them on the
// new one.
func (p *Proxy) followSVID(ctx context.Context) {
	events, stop := p.id.Subscribe()
	defer stop()
	last, _ := p.id.GetX509SVID()
	for {
		s, err := p.id.GetX509SVID()
		if err == nil {
			p.m.certExpiry.Set(float64(s.Certificates[0].NotAfter.Unix()))
			if last != nil && s != last {
				if ctl, err := dialControl(p.cfg.Servers, p.id, p.td); err == nil {
					old := p.ctl.Swap(ctl)
					old.conn.Close()
					p.log.Debug("reconnected to the control plane with the renewed SVID")
				} else {
					p.log.Warn("reconnecting to the control plane", "err", err)
				}
			}
			last = s
		}
		select {
		case <-ctx.Done():
			return
		case <-events:
		}
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// defaultInstance names a workload outside Kubernetes: service, host and
// inbound port, so that several proxies on one host never collide. The
// result is a DNS label (at most 63 characters).
func defaultInstance(service, host string, port int) string {
	host = strings.ToLower(host)
	if i := strings.IndexByte(host, '.'); i > 0 {
		host = host[:i]
	}
	var b strings.Builder
	for _, r := range host {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	suffix := "-" + strconv.Itoa(port)
	h := strings.Trim(b.String(), "-")
	if room := max(0, 63-len(service)-len(suffix)-1); len(h) > room {
		h = strings.Trim(h[:room], "-")
	}
	if h == "" {
		return service + suffix
	}
	return service + "-" + h + suffix
}

// settle returns the memory used while loading the initial configuration
// (thousands of decoded resolutions and policies for a proxy with many
// upstreams) to the operating system once the proxy is ready: an idle
// sidecar should cost what it holds, not what it once decoded.
func (p *Proxy) settle(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if ok, _ := p.Ready(); ok {
			// Two collections: the first moves what sync.Pools hold
			// to their victim caches, the second frees those. The
			// largest is gRPC's buffer of the first control-plane
			// message (every upstream's endpoints), about 1 MB with
			// 1,000 upstreams.
			runtime.GC()
			debug.FreeOSMemory()
			return
		}
	}
}
