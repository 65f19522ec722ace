package controlplane

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/ca"
	"github.com/meshfed/meshfed/controlplane/fsm"
	"github.com/meshfed/meshfed/internal/client"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// joinWithToken is the first start of a server that joins an existing
// cluster: it sends a CSR with its server-join token, and gets back its
// certificate and the cluster's bundle. The private key never leaves.
func (s *Server) joinWithToken(ctx context.Context) error {
	if s.cfg.JoinToken == "" {
		return errors.New("--join needs --join-token (a server-join token from `meshfed server join-token`)")
	}
	if s.cfg.CAFile == "" {
		return errors.New("--join needs --ca-file (the cluster's ca.pem)")
	}
	sid, err := mfid.Server(s.td, s.cfg.NodeID)
	if err != nil {
		return err
	}
	dns, ips := s.id.sans()
	csr, key, err := ca.NewServerCSR(sid, dns, ips)
	if err != nil {
		return err
	}
	req := s.joinRequest(csr)
	deadline := time.Now().Add(time.Minute)
	backoff := 200 * time.Millisecond
	for {
		var lastErr error
		for _, addr := range s.cfg.JoinAddrs {
			resp, err := s.callJoin(ctx, client.Config{Addr: addr, Token: s.cfg.JoinToken, CAFile: s.cfg.CAFile}, req)
			if err == nil {
				return s.acceptJoin(resp, key)
			}
			lastErr = fmt.Errorf("joining via %s: %w", addr, err)
			switch status.Code(err) {
			case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument, codes.FailedPrecondition, codes.AlreadyExists, codes.Unimplemented:
				return lastErr
			}
			s.log.Warn("join attempt failed", "addr", addr, "error", err)
		}
		if time.Now().After(deadline) {
			return lastErr
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (s *Server) joinRequest(csr []byte) *meshfedv1.JoinRequest {
	return &meshfedv1.JoinRequest{
		NodeId: s.cfg.NodeID, ApiAddr: s.cfg.APIAdvertiseAddr, RaftAddr: s.cfg.RaftAdvertiseAddr, HttpAddr: s.cfg.HTTPAddr, Csr: csr,
		Cluster: s.cfg.Cluster, TrustDomain: s.cfg.TrustDomain,
	}
}

func (s *Server) callJoin(ctx context.Context, cfg client.Config, req *meshfedv1.JoinRequest) (*meshfedv1.JoinResponse, error) {
	c, err := client.New(cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return c.Cluster.Join(cctx, req)
}

func (s *Server) acceptJoin(resp *meshfedv1.JoinResponse, key crypto.Signer) error {
	if resp.GetCluster() != s.cfg.Cluster || resp.GetTrustDomain() != s.cfg.TrustDomain {
		return fmt.Errorf("the cluster at --join is %q (trust domain %q), not %q (%q): check --cluster and --trust-domain",
			resp.GetCluster(), resp.GetTrustDomain(), s.cfg.Cluster, s.cfg.TrustDomain)
	}
	chain, err := tlsutil.ParseCertificatesPEM([]byte(resp.GetCertificateChainPem()))
	if err != nil {
		return fmt.Errorf("join response: %w", err)
	}
	roots, err := tlsutil.ParseCertificatesPEM([]byte(resp.GetBundlePem()))
	if err != nil {
		return fmt.Errorf("join response bundle: %w", err)
	}
	if err := s.id.install(chain, key, roots, true); err != nil {
		return err
	}
	s.log.Info("joined cluster", "cluster", resp.GetCluster())
	return nil
}

// ensureMembership rejoins with this server's own certificate when it finds
// itself without a leader for a while, e.g. after autopilot removed it while
// it was down, or when its registered addresses are out of date.
func (s *Server) ensureMembership(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	var leaderless time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.rememberPeers()
		if s.isLeader() {
			leaderless = time.Time{}
			continue
		}
		addr, _ := s.raft.LeaderWithID()
		if addr != "" && s.ownRecordCurrent() {
			leaderless = time.Time{}
			continue
		}
		if addr == "" {
			if leaderless.IsZero() {
				leaderless = time.Now()
			}
			if time.Since(leaderless) < 6*time.Second {
				continue
			}
		}
		s.rejoinWithCertificate(ctx)
	}
}

func (s *Server) ownRecordCurrent() bool {
	_, cur, err := s.store().Get(nil, meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, "", s.cfg.NodeID)
	if err != nil {
		return false
	}
	c, ok := cur.(*meshfedv1.ServerRecord)
	return ok && c.ApiAddr == s.cfg.APIAdvertiseAddr && c.RaftAddr == s.cfg.RaftAdvertiseAddr && c.HttpAddr == s.cfg.HTTPAddr
}

func (s *Server) rejoinWithCertificate(ctx context.Context) {
	targets := append([]string{}, s.cfg.JoinAddrs...)
	targets = append(targets, s.knownPeers()...)
	req := s.joinRequest(nil)
	for _, addr := range targets {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := s.fwd.clusterClient(addr).Join(cctx, req)
		cancel()
		if err == nil {
			s.log.Info("rejoined cluster with server certificate", "via", addr)
			return
		}
		s.log.Debug("rejoin attempt failed", "addr", addr, "error", err)
	}
}

// Join implements ClusterService.Join on the leader (followers forward it).
func (s *Server) Join(ctx context.Context, req *meshfedv1.JoinRequest) (*meshfedv1.JoinResponse, error) {
	if err := validateJoin(req); err != nil {
		return nil, toStatus(err)
	}
	if req.Cluster != "" && (req.Cluster != s.cfg.Cluster || req.TrustDomain != s.cfg.TrustDomain) {
		return nil, status.Errorf(codes.FailedPrecondition, "this is cluster %q (trust domain %q), not %q (%q): check --cluster and --trust-domain",
			s.cfg.Cluster, s.cfg.TrustDomain, req.Cluster, req.TrustDomain)
	}
	caller := callerFrom(ctx)
	var chainPEM string
	// A token wins over the connection's certificate: a join forwarded by a
	// follower arrives with the follower's certificate and the joiner's token.
	switch {
	case caller.token != nil:
		if len(req.Csr) == 0 {
			return nil, status.Error(codes.InvalidArgument, "invalid csr: required when joining with a token")
		}
		if err := s.useToken(ctx, caller.token); err != nil {
			return nil, toStatus(err)
		}
	case caller.serverID != "":
		if caller.serverID != req.NodeId {
			return nil, status.Errorf(codes.PermissionDenied, "server %q cannot join as %q", caller.serverID, req.NodeId)
		}
	default:
		return nil, status.Error(codes.Unauthenticated, "join needs a server-join token or a server certificate")
	}
	if len(req.Csr) > 0 {
		sid, err := mfid.Server(s.td, req.NodeId)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid node_id: %v", err)
		}
		var ips []net.IP
		var dns []string
		for _, a := range []string{req.ApiAddr, req.HttpAddr, req.RaftAddr} {
			if h, _, err := net.SplitHostPort(a); err == nil {
				if ip := net.ParseIP(h); ip != nil {
					ips = append(ips, ip)
				} else if h != "" {
					dns = append(dns, h)
				}
			}
		}
		dns = append(dns, "localhost")
		chain, err := s.ca.Sign(ca.SignParams{CSR: req.Csr, ID: sid, DNSNames: dns, IPs: ips, TTL: ca.DefaultServerCertTTL})
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid csr: %v", err)
		}
		chainPEM = string(tlsutil.EncodeCertificatesPEM(chain))
	}
	s.joinMu.Lock()
	s.joinedNodes[req.NodeId] = time.Now()
	s.joinMu.Unlock()
	if err := s.ensureServerRecord(ctx, req.NodeId, req.ApiAddr, req.RaftAddr, req.HttpAddr); err != nil {
		return nil, toStatus(err)
	}
	s.goRun(s.ctx, func(ctx context.Context) { s.addVoter(ctx, req.NodeId, req.RaftAddr) })
	s.log.Info("server joining", "server", req.NodeId, "raft", req.RaftAddr, "by_certificate", caller.serverID != "")
	return &meshfedv1.JoinResponse{
		Cluster:             s.cfg.Cluster,
		TrustDomain:         s.cfg.TrustDomain,
		CertificateChainPem: chainPEM,
		BundlePem:           string(tlsutil.EncodeCertificatesPEM(s.tls.Roots())),
	}, nil
}

// addVoter adds a joining server to the Raft configuration, replacing an
// older entry of the same node ID with another address. The new server
// starts Raft only after Join returns, so this runs in the background.
func (s *Server) addVoter(ctx context.Context, node, addr string) {
	deadline := time.Now().Add(joinGrace)
	for time.Now().Before(deadline) && s.isLeader() {
		f := s.raft.GetConfiguration()
		if err := f.Error(); err == nil {
			for _, srv := range f.Configuration().Servers {
				if srv.ID == raft.ServerID(node) && srv.Address == raft.ServerAddress(addr) && srv.Suffrage == raft.Voter {
					return
				}
				if srv.ID == raft.ServerID(node) {
					_ = s.raft.RemoveServer(srv.ID, 0, 10*time.Second).Error()
				}
			}
			err := s.raft.AddVoter(raft.ServerID(node), raft.ServerAddress(addr), 0, 30*time.Second).Error()
			if err == nil {
				s.log.Info("added voter", "server", node, "raft", addr)
				return
			}
			s.log.Warn("adding voter", "server", node, "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// useToken spends one use of a limited token (compare-and-swap on its
// version, so concurrent joins cannot both spend the last use).
func (s *Server) useToken(ctx context.Context, tok *meshfedv1.Token) error {
	for range 5 {
		_, cur, err := s.store().Get(nil, meshfedv1.ResourceKind_RESOURCE_KIND_TOKEN, "", tok.GetMeta().GetName())
		if err != nil {
			return err
		}
		t, ok := cur.(*meshfedv1.Token)
		if !ok {
			return status.Error(codes.Unauthenticated, "token was revoked")
		}
		if t.MaxUses > 0 && t.Uses >= t.MaxUses {
			return status.Error(codes.PermissionDenied, "token has no uses left")
		}
		next := proto.Clone(t).(*meshfedv1.Token)
		next.Uses++
		payload, err := proto.Marshal(next)
		if err != nil {
			return err
		}
		_, err = s.applyWrite(ctx, fsm.UpsertResourceType, &meshfedv1.ResourceWrite{
			Kind: meshfedv1.ResourceKind_RESOURCE_KIND_TOKEN, Payload: payload, Name: t.GetMeta().GetName(),
			ExpectedVersion: t.GetMeta().GetVersion(),
		})
		if err == nil {
			return nil
		}
		if !isVersionMismatch(err) {
			return err
		}
	}
	return status.Error(codes.Aborted, "token is being used concurrently; retry")
}

func validateJoin(req *meshfedv1.JoinRequest) error {
	if err := checkDNSLabel(req.NodeId); err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid node_id: %v", err)
	}
	for field, a := range map[string]string{"api_addr": req.ApiAddr, "raft_addr": req.RaftAddr, "http_addr": req.HttpAddr} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return status.Errorf(codes.InvalidArgument, "invalid %s: %v", field, err)
		}
	}
	return nil
}

// checkDNSLabel accepts what a node ID may be: a DNS label.
func checkDNSLabel(v string) error {
	if v == "" || len(v) > 63 {
		return errors.New("must be 1-63 characters")
	}
	for i, c := range v {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(v)-1
		if !ok {
			return fmt.Errorf("must be a DNS label (lower case letters, digits, '-'), got %q", v)
		}
	}
	return nil
}

// filePeers lists the API addresses of the other servers, so a restarted
// server can find the cluster before its state is replayed.
const filePeers = "peers.json"

// rememberPeers writes the other servers' API addresses to the data dir
// when they changed.
func (s *Server) rememberPeers() {
	_, items, _, err := s.store().List(nil, listAll(meshfedv1.ResourceKind_RESOURCE_KIND_SERVER))
	if err != nil || len(items) == 0 {
		return
	}
	var addrs []string
	for _, it := range items {
		rec := it.(*meshfedv1.ServerRecord)
		if rec.GetMeta().GetName() != s.cfg.NodeID {
			addrs = append(addrs, rec.ApiAddr)
		}
	}
	data, err := json.Marshal(addrs)
	if err != nil {
		return
	}
	if old, err := os.ReadFile(s.path(filePeers)); err == nil && bytes.Equal(old, data) {
		return
	}
	if err := writeFileAtomic(s.path(filePeers), data, 0o600); err != nil {
		s.log.Warn("remembering peers", "error", err)
	}
}

// knownPeers returns the addresses rememberPeers wrote, plus those in the
// local state.
func (s *Server) knownPeers() []string {
	var addrs []string
	if data, err := os.ReadFile(s.path(filePeers)); err == nil {
		_ = json.Unmarshal(data, &addrs)
	}
	_, items, _, err := s.store().List(nil, listAll(meshfedv1.ResourceKind_RESOURCE_KIND_SERVER))
	if err == nil {
		for _, it := range items {
			rec := it.(*meshfedv1.ServerRecord)
			if rec.GetMeta().GetName() != s.cfg.NodeID && !slices.Contains(addrs, rec.ApiAddr) {
				addrs = append(addrs, rec.ApiAddr)
			}
		}
	}
	return addrs
}
