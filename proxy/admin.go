package proxy

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// adminHandler serves /metrics (Prometheus), /ready (200 once the proxy
// serves as configured, 503 with the reason before and while draining),
// /healthz (200 while the process runs) and /status (JSON).
func (p *Proxy) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", p.m.handler())
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := p.Ready()
		if !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	if p.cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	}
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(p.status())
	})
	return mux
}

type upstreamStatus struct {
	Name      string   `json:"name"`
	Listen    string   `json:"listen"`
	Protocol  string   `json:"protocol,omitempty"`
	Endpoints []string `json:"endpoints"`
}

type statusDoc struct {
	SPIFFEID   string           `json:"spiffe_id"`
	Service    string           `json:"service"`
	Instance   string           `json:"instance"`
	Address    string           `json:"address"`
	Ready      bool             `json:"ready"`
	Reason     string           `json:"reason"`
	AppHealth  string           `json:"app_health"`
	SVIDExpiry time.Time        `json:"svid_expiry"`
	MTLSMode   string           `json:"mtls_mode"`
	Upstreams  []upstreamStatus `json:"upstreams"`
}

func (p *Proxy) status() statusDoc {
	ok, why := p.Ready()
	d := statusDoc{
		SPIFFEID:  p.self.String(),
		Service:   p.cfg.Namespace + "/" + p.cfg.Service,
		Instance:  p.instance,
		Address:   p.address,
		Ready:     ok,
		Reason:    why,
		AppHealth: healthName(meshfedv1.HealthStatus(p.appHealth.Load())),
		MTLSMode:  "STRICT",
		Upstreams: []upstreamStatus{},
	}
	if p.permissive() {
		d.MTLSMode = "PERMISSIVE"
	}
	if s, err := p.id.GetX509SVID(); err == nil {
		d.SVIDExpiry = s.Certificates[0].NotAfter.UTC()
	}
	for _, u := range p.upstreams {
		us := upstreamStatus{Name: u.cfg.key(), Listen: u.ln.Addr().String(), Endpoints: []string{}}
		if set := u.set.Load(); set != nil {
			us.Protocol = set.protocol.String()
			for _, g := range set.groups {
				for _, e := range g {
					us.Endpoints = append(us.Endpoints, e.cluster+"/"+e.addr)
				}
			}
		}
		d.Upstreams = append(d.Upstreams, us)
	}
	return d
}
