package controlplane

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// startHTTP serves /healthz, /readyz, /metrics and the SPIFFE bundle
// endpoint over TLS on the HTTP address. They carry no secrets and need no
// token, so probes, Prometheus and federated trust domains can reach them
// with only the cluster's CA bundle.
func (s *Server) startHTTP() error {
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listening for HTTP on %s: %w", s.cfg.HTTPAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "node": s.cfg.NodeID})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ready, why := s.readiness()
		code := http.StatusOK
		if !ready {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]any{"ready": ready, "reason": why, "node": s.cfg.NodeID, "state": s.raft.State().String()})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	bundle, err := federation.NewHandler(s.td, bundleSource{s})
	if err != nil {
		ln.Close()
		return fmt.Errorf("SPIFFE bundle endpoint: %w", err)
	}
	mux.Handle("GET "+BundleEndpointPath, bundle)
	tc := tlsutil.APIServer(s.tls)
	tc.ClientAuth = tls.NoClientCert
	tc.VerifyPeerCertificate = nil
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.http.Serve(tls.NewListener(ln, tc)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("HTTP server stopped", "error", err)
		}
	}()
	return nil
}

// BundleEndpointPath is where the HTTP address serves the SPIFFE bundle
// endpoint (federation spec, https_spiffe profile: the server authenticates
// with its own SVID, spiffe://<td>/meshfed/server/<node-id>).
const BundleEndpointPath = "/bundle"

// bundleRefreshHint tells federated trust domains how often to poll. It is
// short so that a root added by a rotation's prepare step reaches them well
// before the step that signs with it.
const bundleRefreshHint = time.Minute

// bundleSource serves the trust bundle, with its sequence number, to the
// federation handler.
type bundleSource struct{ s *Server }

func (b bundleSource) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if td != b.s.td {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	v, err := b.s.trustBundle(nil)
	if err != nil {
		return nil, err
	}
	if len(v.roots) == 0 {
		return nil, errors.New("the cluster has no certificate authority yet")
	}
	var roots []*x509.Certificate
	for _, r := range v.roots {
		certs, err := tlsutil.ParseCertificatesPEM([]byte(r))
		if err != nil {
			return nil, err
		}
		roots = append(roots, certs...)
	}
	out := spiffebundle.FromX509Authorities(td, roots)
	out.SetSequenceNumber(v.sequence)
	out.SetRefreshHint(bundleRefreshHint)
	return out, nil
}

// readiness: a server is ready when it knows a leader and has applied the
// cluster's identity record, i.e. it can serve reads and forward writes.
func (s *Server) readiness() (bool, string) {
	if addr, _ := s.raft.LeaderWithID(); addr == "" {
		return false, "no leader"
	}
	_, rec, err := s.store().Get(nil, meshfedv1.ResourceKind_RESOURCE_KIND_CLUSTER, "", clusterRecordName)
	if err != nil || rec == nil {
		return false, "cluster state not replicated yet"
	}
	_, own, err := s.store().Get(nil, meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, "", s.cfg.NodeID)
	if err != nil || own == nil {
		return false, "server not registered yet"
	}
	return true, ""
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
