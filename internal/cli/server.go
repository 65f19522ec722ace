package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshfed/meshfed/controlplane"
)

// Defaults of "meshfed server --dev".
const (
	devCluster = "dev"
	devNodeID  = "dev"
	devHost    = "127.0.0.1"
)

// serverOptions are the flags of "meshfed server".
type serverOptions struct {
	dev, bootstrap              bool
	dataDir, nodeID             string
	cluster, trustDomain        string
	apiAddr, raftAddr, httpAddr string
	raftAdvertiseAddr           string
	apiAdvertiseAddr            string
	join                        []string
	joinToken, caFile           string
	logLevel, logFormat         string
}

func (a *app) serverCommand() *cobra.Command {
	var o serverOptions
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a control plane server",
		Long: `Run a meshfed control plane server until SIGINT or SIGTERM.

A cluster is 1, 3 or 5 servers replicating all state with Raft. The first
server starts the cluster with --bootstrap: it creates the cluster's CA and an
admin token and writes admin.token (0600), ca.pem (the cluster's trust bundle)
and env (export MESHFED_ADDR=... MESHFED_TOKEN=... MESHFED_CA_FILE=...) into
its data directory, and prints the env lines on standard output. Further
servers join with a token from "meshfed server join-token", the API address
of a running server and the cluster's ca.pem. After a restart a server
rejoins with its own certificate; --bootstrap and --join are then ignored.

--dev starts a one-server development cluster. Every other flag still
applies; what is not given defaults to: cluster "dev", node ID "dev", trust
domain "<cluster>.mesh", addresses 127.0.0.1:7700 (API), 127.0.0.1:7701
(Raft) and 127.0.0.1:7702 (HTTP), a temporary data directory removed at exit,
and --bootstrap (unless --join is given).

Addresses are host:port; a missing port takes the default (7700, 7701,
7702). They are advertised to the other servers, so they must be reachable
addresses, not 0.0.0.0.

Logs go to standard error.`,
		Example: `  # A development server
  meshfed server --dev

  # The first server of cluster "east"
  meshfed server --bootstrap --data-dir /var/lib/meshfed --node-id s1 --cluster east \
      --api-addr 10.0.0.1:7700 --raft-addr 10.0.0.1:7701 --http-addr 10.0.0.1:7702

  # Further servers
  T=$(meshfed server join-token)
  meshfed server --data-dir /var/lib/meshfed --node-id s2 --cluster east \
      --api-addr 10.0.0.2:7700 --raft-addr 10.0.0.2:7701 --http-addr 10.0.0.2:7702 \
      --join 10.0.0.1:7700 --join-token "$T" --ca-file ca.pem`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return unknownCommand(c, args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, tempDataDir, err := o.config()
			if err != nil {
				return err
			}
			logger, err := newLogger(a.stderr, o.logLevel, o.logFormat)
			if err != nil {
				return err
			}
			if tempDataDir {
				dir, err := os.MkdirTemp("", "meshfed-dev-")
				if err != nil {
					return fmt.Errorf("creating a temporary data directory: %w", err)
				}
				defer func() {
					if err := os.RemoveAll(dir); err != nil {
						logger.Warn("removing the temporary data directory", "dir", dir, "error", err)
					}
				}()
				cfg.DataDir = dir
			}
			cfg.Logger = logger
			cfg.Out = a.stdout
			ctx, cancel := a.signalContext(cmd.Context())
			defer cancel()
			logger.Info("starting meshfed server", "node_id", cfg.NodeID, "cluster", cfg.Cluster,
				"trust_domain", cfg.TrustDomain, "data_dir", cfg.DataDir, "api_addr", cfg.APIAddr,
				"raft_addr", cfg.RaftAddr, "http_addr", cfg.HTTPAddr, "dev", cfg.Dev)
			return a.runServer(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.dev, "dev", false, "run a one-server development cluster (see above for its defaults)")
	f.BoolVar(&o.bootstrap, "bootstrap", false, "start a new cluster with this server as its only voter")
	f.StringVar(&o.dataDir, "data-dir", "", "directory for the Raft log, snapshots and keys")
	f.StringVar(&o.nodeID, "node-id", "", "this server's name in the cluster (a DNS label)")
	f.StringVar(&o.cluster, "cluster", "", "cluster name (a DNS label)")
	f.StringVar(&o.trustDomain, "trust-domain", "", `SPIFFE trust domain (default "<cluster>.mesh")`)
	f.StringVar(&o.apiAddr, "api-addr", "", "host:port of the gRPC management API (TLS)")
	f.StringVar(&o.raftAddr, "raft-addr", "", "host:port of Raft traffic between servers (mutual TLS)")
	f.StringVar(&o.httpAddr, "http-addr", "", "host:port of /healthz, /readyz, /metrics and the SPIFFE bundle endpoint")
	f.StringVar(&o.apiAdvertiseAddr, "api-advertise-addr", "", "host:port other servers, clients and peer clusters dial for the API, when not --api-addr (NAT, load balancer)")
	f.StringVar(&o.raftAdvertiseAddr, "raft-advertise-addr", "", "host:port other servers dial for Raft, when not --raft-addr (NAT, proxy)")
	f.StringSliceVar(&o.join, "join", nil, "API address of a running server to join (repeatable or comma separated)")
	f.StringVar(&o.joinToken, "join-token", "", `server-join token (from "meshfed server join-token")`)
	f.StringVar(&o.caFile, "ca-file", "", "the cluster's CA bundle (ca.pem), to verify the servers of --join")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: trace, debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")

	cmd.AddCommand(a.joinTokenCommand())
	return cmd
}

// dnsLabel is the rule for node IDs and cluster names.
var dnsLabel = regexp.MustCompile(`^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)

// config turns the flags into a validated controlplane.Config (without
// Logger and Out). tempDataDir reports that --dev was given without
// --data-dir: the caller creates a temporary directory.
func (o *serverOptions) config() (cfg controlplane.Config, tempDataDir bool, err error) {
	cfg = controlplane.Config{
		NodeID:      o.nodeID,
		Cluster:     o.cluster,
		TrustDomain: o.trustDomain,
		DataDir:     o.dataDir,
		Bootstrap:   o.bootstrap,
		JoinToken:   o.joinToken,
		CAFile:      o.caFile,
		Dev:         o.dev,
	}
	addrs := []struct {
		flag  string
		value string
		port  int
		dest  *string
	}{
		{"--api-addr", o.apiAddr, controlplane.DefaultAPIPort, &cfg.APIAddr},
		{"--raft-addr", o.raftAddr, controlplane.DefaultRaftPort, &cfg.RaftAddr},
		{"--http-addr", o.httpAddr, controlplane.DefaultHTTPPort, &cfg.HTTPAddr},
	}
	if o.dev {
		if cfg.Cluster == "" {
			cfg.Cluster = devCluster
		}
		if cfg.NodeID == "" {
			cfg.NodeID = devNodeID
		}
		if cfg.DataDir == "" {
			tempDataDir = true
		}
		if len(o.join) == 0 {
			cfg.Bootstrap = true
		}
		for _, ad := range addrs {
			if ad.value == "" {
				*ad.dest = net.JoinHostPort(devHost, strconv.Itoa(ad.port))
			}
		}
	}
	for _, ad := range addrs {
		if *ad.dest != "" {
			continue
		}
		if ad.value == "" {
			return cfg, false, usageErrorf("%s is required (host:port, default port %d), or use --dev", ad.flag, ad.port)
		}
		if *ad.dest, err = normalizeAddr(ad.flag, ad.value, ad.port); err != nil {
			return cfg, false, err
		}
	}
	if o.raftAdvertiseAddr != "" {
		if cfg.RaftAdvertiseAddr, err = normalizeAddr("--raft-advertise-addr", o.raftAdvertiseAddr, controlplane.DefaultRaftPort); err != nil {
			return cfg, false, err
		}
	}
	if o.apiAdvertiseAddr != "" {
		if cfg.APIAdvertiseAddr, err = normalizeAddr("--api-advertise-addr", o.apiAdvertiseAddr, controlplane.DefaultAPIPort); err != nil {
			return cfg, false, err
		}
	}
	for _, j := range o.join {
		addr, err := normalizeAddr("--join", strings.TrimSpace(j), controlplane.DefaultAPIPort)
		if err != nil {
			return cfg, false, err
		}
		cfg.JoinAddrs = append(cfg.JoinAddrs, addr)
	}
	if cfg.JoinToken != "" && len(cfg.JoinAddrs) == 0 {
		return cfg, false, usageErrorf("--join-token needs --join (the API address of a running server)")
	}
	if cfg.NodeID != "" && !dnsLabel.MatchString(cfg.NodeID) {
		return cfg, false, usageErrorf("--node-id %q: must be a DNS label (lower case letters, digits and '-', starting with a letter, at most 63 characters)", cfg.NodeID)
	}
	if cfg.Cluster != "" && !dnsLabel.MatchString(cfg.Cluster) {
		return cfg, false, usageErrorf("--cluster %q: must be a DNS label (lower case letters, digits and '-', starting with a letter, at most 63 characters)", cfg.Cluster)
	}
	// Validate needs a data directory; the temporary one is made only once
	// everything else is known to be right.
	check := cfg
	if tempDataDir {
		check.DataDir = "(temporary)"
	}
	if err := check.Validate(); err != nil {
		return cfg, false, usageError{err}
	}
	check.DataDir = cfg.DataDir
	return check, tempDataDir, nil
}

// normalizeAddr checks a host:port flag and adds the default port when the
// value is only a host.
func normalizeAddr(flag, value string, defPort int) (string, error) {
	host, port, err := net.SplitHostPort(value)
	if err != nil {
		var ae *net.AddrError
		if !errors.As(err, &ae) || ae.Err != "missing port in address" {
			return "", usageErrorf("%s %q: %s", flag, value, addrErrText(err))
		}
		host, port = strings.TrimSuffix(strings.TrimPrefix(value, "["), "]"), strconv.Itoa(defPort)
	}
	if host == "" {
		return "", usageErrorf("%s %q: a host is required: the address is advertised to other servers", flag, value)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return "", usageErrorf("%s %q: %s is not reachable from other servers; give this server's address", flag, value, host)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", usageErrorf("%s %q: port must be a number between 1 and 65535", flag, value)
	}
	return net.JoinHostPort(host, port), nil
}

func addrErrText(err error) string {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return ae.Err
	}
	return err.Error()
}

// newLogger builds the server's slog logger writing to w.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "trace":
		lv = slog.LevelDebug - 4
	case "debug":
		lv = slog.LevelDebug
	case "info", "":
		lv = slog.LevelInfo
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		return nil, usageErrorf("--log-level %q: must be trace, debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, usageErrorf("--log-format %q: must be text or json", format)
	}
}
