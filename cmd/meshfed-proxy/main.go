// Command meshfed-proxy is the per-pod proxy of the meshfed service mesh. It
// runs beside one workload instance: it obtains and renews the workload's
// SVID, registers the workload's endpoint, terminates mutual TLS for calls
// to the workload and authorizes them, and originates mutual TLS for the
// calls the workload makes through its --upstream listeners. See
// docs/proxy.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/proxy"
)

func main() {
	// A sidecar runs beside every pod, mostly idle between requests,
	// unless the operator chose otherwise:
	//   - one scheduler thread: with a second, every request that wakes
	//     the process also wakes an idle thread to look for work, which
	//     cost about 10% more CPU and gave a worse 99th percentile;
	//   - Go's default GOGC of 100: each garbage collection delays the
	//     requests it overlaps, and at GOGC=50 a proxy at 1,000
	//     requests/s collected about four times a second; an idle proxy
	//     gives its free memory back anyway (see proxy.settle).
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	os.Exit(run(os.Args[1:], os.Stderr))
}

const usage = `meshfed-proxy: the per-pod proxy of a meshfed service mesh.

Usage:
  meshfed-proxy --server ADDR --ca-file FILE --token TOKEN --service NAME --namespace NS --port APP_PORT
                [--listen :15443] [--upstream NAME[.NS]=HOST:PORT ...] [--admin 127.0.0.1:15000]
                [--workload-api-socket PATH] [flags]

Example:
  meshfed-proxy --server 10.0.0.1:7700 --ca-file /etc/meshfed/ca.pem --token "$TOKEN" \
    --service web --namespace default --port 8080 --listen :15443 \
    --upstream payments=127.0.0.1:9001 --admin 127.0.0.1:15000

The app listens on 127.0.0.1:APP_PORT; callers reach it through --listen
(mutual TLS). The app calls payments at http://127.0.0.1:9001; the proxy
picks an endpoint and carries the call over mutual TLS.

Flags:
`

type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*s = append(*s, part)
		}
	}
	return nil
}

type upstreamList []string

func (s *upstreamList) String() string     { return strings.Join(*s, " ") }
func (s *upstreamList) Set(v string) error { *s = append(*s, v); return nil }

// run parses args, starts the proxy and serves until SIGTERM or SIGINT.
// Exit status: 0 after a clean drain, 1 when the proxy failed, 2 for bad
// flags.
func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("meshfed-proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var (
		servers   stringList
		upstreams upstreamList
		cfg       proxy.Config
		region    string
		zone      string
		tokenFile string
		logLevel  string
		logFormat string
	)
	fs.Var(&servers, "server", "API address (host:port) of a control plane server; repeat or comma-separate for several (default $MESHFED_ADDR)")
	fs.StringVar(&cfg.CAFile, "ca-file", os.Getenv("MESHFED_CA_FILE"), "PEM file of the cluster's CA bundle (a server's ca.pem)")
	fs.StringVar(&cfg.Token, "token", os.Getenv("MESHFED_PROXY_TOKEN"), "workload-join token bound to the service's identity (default $MESHFED_PROXY_TOKEN)")
	fs.StringVar(&tokenFile, "token-file", "", "read the workload-join token from this file instead")
	fs.StringVar(&cfg.Service, "service", "", "service the workload belongs to (required)")
	fs.StringVar(&cfg.Namespace, "namespace", "default", "namespace of the service")
	fs.IntVar(&cfg.AppPort, "port", 0, "port the app listens on (required)")
	fs.StringVar(&cfg.AppHost, "app-host", "127.0.0.1", "address the app listens on")
	fs.StringVar(&cfg.Listen, "listen", ":15443", "inbound mutual TLS listener")
	fs.StringVar(&cfg.Address, "address", "", "IP address registered for the endpoint (default: the --listen IP, else the first non-loopback IPv4)")
	fs.StringVar(&cfg.Instance, "instance", "", "name of this workload instance (default $POD_NAME, else the host name)")
	fs.StringVar(&region, "region", "", "locality region of the endpoint")
	fs.StringVar(&zone, "zone", "", "locality zone of the endpoint")
	fs.StringVar(&cfg.Version, "version", "", "version label of the endpoint (for weighted traffic splits)")
	fs.Var(&upstreams, "upstream", "NAME[.NAMESPACE]=HOST:PORT: a local listener for calls to service NAME (repeatable)")
	fs.StringVar(&cfg.Admin, "admin", "127.0.0.1:15000", "admin HTTP address for /metrics, /ready, /status; \"off\" disables it")
	fs.StringVar(&cfg.WorkloadAPISocket, "workload-api-socket", "", "serve the SPIFFE Workload API on this unix socket")
	fs.StringVar(&cfg.HealthPath, "health-path", "", "check the app with an HTTP GET of this path (default: a TCP connect to --port)")
	fs.DurationVar(&cfg.HealthInterval, "health-interval", 2*time.Second, "how often the app is checked")
	fs.DurationVar(&cfg.DrainDelay, "drain-delay", 2*time.Second, "on SIGTERM, how long to keep serving after deregistering, so callers learn the endpoint is gone")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long to wait for in-flight requests")
	fs.BoolVar(&cfg.AccessLogs, "access-logs", false, "write a JSON access-log line for every request (default: as the mesh settings say; denials are always logged)")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "serve Go's profiling endpoints under /debug/pprof/ on the admin address")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "meshfed-proxy: unexpected argument %q (flags only; see --help)\n", fs.Arg(0))
		return 2
	}
	if len(servers) == 0 && os.Getenv("MESHFED_ADDR") != "" {
		_ = servers.Set(os.Getenv("MESHFED_ADDR"))
	}
	cfg.Servers = servers
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "meshfed-proxy: --token-file: %v\n", err)
			return 2
		}
		cfg.Token = strings.TrimSpace(string(b))
	}
	if region != "" || zone != "" {
		cfg.Locality = &meshfedv1.Locality{Region: region, Zone: zone}
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(stderr, "meshfed-proxy: --log-level %q: want debug, info, warn or error\n", logLevel)
		return 2
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch logFormat {
	case "text":
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, opts))
	case "json":
		cfg.Logger = slog.New(slog.NewJSONHandler(stderr, opts))
	default:
		fmt.Fprintf(stderr, "meshfed-proxy: --log-format %q: want text or json\n", logFormat)
		return 2
	}
	for _, s := range upstreams {
		u, err := proxy.ParseUpstream(s, cfg.Namespace)
		if err != nil {
			fmt.Fprintf(stderr, "meshfed-proxy: %v\n", err)
			return 2
		}
		cfg.Upstreams = append(cfg.Upstreams, u)
	}
	p, err := proxy.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "meshfed-proxy: %v\n", strings.ReplaceAll(err.Error(), "\n", "\nmeshfed-proxy: "))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := p.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "meshfed-proxy: %v\n", err)
		return 1
	}
	return 0
}
