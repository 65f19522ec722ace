package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"
	wal "github.com/hashicorp/raft-wal"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/meshfed/meshfed/ca"
	"github.com/meshfed/meshfed/controlplane/fsm"
	"github.com/meshfed/meshfed/controlplane/state"
	"github.com/meshfed/meshfed/internal/logging"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// Version is reported by status calls and in logs.
var Version = "0.1.0-dev"

// Server is one meshfed control plane server.
type Server struct {
	cfg Config
	log *slog.Logger
	td  spiffeid.TrustDomain

	fsm    *fsm.FSM
	raft   *raft.Raft
	wal    *wal.WAL
	trans  *raft.NetworkTransport
	stream *tlsStreamLayer
	// startIndex is the last index of this server's own Raft log when it
	// started: until it has applied that far, its state is behind what it
	// held before a restart (see catchingUp).
	startIndex uint64

	tls *tlsutil.Source
	ca  *ca.CA
	id  *serverIdentity

	grpc    *grpc.Server
	http    *http.Server
	metrics *apiMetrics

	fwd       *forwarder
	autopilot *autopilot.Autopilot

	// joinedNodes remembers when a server joined so that the membership
	// reconciler does not remove a record whose voter is still being added.
	joinMu      sync.Mutex
	joinedNodes map[string]time.Time

	// identities caches identity registrations by SPIFFE ID for issuance.
	identities identityIndex
	// watchers are the bundle watchers connected to this server.
	watchers *bundleWatchers
	// links are the peer sessions this server runs.
	links *peerLinks
	// renewChecks caches which authority a renewing client's SVID chains to.
	renewChecks svidCheckCache
	// liveness is when each proxy last reported, while this server leads.
	liveness proxyLiveness
	// topo is who calls whom, from the proxies' heartbeats, while this
	// server leads.
	topo topology

	// ctx lives as long as the server runs.
	ctx context.Context
	wg  sync.WaitGroup
}

// New checks the configuration and prepares a server; Run starts it.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust domain: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DeadServerCleanup == 0 {
		cfg.DeadServerCleanup = time.Minute
	}
	cfg.ProxyHeartbeatInterval, cfg.ProxyHeartbeatTTL = cfg.proxyHeartbeats()
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	cfg.DataDir = abs
	return &Server{
		cfg:         cfg,
		log:         cfg.Logger.With("node", cfg.NodeID),
		td:          td,
		joinedNodes: map[string]time.Time{},
		watchers:    newBundleWatchers(),
		links:       newPeerLinks(),
	}, nil
}

// Run starts the server and blocks until ctx is cancelled, then shuts down.
// It returns an error if the server could not start.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := s.start(ctx); err != nil {
		cancel()
		s.shutdown()
		return err
	}
	<-ctx.Done()
	s.log.Info("shutting down")
	s.shutdown()
	return nil
}

func (s *Server) path(name string) string { return filepath.Join(s.cfg.DataDir, name) }

