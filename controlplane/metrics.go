package controlplane

import (
	"context"
	"sync"
	"time"

	gometrics "github.com/hashicorp/go-metrics"
	gmprom "github.com/hashicorp/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// apiMetrics counts and times API calls for /metrics.
type apiMetrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	streams  *prometheus.GaugeVec

	svidsIssued    prometheus.Counter
	memoryReleases prometheus.Counter
}

// raftSinkOnce installs the go-metrics sink that Raft reports through. Raft
// and raft-wal use go-metrics' process-wide registry, so the sink is process
// wide too and every server in the process shares it.
var (
	raftSinkOnce sync.Once
	raftSink     *gmprom.PrometheusSink
)

func newAPIMetrics() *apiMetrics {
	reg := prometheus.NewRegistry()
	m := &apiMetrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_api_requests_total", Help: "API calls by method and gRPC status code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "meshfed_api_request_duration_seconds", Help: "Latency of unary API calls.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14),
		}, []string{"method"}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshfed_api_open_streams", Help: "Open streaming API calls (watches) by method.",
		}, []string{"method"}),
	}
	m.svidsIssued = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshfed_ca_svids_issued_total", Help: "Workload SVIDs signed by this server (attestations and renewals).",
	})
	m.memoryReleases = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshfed_memory_idle_releases_total", Help: "Times the server, idle, returned its free heap memory to the system.",
	})
	reg.MustRegister(m.requests, m.latency, m.streams, m.svidsIssued, m.memoryReleases,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	raftSinkOnce.Do(func() {
		sink, err := gmprom.NewPrometheusSinkFrom(gmprom.PrometheusOpts{Expiration: time.Minute, Registerer: prometheus.NewRegistry()})
		if err != nil {
			return
		}
		raftSink = sink
		cfg := gometrics.DefaultConfig("meshfed")
		cfg.EnableHostname = false
		cfg.EnableRuntimeMetrics = false
		_, _ = gometrics.NewGlobal(cfg, sink)
	})
	if raftSink != nil {
		reg.MustRegister(raftSink)
	}
	return m
}

// registerWatchers exports the number of bundle watchers connected to this
// server.
func (m *apiMetrics) registerWatchers(w *bundleWatchers) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meshfed_ca_bundle_watchers", Help: "Trust bundle watchers (workloads, proxies) connected to this server.",
	}, func() float64 {
		total, _, _ := w.stats(0)
		return float64(total)
	}))
}

func (m *apiMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.latency.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
	m.requests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return resp, err
}

func (m *apiMetrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	g := m.streams.WithLabelValues(info.FullMethod)
	g.Inc()
	defer g.Dec()
	err := handler(srv, ss)
	m.requests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return err
}

func nowProto() *timestamppb.Timestamp { return timestamppb.Now() }
