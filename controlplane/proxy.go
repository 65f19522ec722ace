package controlplane

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/fsm"
	"github.com/meshfed/meshfed/controlplane/state"
	"github.com/meshfed/meshfed/controlplane/validate"
)

// ProxyService: meshfed-proxy registers its workload's endpoint, reports
// its health and removes it, as the identity of its SVID. Every call runs
// on the leader (followers forward it with the identity they verified), so
// that the leader sees every heartbeat.

// proxyRetries bounds how often a proxy call re-reads and retries a write
// that lost a race (a heartbeat against the liveness loop, say).
const proxyRetries = 3

// proxyCaller is the identity of a ProxyService call, which the
// interceptor authenticated.
type proxyCaller struct {
	id                 spiffeid.ID
	namespace, account string
}

func proxyCallerFrom(ctx context.Context) (proxyCaller, error) {
	id := callerFrom(ctx).workload
	ns, sa, ok := workloadAccount(id)
	if !ok {
		return proxyCaller{}, status.Error(codes.Internal, "ProxyService call without a workload identity")
	}
	return proxyCaller{id: id, namespace: ns, account: sa}, nil
}

// owns reports whether w is an endpoint this proxy registered.
func (p proxyCaller) owns(w *meshfedv1.Workload) bool {
	return w.GetProxy() && w.GetSpiffeId() == p.id.String()
}

// workloadAccount returns the namespace and service account of a workload
// identity, spiffe://<td>/ns/<namespace>/sa/<service account>.
func workloadAccount(id spiffeid.ID) (ns, sa string, ok bool) {
	if id.IsZero() {
		return "", "", false
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" || seg[1] == "" || seg[3] == "" {
		return "", "", false
	}
	return seg[1], seg[3], true
}

// reportedHealth is the health a proxy reports; unset means healthy (the
// proxy runs and has nothing to say against its application).
func reportedHealth(h meshfedv1.HealthStatus) meshfedv1.HealthStatus {
	if h == meshfedv1.HealthStatus_HEALTH_STATUS_UNSPECIFIED {
		return meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY
	}
	return h
}

func (a *apiServer) RegisterEndpoint(ctx context.Context, req *meshfedv1.RegisterEndpointRequest) (*meshfedv1.RegisterEndpointResponse, error) {
	s := a.s
	p, err := proxyCallerFrom(ctx)
	if err != nil {
		return nil, err
	}
	if err := validate.EndpointRegistration(req); err != nil {
		return nil, toStatus(err)
	}
	_, r, err := s.store().Get(nil, kindService, p.namespace, req.GetService())
	if err != nil {
		return nil, toStatus(err)
	}
	if r == nil {
		return nil, status.Errorf(codes.NotFound, "service %q not found in namespace %q (the namespace of %s): register the service first",
			req.GetService(), p.namespace, p.id)
	}
	svc := r.(*meshfedv1.Service)
	if acct := serviceAccountOf(svc); acct != p.account {
		return nil, status.Errorf(codes.PermissionDenied,
			"service %s runs as service account %q, but the caller %s is service account %q: the proxy's token must be bound to the service's identity",
			qualified(p.namespace, svc.GetMeta().GetName()), acct, p.id, p.account)
	}
	want := &meshfedv1.Workload{
		Meta:     &meshfedv1.Meta{Namespace: p.namespace, Name: req.GetInstance()},
		Service:  req.GetService(),
		Address:  req.GetAddress(),
		Port:     req.GetPort(),
		Locality: req.GetLocality(),
		Version:  req.GetVersion(),
		Health:   reportedHealth(req.GetHealth()),
		SpiffeId: p.id.String(),
		Proxy:    true,
	}
	key := workloadKey{p.namespace, req.GetInstance()}
	for attempt := 1; ; attempt++ {
		_, cur, err := s.store().Get(nil, kindWorkload, p.namespace, req.GetInstance())
		if err != nil {
			return nil, toStatus(err)
		}
		mode, expected := modeCreate, uint64(0)
		if cur != nil {
			w := cur.(*meshfedv1.Workload)
			if err := p.checkOwner(w); err != nil {
				return nil, err
			}
			mode, expected = modeUpdate, w.GetMeta().GetVersion()
		}
		out, err := writeResource(ctx, s, kindWorkload, "workload", proto.Clone(want).(*meshfedv1.Workload), expected, mode)
		if err == nil {
			s.liveness.saw(key, time.Now())
			if mode == modeCreate {
				s.log.Info("proxy registered an endpoint", "workload", qualified(p.namespace, req.GetInstance()),
					"service", req.GetService(), "address", req.GetAddress(), "spiffe_id", p.id.String())
			}
			return &meshfedv1.RegisterEndpointResponse{
				Workload:          out,
				HeartbeatInterval: durationpb.New(s.cfg.ProxyHeartbeatInterval),
				HeartbeatTtl:      durationpb.New(s.cfg.ProxyHeartbeatTTL),
			}, nil
		}
		// Someone else wrote the workload between the read and the write:
		// look again at who owns it now.
		if lostRace(err) && attempt < proxyRetries {
			continue
		}
		return nil, err
	}
}

