package proxy

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// checkHealth probes the app every HealthInterval: an HTTP GET of
// HealthPath (2xx or 3xx is healthy) or a TCP connect to the app port.
func (p *Proxy) checkHealth(ctx context.Context) {
	target := net.JoinHostPort(p.cfg.AppHost, strconv.Itoa(p.cfg.AppPort))
	hc := &http.Client{
		Timeout:   p.cfg.HealthInterval,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	probe := func() meshfedv1.HealthStatus {
		if p.cfg.HealthPath != "" {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target+p.cfg.HealthPath, nil)
			resp, err := hc.Do(req)
			if err != nil {
				return meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
			}
			resp.Body.Close()
			if resp.StatusCode >= 200 && resp.StatusCode < 400 {
				return meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY
			}
			return meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
		}
		c, err := net.DialTimeout("tcp", target, p.cfg.HealthInterval)
		if err != nil {
			return meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
		}
		c.Close()
		return meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY
	}
	t := time.NewTicker(p.cfg.HealthInterval)
	defer t.Stop()
	for {
		h := probe()
		old := meshfedv1.HealthStatus(p.appHealth.Swap(int32(h)))
		switch {
		case ctx.Err() != nil:
		case !p.healthKnown.Load():
			p.healthKnown.Store(true)
			p.log.Info("app health", "health", healthName(h))
			signal(p.healthChanged)
		case old != h:
			p.log.Info("app health changed", "health", healthName(h))
			signal(p.healthChanged)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func healthName(h meshfedv1.HealthStatus) string {
	switch h {
	case meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY:
		return "healthy"
	case meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY:
		return "unhealthy"
	}
	return "unknown"
}

// register registers the endpoint, then sends heartbeats carrying the app's
// health at the interval the control plane asks for (and at once when the
// health changes), registering again whenever the control plane no longer
// knows the endpoint.
func (p *Proxy) register(ctx context.Context) {
	interval := 2 * time.Second
	wait := 200 * time.Millisecond
	needRegister := true
	// Register with the app's health as first probed, not a guess.
	select {
	case <-ctx.Done():
		return
	case <-p.healthChanged:
	}
	for ctx.Err() == nil && !p.draining.Load() {
		health := meshfedv1.HealthStatus(p.appHealth.Load())
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var err error
		if needRegister {
			var resp *meshfedv1.RegisterEndpointResponse
			resp, err = p.control().proxy.RegisterEndpoint(cctx, &meshfedv1.RegisterEndpointRequest{
				Service:  p.cfg.Service,
				Instance: p.instance,
				Address:  p.address,
				Port:     uint32(p.in.port()),
				Locality: p.cfg.Locality,
				Version:  p.cfg.Version,
				Health:   health,
			})
			if err == nil {
				needRegister = false
				p.registered.Store(true)
				if d := resp.GetHeartbeatInterval().AsDuration(); d > 0 {
					interval = d
				}
				p.log.Info("registered the endpoint", "workload", resp.GetWorkload().GetMeta().GetName(),
					"address", p.address, "port", p.in.port(), "health", healthName(health), "heartbeat", interval)
			}
		} else {
			var resp *meshfedv1.HeartbeatResponse
			out := p.takeTrafficCounts()
			resp, err = p.control().proxy.Heartbeat(cctx, &meshfedv1.HeartbeatRequest{Instance: p.instance, Health: health, Outbound: out})
			if err != nil {
				// Counted again with the next heartbeat.
				p.putBackTrafficCounts(out)
			}
			if err == nil {
				if d := resp.GetHeartbeatInterval().AsDuration(); d > 0 {
					interval = d
				}
				if !resp.GetRegistered() {
					p.log.Warn("the control plane no longer knows the endpoint; registering again")
					needRegister = true
					cancel()
					continue
				}
			}
		}
		cancel()
		next := interval
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			switch status.Code(err) {
			case codes.PermissionDenied, codes.InvalidArgument, codes.FailedPrecondition, codes.NotFound:
				p.log.Error("the control plane refused the endpoint", "err", err)
			default:
				p.log.Warn("reaching the control plane", "err", err)
			}
			next = wait
			wait = min(wait*2, interval)
		} else {
			wait = 200 * time.Millisecond
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-p.healthChanged:
			t.Stop()
		}
	}
}

func (in *inbound) port() int {
	return in.ln.Addr().(*net.TCPAddr).Port
}
