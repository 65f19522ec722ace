package proxy

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are what the admin endpoint's /metrics exposes. Label values:
// direction is "inbound" (calls to this workload) or "outbound" (calls the
// app makes through an --upstream); source is the caller's SPIFFE ID
// ("unauthenticated" for a plain-text caller in PERMISSIVE mode);
// destination is the called service, "<namespace>/<name>"; code is the
// HTTP status, or "tcp" for a TCP connection.
type metrics struct {
	reg *prometheus.Registry

	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	denied        *prometheus.CounterVec
	handshakeFail *prometheus.CounterVec
	connections   *prometheus.CounterVec
	healthy       *prometheus.GaugeVec
	certExpiry    prometheus.Gauge
	upstreamErr   *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshfed_proxy_requests_total",
		Help: "Requests (HTTP, gRPC) and connections (TCP) handled, by direction, source, destination and response code.",
	}, []string{"direction", "source", "destination", "code"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "meshfed_proxy_request_duration_seconds",
		Help: "Time from a request's arrival at the proxy to the end of its response (connection lifetime for TCP).",
		// 250 µs to about 16 s.
		Buckets: prometheus.ExponentialBuckets(0.00025, 2, 17),
	}, []string{"direction", "source", "destination", "code"})
	m.denied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshfed_proxy_authorization_denied_total",
		Help: "Inbound requests and connections refused by authorization policy.",
	}, []string{"source", "destination"})
	m.handshakeFail = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshfed_proxy_tls_handshake_failures_total",
		Help: "Failed TLS handshakes: inbound (callers without a valid SVID) and outbound (servers whose SVID or identity was refused).",
	}, []string{"direction"})
	m.connections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshfed_proxy_connections_total",
		Help: "Connections accepted, by direction.",
	}, []string{"direction"})
	m.healthy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshfed_proxy_upstream_healthy_endpoints",
		Help: "Healthy endpoints known for each upstream, in all clusters.",
	}, []string{"upstream"})
	m.certExpiry = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meshfed_proxy_certificate_expiry_timestamp_seconds",
		Help: "When the proxy's current SVID expires (Unix time).",
	})
	m.upstreamErr = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshfed_proxy_upstream_connect_errors_total",
		Help: "Failed connections to upstream endpoints (each is retried on another endpoint when possible).",
	}, []string{"upstream"})
	m.reg.MustRegister(m.requests, m.duration, m.denied, m.handshakeFail, m.connections, m.healthy, m.certExpiry, m.upstreamErr,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observe records one finished request.
func (m *metrics) observe(direction, source, destination string, code int, d time.Duration) {
	c := "tcp"
	if code > 0 {
		c = strconv.Itoa(code)
	}
	m.requests.WithLabelValues(direction, source, destination, c).Inc()
	m.duration.WithLabelValues(direction, source, destination, c).Observe(d.Seconds())
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
