package controlplane

import (
	"context"
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/fsm"
)

func (a *apiServer) GetClusterStatus(context.Context, *meshfedv1.GetClusterStatusRequest) (*meshfedv1.ClusterStatus, error) {
	s := a.s
	stats := s.raft.Stats()
	leaderAddr, leaderID := s.raft.LeaderWithID()
	st := &meshfedv1.ClusterStatus{
		Cluster:      s.cfg.Cluster,
		TrustDomain:  s.cfg.TrustDomain,
		NodeId:       s.cfg.NodeID,
		RaftState:    s.raft.State().String(),
		LeaderId:     string(leaderID),
		Term:         s.raft.CurrentTerm(),
		LastIndex:    s.raft.LastIndex(),
		CommitIndex:  s.raft.CommitIndex(),
		AppliedIndex: s.raft.AppliedIndex(),
		Version:      Version,
	}
	if n, err := strconv.Atoi(stats["num_peers"]); err == nil {
		st.Voters = uint32(n + 1)
	}
	if leaderAddr != "" {
		if _, rec, err := s.store().Get(nil, meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, "", string(leaderID)); err == nil && rec != nil {
			st.LeaderApiAddr = rec.(*meshfedv1.ServerRecord).ApiAddr
		}
	}
	if ap := s.autopilotState(); ap != nil {
		st.Healthy = ap.Healthy
		st.FailureTolerance = uint32(ap.FailureTolerance)
	} else {
		st.Healthy = leaderAddr != ""
	}
	return st, nil
}

// ListMembers answers from the leader, which alone knows every server's
// health; a follower forwards, and falls back to its own view when the
// leader cannot be reached.
func (a *apiServer) ListMembers(ctx context.Context, req *meshfedv1.ListMembersRequest) (*meshfedv1.ListMembersResponse, error) {
	s := a.s
	if !s.isLeader() && !isForwarded(ctx) {
		fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := s.fwd.forwardUnary(fctx, meshfedv1.ClusterService_ListMembers_FullMethodName, req)
		cancel()
		if err == nil {
			return resp.(*meshfedv1.ListMembersResponse), nil
		}
	}
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, toStatus(err)
	}
	_, leaderID := s.raft.LeaderWithID()
	ap := s.autopilotState()
	var out []*meshfedv1.Member
	for _, srv := range f.Configuration().Servers {
		m := &meshfedv1.Member{
			NodeId:   string(srv.ID),
			RaftAddr: string(srv.Address),
			Voter:    srv.Suffrage == raft.Voter,
			Leader:   srv.ID == leaderID,
			Status:   "alive",
		}
		if _, rec, err := s.store().Get(nil, meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, "", string(srv.ID)); err == nil && rec != nil {
			r := rec.(*meshfedv1.ServerRecord)
			m.ApiAddr, m.HttpAddr = r.ApiAddr, r.HttpAddr
		}
		if ap != nil {
			if ss, ok := ap.Servers[srv.ID]; ok {
				m.Healthy = ss.Health.Healthy
				m.LastContact = durationpb.New(ss.Stats.LastContact)
				m.LastIndex = ss.Stats.LastIndex
				m.LastTerm = ss.Stats.LastTerm
				m.Status = string(ss.Server.NodeStatus)
				if !ss.Health.Healthy && !ss.Health.StableSince.IsZero() {
					m.FailedSince = timestamppb.New(ss.Health.StableSince)
				}
			}
		} else if srv.ID == raft.ServerID(s.cfg.NodeID) {
			m.LastIndex = s.raft.LastIndex()
			m.Healthy = leaderID != ""
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NodeId < out[j].NodeId })
	return &meshfedv1.ListMembersResponse{Members: out}, nil
}

func (a *apiServer) RemoveMember(ctx context.Context, req *meshfedv1.RemoveMemberRequest) (*meshfedv1.RemoveMemberResponse, error) {
	s := a.s
	if err := checkDNSLabel(req.GetNodeId()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "invalid node_id: %v", err)
	}
	if req.GetNodeId() == s.cfg.NodeID {
		return nil, status.Error(codes.FailedPrecondition, "the leader cannot remove itself; stop it and remove it from another server")
	}
	if err := s.raft.RemoveServer(raft.ServerID(req.GetNodeId()), 0, applyTimeout).Error(); err != nil {
		return nil, toStatus(err)
	}
	if _, err := s.applyWrite(ctx, fsm.DeleteResourceType, &meshfedv1.ResourceWrite{
		Kind: meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, Name: req.GetNodeId(),
	}); err != nil && status.Code(toStatus(err)) != codes.NotFound {
		return nil, toStatus(err)
	}
	return &meshfedv1.RemoveMemberResponse{}, nil
}

func (a *apiServer) ServerStats(_ context.Context, req *meshfedv1.ServerStatsRequest) (*meshfedv1.ServerStatsResponse, error) {
	s := a.s
	resp := &meshfedv1.ServerStatsResponse{NodeId: s.cfg.NodeID, LastIndex: s.raft.LastIndex()}
	resp.BundleWatchers, resp.BundleWatchersCurrent, resp.SvidsByAuthority = s.watchers.stats(req.GetBundleSequence())
	resp.CertificateAuthorityId = s.ownCertAuthority()
	if t, err := strconv.ParseUint(s.raft.Stats()["last_log_term"], 10, 64); err == nil {
		resp.LastTerm = t
	}
	if !s.isLeader() {
		if lc := s.raft.LastContact(); !lc.IsZero() {
			resp.LastContact = durationpb.New(time.Since(lc))
		}
	}
	return resp, nil
}

func (a *apiServer) Join(ctx context.Context, req *meshfedv1.JoinRequest) (*meshfedv1.JoinResponse, error) {
	return a.s.Join(ctx, req)
}
