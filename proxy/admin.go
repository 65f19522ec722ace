package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
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
		mux.HandleFunc("GET /debug/pprof/", pprofIndex)
		mux.HandleFunc("GET /debug/pprof/profile", pprofCPU)
	}
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(p.status())
	})
	return mux
}

// The profiling endpoints are served with runtime/pprof rather than
// net/http/pprof: the proxy runs next to every workload and the pages of its
// binary count in each pod's resident memory, and net/http/pprof links in a
// profile parser (for delta profiles), the execution tracer and the html
// package. What remains is what `go tool pprof` needs: every named profile
// (with ?debug=N, and ?gc=1 for heap) and the CPU profile.

// maxCPUProfile bounds /debug/pprof/profile?seconds=N, so that a stray
// request cannot keep the CPU profiler on indefinitely.
const maxCPUProfile = 300 * time.Second

// pprofIndex serves /debug/pprof/ (an index of the profiles) and
// /debug/pprof/<name> (one runtime/pprof profile).
func pprofIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if name := strings.TrimPrefix(r.URL.Path, "/debug/pprof/"); name != "" {
		pprofNamed(w, r, name)
		return
	}
	profiles := pprof.Profiles()
	slices.SortFunc(profiles, func(a, b *pprof.Profile) int { return strings.Compare(a.Name(), b.Name()) })
	var b strings.Builder
	b.WriteString("<html>\n<head><title>/debug/pprof/</title></head>\n<body>\n/debug/pprof/\n<p>Profiles (count, name):</p>\n<ul>\n")
	for _, p := range profiles {
		fmt.Fprintf(&b, "<li>%d <a href=\"%s?debug=1\">%s</a></li>\n", p.Count(), htmlEscape(url.PathEscape(p.Name())), htmlEscape(p.Name()))
	}
	b.WriteString("<li><a href=\"profile\">profile</a>: CPU profile; ?seconds=N sets the duration (default 30, at most 300)</li>\n")
	b.WriteString("</ul>\n<p><a href=\"goroutine?debug=2\">full goroutine stack dump</a></p>\n")
	b.WriteString("<p>Without ?debug=N a profile is in the gzipped protocol buffer format of <code>go tool pprof</code>.</p>\n</body>\n</html>\n")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write([]byte(b.String()))
}

// pprofNamed serves one named profile (heap, goroutine, allocs, ...):
// ?debug=N selects text output as for pprof.Profile.WriteTo, ?gc=1 runs a
// garbage collection before a heap profile.
func pprofNamed(w http.ResponseWriter, r *http.Request, name string) {
	p := pprof.Lookup(name)
	if p == nil {
		pprofError(w, http.StatusNotFound, "Unknown profile")
		return
	}
	if r.FormValue("seconds") != "" {
		pprofError(w, http.StatusBadRequest, "delta profiles (seconds) are not served; fetch the profile twice and compare with go tool pprof -diff_base")
		return
	}
	if gc, _ := strconv.Atoi(r.FormValue("gc")); gc > 0 && name == "heap" {
		runtime.GC()
	}
	debug, _ := strconv.Atoi(r.FormValue("debug"))
	if debug != 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Disposition", `attachment; filename="`+strings.Map(safeFilenameRune, name)+`"`)
	}
	_ = p.WriteTo(w, debug)
}

// pprofCPU serves /debug/pprof/profile: a CPU profile over ?seconds=N
// (default 30, at most maxCPUProfile), or until the client goes away.
func pprofCPU(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	d := 30 * time.Second
	if s := r.FormValue("seconds"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 || n > int64(maxCPUProfile/time.Second) {
			pprofError(w, http.StatusBadRequest, fmt.Sprintf("invalid seconds %q: want a whole number from 1 to %d", s, int64(maxCPUProfile/time.Second)))
			return
		}
		d = time.Duration(n) * time.Second
	}
	// A server write timeout would cut the response off before the profile
	// is written: extend it by the duration, as net/http/pprof does.
	if srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server); ok && srv.WriteTimeout > 0 {
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(srv.WriteTimeout + d))
	}
	// Set before StartCPUProfile, which starts writing when it succeeds.
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="profile"`)
	if err := pprof.StartCPUProfile(w); err != nil {
		pprofError(w, http.StatusInternalServerError, "Could not enable CPU profiling: "+err.Error())
		return
	}
	t := time.NewTimer(d)
	select {
	case <-t.C:
	case <-r.Context().Done():
		t.Stop()
	}
	pprof.StopCPUProfile()
}

func pprofError(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	h.Del("Content-Disposition")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Go-Pprof", "1")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(msg + "\n"))
}

var htmlEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;", "'", "&#39;")

func htmlEscape(s string) string { return htmlEscaper.Replace(s) }

// safeFilenameRune keeps a profile's name usable in a quoted
// Content-Disposition filename.
func safeFilenameRune(r rune) rune {
	if r == '"' || r == '\\' || r < ' ' || r == 0x7f {
		return '_'
	}
	return r
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