// checkOwner refuses an existing workload of the instance's name that is
// not this proxy's: a static one an operator registered, or another
// identity's.
func (p proxyCaller) checkOwner(w *meshfedv1.Workload) error {
	name := qualified(w.GetMeta().GetNamespace(), w.GetMeta().GetName())
	if !w.GetProxy() {
		return status.Errorf(codes.FailedPrecondition,
			"workload %s was registered by an operator, not by a proxy: use another instance name, or delete that workload first", name)
	}
	if w.GetSpiffeId() != p.id.String() {
		return status.Errorf(codes.PermissionDenied, "workload %s belongs to %s, not to the caller %s", name, w.GetSpiffeId(), p.id)
	}
	return nil
}

// lostRace reports whether a write failed because the workload changed
// after it was read.
func lostRace(err error) bool {
	switch status.Code(err) {
	case codes.FailedPrecondition, codes.AlreadyExists, codes.NotFound:
		return true
	}
	return false
}

func serviceAccountOf(svc *meshfedv1.Service) string {
	if a := svc.GetServiceAccount(); a != "" {
		return a
	}
	return svc.GetMeta().GetName()
}

// Heartbeat records that the proxy is alive, in the leader's memory only,
// and writes through Raft only when the reported health differs from the
// stored one (which includes an endpoint marked unknown while its proxy
// was silent).
func (a *apiServer) Heartbeat(ctx context.Context, req *meshfedv1.HeartbeatRequest) (*meshfedv1.HeartbeatResponse, error) {
	s := a.s
	p, err := proxyCallerFrom(ctx)
	if err != nil {
		return nil, err
	}
	if err := validate.ProxyHeartbeat(req); err != nil {
		return nil, toStatus(err)
	}
	health := reportedHealth(req.GetHealth())
	resp := &meshfedv1.HeartbeatResponse{HeartbeatInterval: durationpb.New(s.cfg.ProxyHeartbeatInterval)}
	key := workloadKey{p.namespace, req.GetInstance()}
	for attempt := 1; ; attempt++ {
		_, r, err := s.store().Get(nil, kindWorkload, p.namespace, req.GetInstance())
		if err != nil {
			return nil, toStatus(err)
		}
		w, _ := r.(*meshfedv1.Workload)
		if w == nil || !p.owns(w) {
			// Deleted by an operator or a restore, or never registered:
			// the proxy registers again.
			return resp, nil
		}
		s.liveness.saw(key, time.Now())
		if attempt == 1 {
			s.topo.record(p.namespace, w.GetService(), req.GetOutbound(), time.Now())
		}
		resp.Registered = true
		if w.GetHealth() == health {
			return resp, nil
		}
		err = s.writeHealth(ctx, []*meshfedv1.Workload{w}, health)
		if err == nil {
			return resp, nil
		}
		if (!isVersionMismatch(err) && !errors.Is(err, state.ErrNotFound)) || attempt >= proxyRetries {
			return nil, toStatus(err)
		}
	}
}

// DeregisterEndpoint deletes the caller's endpoint; one that is already
// gone is success, so a proxy may repeat the call.
func (a *apiServer) DeregisterEndpoint(ctx context.Context, req *meshfedv1.DeregisterEndpointRequest) (*meshfedv1.DeregisterEndpointResponse, error) {
	s := a.s
	p, err := proxyCallerFrom(ctx)
	if err != nil {
		return nil, err
	}
	if err := validate.ProxyDeregistration(req); err != nil {
		return nil, toStatus(err)
	}
	key := workloadKey{p.namespace, req.GetInstance()}
	for attempt := 1; ; attempt++ {
		_, r, err := s.store().Get(nil, kindWorkload, p.namespace, req.GetInstance())
		if err != nil {
			return nil, toStatus(err)
		}
		if r == nil {
			s.liveness.forget(key)
			return &meshfedv1.DeregisterEndpointResponse{}, nil
		}
		w := r.(*meshfedv1.Workload)
		if err := p.checkOwner(w); err != nil {
			return nil, err
		}
		_, err = s.applyWrite(ctx, fsm.DeleteResourceType, &meshfedv1.ResourceWrite{
			Kind: kindWorkload, Namespace: p.namespace, Name: req.GetInstance(), ExpectedVersion: w.GetMeta().GetVersion(),
		})
		switch {
		case err == nil, errors.Is(err, state.ErrNotFound):
			s.liveness.forget(key)
			s.log.Info("proxy deregistered its endpoint", "workload", qualified(p.namespace, req.GetInstance()), "spiffe_id", p.id.String())
			return &meshfedv1.DeregisterEndpointResponse{}, nil
		case isVersionMismatch(err) && attempt < proxyRetries:
			continue
		}
		return nil, toStatus(err)
	}
}
