package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Default ports of the three listeners.
const (
	DefaultAPIPort  = 7700
	DefaultRaftPort = 7701
	DefaultHTTPPort = 7702
)

// Defaults of the proxies' heartbeats: a proxy that was killed stops
// being resolved within the TTL plus a second or so.
const (
	DefaultProxyHeartbeatInterval = 2 * time.Second
	DefaultProxyHeartbeatTTL      = 6 * time.Second
)

// Config configures one server.
type Config struct {
	// NodeID names this server in the cluster; it is part of the server's
	// SPIFFE ID and must be a DNS label.
	NodeID string
	// Cluster is the cluster name; TrustDomain its SPIFFE trust domain
	// (default "<cluster>.mesh").
	Cluster     string
	TrustDomain string
	// DataDir holds the Raft log, snapshots, the server's key and
	// certificate, and (on the bootstrap server) admin.token, ca.pem and env.
	DataDir string
	// APIAddr, RaftAddr and HTTPAddr are host:port to listen on; they are also
	// advertised to the other servers, so they must be reachable addresses.
	APIAddr  string
	RaftAddr string
	HTTPAddr string

	// RaftAdvertiseAddr is the Raft address other servers dial, when it
	// differs from RaftAddr (a NAT or a proxy in front of this server).
	// Default: RaftAddr.
	RaftAdvertiseAddr string

	// APIAdvertiseAddr is the API address other servers, clients and peer
	// clusters dial, when it differs from APIAddr (a NAT, a load balancer
	// or a proxy in front of this server). Default: APIAddr.
	APIAdvertiseAddr string

	// Bootstrap starts a new cluster with this server as its only voter.
	// Ignored when DataDir already holds Raft state.
	Bootstrap bool
	// JoinAddrs are API addresses of existing servers; JoinToken a
	// server-join token; CAFile the cluster's CA bundle used to verify them.
	// Only needed for the first start of a server that is not bootstrapping.
	JoinAddrs []string
	JoinToken string
	CAFile    string

	// Dev marks a development server; it changes nothing in behaviour but is
	// reported in logs and status.
	Dev bool

	// Logger receives structured logs; nil logs nothing.
	Logger *slog.Logger
	// Out receives the "export MESHFED_..." lines after bootstrap; nil discards.
	Out io.Writer

	// dial, when set, makes every outgoing connection to another server
	// (Raft, forwarding, stats); tests use it to cut a server off.
	dial func(ctx context.Context, addr string) (net.Conn, error)

	// intermediateTTL is the lifetime of generated intermediates (default
	// ca.DefaultIntermediateTTL); CA settings will make it configurable.
	intermediateTTL time.Duration
	// peerHeartbeat is how often a peer session sends heartbeats (default
	// federation.DefaultHeartbeat); peerBackoff the first wait before a
	// dialer reconnects (default one second).
	peerHeartbeat, peerBackoff time.Duration
	// peerDial, when set, dials peer clusters (tests cut the link with it).
	peerDial func(ctx context.Context, addr string) (net.Conn, error)

	// ProxyHeartbeatInterval is how often meshfed-proxy sends a heartbeat
	// for its endpoint (default 2s); the proxy learns it when it registers.
	// ProxyHeartbeatTTL is how long the leader waits for one before it
	// marks the endpoint HEALTH_STATUS_UNKNOWN (default 6s); it must be
	// longer than the interval. When only one is set, the other follows
	// it (see proxyHeartbeats).
	ProxyHeartbeatInterval time.Duration
	ProxyHeartbeatTTL      time.Duration

	// Raft timing; zero values take defaults tuned for a LAN.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// CommitTimeout is how long the leader waits, with no new write, before
	// telling followers what is committed (default 10ms). A follower
	// applies a write, and its watchers see it, only once it learns that;
	// a longer value saves a few idle RPCs at the cost of that lag.
	CommitTimeout time.Duration
	// IdleMemoryRelease is how long the server must be idle before it
	// returns its free heap memory to the system (default 30s; negative
	// disables). See memrelease.go.
	IdleMemoryRelease time.Duration
	// DeadServerCleanup is how long a server must be unreachable before
	// autopilot removes it from the voters (default 1m; negative disables).
	DeadServerCleanup time.Duration
}

// Validate checks a Config before anything starts.
func (c *Config) Validate() error {
	if c.NodeID == "" {
		return errors.New("--node-id is required")
	}
	if err := checkDNSLabel(c.NodeID); err != nil {
		return fmt.Errorf("--node-id: %w", err)
	}
	if c.Cluster == "" {
		return errors.New("--cluster is required")
	}
	if c.TrustDomain == "" {
		c.TrustDomain = c.Cluster + ".mesh"
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("--trust-domain %q: %w", c.TrustDomain, err)
	}
	if c.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	for flag, addr := range map[string]string{"--api-addr": c.APIAddr, "--raft-addr": c.RaftAddr, "--http-addr": c.HTTPAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s %q: %w", flag, addr, err)
		}
	}
	if c.RaftAdvertiseAddr == "" {
		c.RaftAdvertiseAddr = c.RaftAddr
	}
	if c.APIAdvertiseAddr == "" {
		c.APIAdvertiseAddr = c.APIAddr
	}
	if c.Bootstrap && len(c.JoinAddrs) > 0 {
		return errors.New("--bootstrap and --join are mutually exclusive")
	}
	if c.ProxyHeartbeatInterval < 0 || c.ProxyHeartbeatTTL < 0 {
		return errors.New("proxy heartbeat interval and TTL must not be negative")
	}
	if c.ProxyHeartbeatInterval > 0 && c.ProxyHeartbeatTTL > 0 && c.ProxyHeartbeatTTL <= c.ProxyHeartbeatInterval {
		return fmt.Errorf("proxy heartbeat TTL %s must be longer than the interval %s", c.ProxyHeartbeatTTL, c.ProxyHeartbeatInterval)
	}
	return nil
}

// proxyHeartbeats returns the heartbeat interval and TTL of c, with the
// defaults for what is not set: an interval of 2s, or a third of a TTL
// below 6s; a TTL of 6s, or three intervals above 2s.
func (c *Config) proxyHeartbeats() (interval, ttl time.Duration) {
	interval, ttl = c.ProxyHeartbeatInterval, c.ProxyHeartbeatTTL
	switch {
	case interval == 0 && ttl == 0:
		return DefaultProxyHeartbeatInterval, DefaultProxyHeartbeatTTL
	case interval == 0:
		return min(DefaultProxyHeartbeatInterval, ttl/3), ttl
	case ttl == 0:
		return interval, max(DefaultProxyHeartbeatTTL, 3*interval)
	}
	return interval, ttl
}
