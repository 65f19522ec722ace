package proxy

import (
	"context"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/proxy/authz"
)

// namespaceOf returns the namespace of a workload identity
// (spiffe://td/ns/NS/sa/SA).
func namespaceOf(id spiffeid.ID) (string, bool) {
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" {
		return "", false
	}
	return seg[1], true
}

// serviceIdentity is the SPIFFE ID workloads of svc run as.
func serviceIdentity(td spiffeid.TrustDomain, svc *meshfedv1.Service) spiffeid.ID {
	sa := svc.GetServiceAccount()
	if sa == "" {
		sa = svc.GetMeta().GetName()
	}
	id, _ := spiffeid.FromSegments(td, "ns", svc.GetMeta().GetNamespace(), "sa", sa)
	return id
}

// watchSettings follows the mesh settings.
func (p *Proxy) watchSettings(ctx context.Context) error {
	st, err := p.control().mesh.WatchMeshSettings(ctx, &meshfedv1.WatchMeshSettingsRequest{})
	if err != nil {
		return err
	}
	for {
		ev, err := st.Recv()
		if err != nil {
			return err
		}
		switch ev.GetType() {
		case meshfedv1.WatchEventType_WATCH_EVENT_TYPE_UPSERT:
			p.settings.Store(ev.GetSettings())
		case meshfedv1.WatchEventType_WATCH_EVENT_TYPE_DELETE:
			p.settings.Store(&meshfedv1.MeshSettings{})
		case meshfedv1.WatchEventType_WATCH_EVENT_TYPE_END_OF_SNAPSHOT:
		default:
			continue
		}
		if p.settings.Load() == nil {
			p.settings.Store(&meshfedv1.MeshSettings{})
		}
		p.settingsSynced.Store(true)
		p.rebuildEngine(nil)
		p.applyTraffic()
	}
}

// followNamed reads a watch stream of named resources and keeps the
// current set of those keep accepts (nil keeps all); after the initial
// snapshot, and after every change from then on, it hands apply the whole
// set. A resource that keep turns down is not held: a proxy in a
// namespace of a thousand policies keeps only its own.
func followNamed[R interface{ GetMeta() *meshfedv1.Meta }](recv func() (meshfedv1.WatchEventType, R, error), keep func(R) bool, apply func(map[string]R)) error {
	items := map[string]R{}
	synced := false
	for {
		typ, item, err := recv()
		if err != nil {
			return err
		}
		switch typ {
		case meshfedv1.WatchEventType_WATCH_EVENT_TYPE_UPSERT:
			if keep == nil || keep(item) {
				items[item.GetMeta().GetName()] = item
			} else {
				// It may have been kept before this change.
				delete(items, item.GetMeta().GetName())
			}
		case meshfedv1.WatchEventType_WATCH_EVENT_TYPE_DELETE:
			delete(items, item.GetMeta().GetName())
		case meshfedv1.WatchEventType_WATCH_EVENT_TYPE_END_OF_SNAPSHOT:
			synced = true
		}
		if synced {
			apply(items)
		}
	}
}

// watchPolicies follows the authorization policies of the proxy's
// namespace and recompiles the engine after every change (after the whole
// initial snapshot at once).
func (p *Proxy) watchPolicies(ctx context.Context) error {
	st, err := p.control().policy.WatchAuthorizationPolicies(ctx, &meshfedv1.WatchRequest{Namespace: p.cfg.Namespace})
	if err != nil {
		return err
	}
	recv := func() (meshfedv1.WatchEventType, *meshfedv1.AuthorizationPolicy, error) {
		ev, err := st.Recv()
		return ev.GetType(), ev.GetPolicy(), err
	}
	// Only policies for this service (or every service) decide anything
	// here; authz.Compile would skip the others.
	mine := func(pol *meshfedv1.AuthorizationPolicy) bool {
		d := pol.GetDestination()
		return d == "*" || d == p.cfg.Service
	}
	return followNamed(recv, mine, func(policies map[string]*meshfedv1.AuthorizationPolicy) {
		list := make([]*meshfedv1.AuthorizationPolicy, 0, len(policies))
		for _, pol := range policies {
			list = append(list, pol)
		}
		p.rebuildEngine(list)
		p.policiesSynced.Store(true)
	})
}

