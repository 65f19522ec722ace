package controlplane

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/ca"
	"github.com/meshfed/meshfed/controlplane/fsm"
	"github.com/meshfed/meshfed/controlplane/state"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// leaderLoop runs the leader's housekeeping while this server leads.
func (s *Server) leaderLoop(ctx context.Context) {
	var stop context.CancelFunc
	done := make(chan struct{})
	close(done)
	check := time.NewTicker(time.Second)
	defer check.Stop()
	for {
		leading := s.isLeader()
		switch {
		case leading && stop == nil:
			lctx, cancel := context.WithCancel(ctx)
			stop = cancel
			done = make(chan struct{})
			go func(done chan struct{}) {
				defer close(done)
				s.lead(lctx)
			}(done)
		case !leading && stop != nil:
			stop()
			<-done
			stop = nil
		}
		select {
		case <-ctx.Done():
			if stop != nil {
				stop()
				<-done
			}
			return
		case <-s.raft.LeaderCh():
		case <-check.C:
		}
	}
}

// lead establishes leadership and then reconciles membership until ctx ends.
func (s *Server) lead(ctx context.Context) {
	s.log.Info("acquired leadership")
	s.topo.reset(time.Now())
	defer s.log.Info("leadership lost or stepping down")
	// The barrier makes the FSM current before we read it to decide anything.
	for {
		if err := s.raft.Barrier(5 * time.Second).Error(); err == nil {
			break
		} else if ctx.Err() != nil {
			return
		} else {
			s.log.Warn("leader barrier failed", "error", err)
		}
	}
	// Heartbeats reach the leader only: start counting them from now.
	livenessDone := make(chan struct{})
	go func() {
		defer close(livenessDone)
		s.watchProxyLiveness(ctx)
	}()
	defer func() { <-livenessDone }()
	if err := s.applyBootstrap(ctx); err != nil {
		s.log.Error("applying bootstrap records", "error", err)
	}
	if err := s.ensureServerRecord(ctx, s.cfg.NodeID, s.cfg.APIAdvertiseAddr, s.cfg.RaftAdvertiseAddr, s.cfg.HTTPAddr); err != nil {
		s.log.Error("registering leader", "error", err)
	}
	s.startAutopilot(ctx)
	defer s.stopAutopilot()
	linksDone := make(chan struct{})
	go func() {
		defer close(linksDone)
		s.runPeerLinks(ctx)
	}()
	defer func() { <-linksDone }()

	for {
		ws := memdb.NewWatchSet()
		st := s.store()
		ws.Add(st.AbandonCh())
		_, records, _, err := st.List(ws, listAll(meshfedv1.ResourceKind_RESOURCE_KIND_SERVER))
		if err == nil {
			s.reconcileMembers(ctx, records)
		}
		s.renewIntermediates(ctx)
		// A restore may bring records of other addresses; keep ours true.
		if err := s.ensureServerRecord(ctx, s.cfg.NodeID, s.cfg.APIAdvertiseAddr, s.cfg.RaftAdvertiseAddr, s.cfg.HTTPAddr); err != nil {
			s.log.Warn("registering leader", "error", err)
		}
		wctx, cancel := context.WithTimeout(ctx, s.nextLeaderCheck())
		_ = ws.WatchCtx(wctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
	}
}

// applyBootstrap writes the pending bootstrap records through Raft.
func (s *Server) applyBootstrap(ctx context.Context) error {
	recs, err := s.readBootstrapRecords()
	if err != nil || recs == nil {
		return err
	}
	for _, r := range recs {
		msg, err := state.NewMessage(r.Kind)
		if err != nil {
			return err
		}
		if err := proto.Unmarshal(r.Payload, msg); err != nil {
			return err
		}
		m := msg.GetMeta()
		_, err = s.applyWrite(ctx, fsm.UpsertResourceType, &meshfedv1.ResourceWrite{
			Kind: r.Kind, Payload: r.Payload, Namespace: m.GetNamespace(), Name: m.GetName(), MustNotExist: true,
		})
		if err != nil && !errors.Is(err, state.ErrAlreadyExists) {
			return err
		}
	}
	if err := os.Remove(s.path(fileBootstrap)); err != nil {
		return err
	}
	s.log.Info("cluster bootstrapped", "cluster", s.cfg.Cluster, "trust_domain", s.cfg.TrustDomain)
	s.printEnv()
	return nil
}

// ensureServerRecord registers a server's addresses unless they are current.
func (s *Server) ensureServerRecord(ctx context.Context, node, api, raftAddr, httpAddr string) error {
	want := &meshfedv1.ServerRecord{Meta: &meshfedv1.Meta{Name: node}, ApiAddr: api, RaftAddr: raftAddr, HttpAddr: httpAddr}
	_, cur, err := s.store().Get(nil, meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, "", node)
	if err != nil {
		return err
	}
	if c, ok := cur.(*meshfedv1.ServerRecord); ok && c.ApiAddr == api && c.RaftAddr == raftAddr && c.HttpAddr == httpAddr {
		return nil
	}
	payload, err := proto.Marshal(want)
	if err != nil {
		return err
	}
	_, err = s.applyWrite(ctx, fsm.UpsertResourceType, &meshfedv1.ResourceWrite{
		Kind: meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, Payload: payload, Name: node,
	})
	return err
}

// joinGrace is how long a joined server's record is kept while its voter is
// being added, before the reconciler treats the record as stale.
const joinGrace = 2 * time.Minute

// reconcileMembers deletes server records of servers that are no longer in
// the Raft configuration (removed by autopilot or an operator).
func (s *Server) reconcileMembers(ctx context.Context, records []state.Resource) {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	inRaft := map[raft.ServerID]bool{}
	for _, srv := range f.Configuration().Servers {
		inRaft[srv.ID] = true
	}
	for _, r := range records {
		rec := r.(*meshfedv1.ServerRecord)
		node := rec.GetMeta().GetName()
		if inRaft[raft.ServerID(node)] || s.recentlyJoined(node) {
			continue
		}
		s.log.Info("removing record of server no longer in the raft configuration", "server", node)
		_, err := s.applyWrite(ctx, fsm.DeleteResourceType, &meshfedv1.ResourceWrite{
			Kind: meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, Name: node, ExpectedVersion: rec.GetMeta().GetVersion(),
		})
		if err != nil && !errors.Is(err, state.ErrVersionMismatch) && !errors.Is(err, state.ErrNotFound) {
			s.log.Warn("removing server record", "server", node, "error", err)
		}
	}
}

func (s *Server) recentlyJoined(node string) bool {
	s.joinMu.Lock()
	defer s.joinMu.Unlock()
	t, ok := s.joinedNodes[node]
	return ok && time.Since(t) < joinGrace
}

func listAll(kind meshfedv1.ResourceKind) state.ListParams {
	return state.ListParams{Kind: kind}
}

// renewIntermediates replaces the intermediate of the active authority at
// half life, under the same root. Every server signs with the replicated
// intermediate, so the swap reaches all of them through Raft; certificates
// of the old intermediate stay valid because the root does not change.
func (s *Server) renewIntermediates(ctx context.Context) {
	_, items, _, err := s.store().List(nil, listAll(meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY))
	if err != nil {
		return
	}
	auths := make([]*meshfedv1.StoredAuthority, 0, len(items))
	for _, it := range items {
		auths = append(auths, it.(*meshfedv1.StoredAuthority))
	}
	rot, _ := ca.RotationOf(auths)
	for _, a := range auths {
		if a.GetAuthority().GetState() != meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE {
			continue
		}
		due, err := ca.IntermediateNeedsRenewal(a, time.Now())
		if err != nil || !due {
			continue
		}
		if len(a.GetRootKey()) == 0 {
			// An imported intermediate without its root's key cannot be
			// renewed here: the operator must import its successor.
			s.log.Warn("the active intermediate is past half its life and cannot be renewed here: import a new one (meshfed ca import) and rotate onto it",
				"authority", a.GetAuthority().GetId(), "not_after", a.GetAuthority().GetIntermediateNotAfter().AsTime())
			continue
		}
		next, err := ca.RenewIntermediate(a, s.td, s.intermediateTTL(), time.Now())
		if err != nil {
			s.log.Error("renewing intermediate", "authority", a.GetAuthority().GetId(), "error", err)
			continue
		}
		// In the middle of a rotation, leaves must keep verifying against
		// the retiring root: cross-sign the new intermediate again.
		if rot.Retiring != nil && len(rot.Retiring.GetRootKey()) > 0 {
			if err := ca.CrossSign(next, rot.Retiring, time.Now()); err != nil {
				s.log.Error("cross-signing renewed intermediate", "authority", a.GetAuthority().GetId(), "error", err)
				continue
			}
		}
		stripServerMeta(next.Meta)
		payload, err := proto.Marshal(next)
		if err != nil {
			continue
		}
		_, err = s.applyWrite(ctx, fsm.UpsertResourceType, &meshfedv1.ResourceWrite{
			Kind: meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY, Payload: payload, Name: a.GetMeta().GetName(),
			ExpectedVersion: a.GetMeta().GetVersion(),
		})
		if err != nil {
			s.log.Warn("storing renewed intermediate", "authority", a.GetAuthority().GetId(), "error", err)
			continue
		}
		s.log.Info("renewed intermediate", "authority", a.GetAuthority().GetId(), "not_after", next.GetAuthority().GetIntermediateNotAfter().AsTime())
	}
}

// nextLeaderCheck is how long the leader loop may sleep: 10 seconds, or
// until the active intermediate is due for renewal if that is sooner.
func (s *Server) nextLeaderCheck() time.Duration {
	wait := 10 * time.Second
	_, items, _, err := s.store().List(nil, listAll(meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY))
	if err != nil {
		return wait
	}
	for _, it := range items {
		a := it.(*meshfedv1.StoredAuthority)
		// An intermediate without its root's key is not renewed here (a
		// warning says so every round).
		if a.GetAuthority().GetState() != meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE || len(a.GetRootKey()) == 0 {
			continue
		}
		if certs, err := tlsutil.ParseCertificatesPEM([]byte(a.GetAuthority().GetIntermediatePem())); err == nil {
			wait = min(wait, time.Until(ca.RenewalTime(certs[0])))
		}
	}
	return max(wait, 100*time.Millisecond)
}
