package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// Upstream is one --upstream NAME=ADDR: a local listener for calls to a
// service of the mesh.
type Upstream struct {
	// Service and Namespace name the destination; Namespace defaults to the
	// proxy's own.
	Service, Namespace string
	// Listen is the local address the app connects to.
	Listen string
}

// ParseUpstream parses NAME[.NAMESPACE]=HOST:PORT.
func ParseUpstream(s, defaultNamespace string) (Upstream, error) {
	name, addr, ok := strings.Cut(s, "=")
	if !ok || name == "" || addr == "" {
		return Upstream{}, fmt.Errorf("--upstream %q: want NAME[.NAMESPACE]=HOST:PORT", s)
	}
	u := Upstream{Service: name, Namespace: defaultNamespace, Listen: addr}
	if svc, ns, ok := strings.Cut(name, "."); ok {
		u.Service, u.Namespace = svc, ns
	}
	if err := dnsLabel("service", u.Service); err != nil {
		return Upstream{}, fmt.Errorf("--upstream %q: %v", s, err)
	}
	if err := dnsLabel("namespace", u.Namespace); err != nil {
		return Upstream{}, fmt.Errorf("--upstream %q: %v", s, err)
	}
	if _, err := parseHostPort(addr); err != nil {
		return Upstream{}, fmt.Errorf("--upstream %q: %v", s, err)
	}
	return u, nil
}

func (u Upstream) key() string { return u.Namespace + "/" + u.Service }

// Config is everything meshfed-proxy is started with.
type Config struct {
	// Servers are API addresses of control plane servers (host:port).
	Servers []string
	// CAFile is the cluster's CA bundle (a server's ca.pem), trusted until
	// the first bundle arrives from the servers.
	CAFile string
	// Token is the workload-join token the proxy attests with.
	Token string

	// Service and Namespace the proxy's workload belongs to.
	Service, Namespace string
	// AppPort is the port the app listens on; AppHost its host (default
	// 127.0.0.1).
	AppPort int
	AppHost string

	// Listen is the inbound mTLS listener (default :15443).
	Listen string
	// Address is the IP registered for the endpoint; empty picks the
	// listener's IP, or the first non-loopback address of the host.
	Address string
	// Instance names the workload (default: $POD_NAME, else the host name).
	Instance string
	// Locality and Version of the endpoint.
	Locality *meshfedv1.Locality
	Version  string

	Upstreams []Upstream

	// Admin serves /metrics, /ready and /healthz (default 127.0.0.1:15000);
	// "off" disables it.
	Admin string
	// WorkloadAPISocket, when set, serves the SPIFFE Workload API there.
	WorkloadAPISocket string

	// HealthPath, when set, checks the app with an HTTP GET (2xx-3xx is
	// healthy); otherwise a TCP connect to the app port.
	HealthPath     string
	HealthInterval time.Duration

	// DrainTimeout bounds the wait for in-flight requests on SIGTERM;
	// DrainDelay is how long the proxy keeps serving after deregistering so
	// that callers learn the endpoint is gone.
	DrainTimeout time.Duration
	DrainDelay   time.Duration

	// AccessLogs forces JSON access logs on; otherwise the mesh settings'
	// access_logs decides. Denials are always logged.
	AccessLogs bool

	// Pprof serves Go's profiling endpoints under /debug/pprof/ on the
	// admin address.
	Pprof bool

	Logger *slog.Logger
}

func parseHostPort(addr string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: want HOST:PORT", addr)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return netip.AddrPort{}, fmt.Errorf("address %q: port must be 1-65535", addr)
	}
	if host == "" {
		return netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(p)), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		if host == "localhost" {
			return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(p)), nil
		}
		return netip.AddrPort{}, fmt.Errorf("address %q: host must be an IP address", addr)
	}
	return netip.AddrPortFrom(ip, uint16(p)), nil
}

// check validates c and fills in defaults. Errors name the flag.
func (c *Config) check() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(c.Servers) == 0 {
		bad("--server: required (API address of a control plane server, host:port)")
	}
	for _, s := range c.Servers {
		if _, p, err := net.SplitHostPort(s); err != nil || p == "" {
			bad("--server %q: want HOST:PORT", s)
		}
	}
	if c.CAFile == "" {
		bad("--ca-file: required (the cluster's ca.pem)")
	}
	if c.Token == "" {
		bad("--token: required (a workload-join token bound to this service's identity)")
	}
	if err := dnsLabel("service", c.Service); err != nil {
		bad("--service: %v", err)
	}
	if c.Namespace == "" {
		c.Namespace = "default"
	}
	if err := dnsLabel("namespace", c.Namespace); err != nil {
		bad("--namespace: %v", err)
	}
	if c.AppPort < 1 || c.AppPort > 65535 {
		bad("--port: the app's port, 1-65535 (got %d)", c.AppPort)
	}
	if c.AppHost == "" {
		c.AppHost = "127.0.0.1"
	}
	if c.Listen == "" {
		c.Listen = ":15443"
	}
	if _, err := parseHostPort(c.Listen); err != nil {
		bad("--listen: %v", err)
	}
	if c.Address != "" {
		if _, err := netip.ParseAddr(c.Address); err != nil {
			bad("--address %q: not an IP address", c.Address)
		}
	}
	if c.Admin == "" {
		c.Admin = "127.0.0.1:15000"
	}
	if c.Admin != "off" {
		if _, err := parseHostPort(c.Admin); err != nil {
			bad("--admin: %v", err)
		}
	}
	if c.HealthPath != "" && !strings.HasPrefix(c.HealthPath, "/") {
		bad("--health-path %q: must start with /", c.HealthPath)
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = 2 * time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.DrainDelay < 0 {
		bad("--drain-delay: must not be negative")
	}
	seen := map[string]bool{}
	listens := map[string]bool{c.Listen: true}
	for _, u := range c.Upstreams {
		if seen[u.key()] {
			bad("--upstream %s: given twice", u.key())
		}
		seen[u.key()] = true
		if listens[u.Listen] {
			bad("--upstream %s=%s: address already used by another listener", u.Service, u.Listen)
		}
		listens[u.Listen] = true
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return errors.Join(errs...)
}

// dnsLabel checks a name the control plane keys by: lower case letters,
// digits and '-', starting with a letter, at most 63 characters. The server
// checks the same; checking here makes a bad flag fail at start.
func dnsLabel(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s is required", what)
	}
	if len(s) > 63 {
		return fmt.Errorf("%s %q must be at most 63 characters long", what, s)
	}
	if s[0] < 'a' || s[0] > 'z' {
		return fmt.Errorf("%s %q must start with a lower case letter", what, s)
	}
	if s[len(s)-1] == '-' {
		return fmt.Errorf("%s %q must not end with '-'", what, s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("%s %q may hold only lower case letters, digits and '-'", what, s)
		}
	}
	return nil
}