// rebuildEngine compiles a new authorization engine from the current
// settings and, when list is not nil, a new policy list.
func (p *Proxy) rebuildEngine(list []*meshfedv1.AuthorizationPolicy) {
	p.engineMu.Lock()
	defer p.engineMu.Unlock()
	if list != nil {
		p.policies = list
	}
	def := p.settings.Load().GetDefaultAuthorizationAction()
	p.engine.Store(authz.Compile(authz.Destination{Namespace: p.cfg.Namespace, Service: p.cfg.Service}, def, p.policies))
	signal(p.policyChanged)
}

// permissive reports whether the inbound listener also accepts plain text.
func (p *Proxy) permissive() bool {
	return p.settings.Load().GetMtlsMode() == meshfedv1.MTLSMode_MTLS_MODE_PERMISSIVE
}

// accessLogs reports whether every request is logged.
func (p *Proxy) accessLogs() bool {
	return p.cfg.AccessLogs || p.settings.Load().GetAccessLogs()
}

// watchTraffic follows the traffic policies of the upstreams' namespaces
// and applies each upstream's load balancer and request timeout (the
// destination's policy, else the mesh settings' default policy).
func (p *Proxy) watchTraffic(ctx context.Context, namespace string) error {
	st, err := p.control().policy.WatchTrafficPolicies(ctx, &meshfedv1.WatchRequest{Namespace: namespace})
	if err != nil {
		return err
	}
	recv := func() (meshfedv1.WatchEventType, *meshfedv1.TrafficPolicy, error) {
		ev, err := st.Recv()
		return ev.GetType(), ev.GetPolicy(), err
	}
	return followNamed(recv, nil, func(policies map[string]*meshfedv1.TrafficPolicy) {
		byDest := map[string]*meshfedv1.TrafficPolicy{}
		for _, tp := range policies {
			byDest[tp.GetDestination()] = tp
		}
		p.trafficMu.Lock()
		p.traffic[namespace] = byDest
		p.trafficMu.Unlock()
		p.applyTraffic()
	})
}

// applyTraffic gives every upstream its current traffic policy, and the
// inbound side its own service's rate limit.
func (p *Proxy) applyTraffic() {
	def := p.settings.Load().GetDefaultTrafficPolicy()
	p.trafficMu.Lock()
	defer p.trafficMu.Unlock()
	// Upstreams without a policy of their own share one route.
	base := compileRoute(nil, def)
	for _, u := range p.upstreams {
		rt := base
		if tp := p.traffic[u.cfg.Namespace][u.cfg.Service]; tp != nil {
			rt = compileRoute(tp, def)
		}
		u.route.Store(rt)
	}
	rl := p.traffic[p.cfg.Namespace][p.cfg.Service].GetRateLimit()
	if rl == nil {
		rl = def.GetRateLimit()
	}
	p.setRateLimit(rl)
}

// watchUpstreams follows every upstream's resolution on one stream. A
// server without WatchResolveMany answers Unimplemented; the proxy then
// follows each upstream on its own WatchResolve stream.
func (p *Proxy) watchUpstreams(ctx context.Context) error {
	req := &meshfedv1.WatchResolveManyRequest{Locality: p.cfg.Locality}
	byKey := make(map[string]*upstream, len(p.upstreams))
	for _, u := range p.upstreams {
		req.Services = append(req.Services, &meshfedv1.ServiceRef{Namespace: u.cfg.Namespace, Name: u.cfg.Service})
		byKey[u.cfg.key()] = u
	}
	st, err := p.control().catalog.WatchResolveMany(ctx, req)
	if err != nil {
		return err
	}
	for {
		resp, err := st.Recv()
		if status.Code(err) == codes.Unimplemented {
			p.log.Info("the control plane has no WatchResolveMany; following each upstream on its own stream")
			for _, u := range p.upstreams {
				p.goFn(func() { p.retryLoop(ctx, "resolve "+u.cfg.key(), u.watch) })
			}
			<-ctx.Done()
			return ctx.Err()
		}
		if err != nil {
			return err
		}
		for _, r := range resp.GetResolutions() {
			if u := byKey[r.GetNamespace()+"/"+r.GetName()]; u != nil {
				u.update(r.GetResolution())
			}
		}
	}
}