func (s *Server) start(ctx context.Context) error {
	s.ctx = ctx
	if err := os.MkdirAll(s.path("raft/wal"), 0o700); err != nil {
		return fmt.Errorf("creating data dir: %w", err)
	}
	if err := os.MkdirAll(s.path("raft/snapshots"), 0o700); err != nil {
		return fmt.Errorf("creating data dir: %w", err)
	}
	_ = os.Chmod(s.cfg.DataDir, 0o700)

	var err error
	s.fsm, err = fsm.New(fsm.Config{Logger: s.log.With("component", "fsm")})
	if err != nil {
		return err
	}
	s.ca, err = ca.New(ca.Config{TrustDomain: s.td, Logger: s.log.With("component", "ca")})
	if err != nil {
		return err
	}
	s.wal, err = wal.Open(s.path("raft/wal"), wal.WithLogger(logging.HCLog(s.log, "raft-wal")))
	if err != nil {
		return fmt.Errorf("opening raft log: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(s.path("raft/snapshots"), 2, logging.HCLog(s.log, "raft-snapshot"))
	if err != nil {
		return fmt.Errorf("opening snapshot store: %w", err)
	}
	existing, err := raft.HasExistingState(s.wal, s.wal, snaps)
	if err != nil {
		return fmt.Errorf("reading raft state: %w", err)
	}

	s.metrics = newAPIMetrics()
	s.metrics.registerWatchers(s.watchers)
	s.tls = tlsutil.NewSource(nil)
	s.id = newServerIdentity(s)
	s.fwd = newForwarder(s)

	// The server's certificate must exist before Raft or the API listen:
	// both ports accept TLS only.
	bootstrapping := false
	switch {
	case existing:
		if err := s.id.load(); err != nil {
			return fmt.Errorf("this data dir has raft state but no usable server certificate: %w", err)
		}
	case s.cfg.Bootstrap:
		if err := s.prepareBootstrap(); err != nil {
			return err
		}
		bootstrapping = true
	case len(s.cfg.JoinAddrs) > 0:
		if err := s.joinWithToken(ctx); err != nil {
			return err
		}
	default:
		return errors.New("no existing state in --data-dir: start with --bootstrap for a new cluster or --join to join one")
	}

	if err := s.startRaft(snaps, bootstrapping); err != nil {
		return err
	}
	if existing && s.id.certificateExpired() {
		s.log.Warn("server certificate expired while the server was down; re-issuing it from the local raft state")
		if err := s.recoverIdentity(s.wal); err != nil {
			s.log.Error("re-issuing server certificate", "error", err)
		}
	}
	if err := s.startAPI(); err != nil {
		return err
	}
	if err := s.startHTTP(); err != nil {
		return err
	}

	s.goRun(ctx, s.leaderLoop)
	s.goRun(ctx, s.id.maintain)
	s.goRun(ctx, s.followPeerBundles)
	s.goRun(ctx, s.ensureMembership)
	s.goRun(ctx, s.releaseIdleMemory)
	s.log.Info("server started", "cluster", s.cfg.Cluster, "trust_domain", s.cfg.TrustDomain,
		"api", s.cfg.APIAddr, "raft", s.cfg.RaftAddr, "http", s.cfg.HTTPAddr, "version", Version, "dev", s.cfg.Dev)
	return nil
}

func (s *Server) goRun(ctx context.Context, f func(context.Context)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f(ctx)
	}()
}

// defaultCommitTimeout bounds how long a follower lags the leader's commits
// when writes are sparse (to between 10 and 20ms).
const defaultCommitTimeout = 10 * time.Millisecond

func (s *Server) startRaft(snaps raft.SnapshotStore, bootstrap bool) error {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(s.cfg.NodeID)
	rc.Logger = logging.HCLog(s.log, "raft")
	rc.HeartbeatTimeout = orDefault(s.cfg.HeartbeatTimeout, 500*time.Millisecond)
	rc.ElectionTimeout = orDefault(s.cfg.ElectionTimeout, 500*time.Millisecond)
	rc.LeaderLeaseTimeout = orDefault(s.cfg.LeaderLeaseTimeout, 250*time.Millisecond)
	// Followers learn the commit index from the next AppendEntries; with
	// Raft's default (50ms, randomised up to 100ms) a watch on a follower
	// would see each lone write up to 100ms after the leader.
	rc.CommitTimeout = orDefault(s.cfg.CommitTimeout, defaultCommitTimeout)
	// Batching is what makes small writes cheap: many commands share one
	// fsync on every server and one memdb transaction in the FSM.
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 512
	rc.SnapshotThreshold = 16384
	rc.TrailingLogs = 10240

	var err error
	s.stream, err = newTLSStreamLayer(s.cfg.RaftAddr, s.cfg.RaftAdvertiseAddr, tlsutil.PeerMTLSServer(s.tls, s.td), tlsutil.PeerMTLSClient(s.tls, s.td), s.dial)
	if err != nil {
		return err
	}
	s.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  s.stream,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  logging.HCLog(s.log, "raft-net"),
	})
	// The leader sends each new entry to every follower right after
	// writing it; caching recent entries saves reading them back from disk.
	logs, err := raft.NewLogCache(raftLogCacheSize, s.wal)
	if err != nil {
		return err
	}
	s.raft, err = raft.NewRaft(rc, s.fsm, logs, s.wal, snaps, s.trans)
	if err != nil {
		return fmt.Errorf("starting raft: %w", err)
	}
	s.startIndex = s.raft.LastIndex()
	if bootstrap {
		f := s.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: raft.ServerID(s.cfg.NodeID), Address: raft.ServerAddress(s.cfg.RaftAdvertiseAddr),
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("bootstrapping raft: %w", err)
		}
	}
	return nil
}

// raftLogCacheSize is how many recent log entries stay in memory.
const raftLogCacheSize = 1024

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (s *Server) shutdown() {
	if s.grpc != nil {
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			s.grpc.Stop()
		}
	}
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_ = s.http.Shutdown(ctx)
		cancel()
	}
	// Raft stops before waiting for the background loops: a loop blocked in
	// a Raft call (a barrier without quorum) returns as soon as Raft is down.
	if s.raft != nil {
		if err := s.raft.Shutdown().Error(); err != nil {
			s.log.Warn("raft shutdown", "error", err)
		}
	}
	s.wg.Wait()
	if s.fwd != nil {
		s.fwd.close()
	}
	if s.trans != nil {
		_ = s.trans.Close()
	}
	if s.wal != nil {
		_ = s.wal.Close()
	}
}

// store returns the current state store. It changes on restore, so callers
// fetch it per request rather than keeping it.
func (s *Server) store() *state.Store { return s.fsm.State() }

// isLeader reports whether this server is the Raft leader.
func (s *Server) isLeader() bool { return s.raft.State() == raft.Leader }

// dial opens a TCP connection to another server.
func (s *Server) dial(ctx context.Context, addr string) (net.Conn, error) {
	if s.cfg.dial != nil {
		return s.cfg.dial(ctx, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}
