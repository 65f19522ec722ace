package controlplane

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/logging"
)

// autopilotDelegate connects raft-autopilot to this server. Liveness comes
// from the stats call each server answers over mTLS: a server that has not
// answered for DeadServerCleanup is failed, and autopilot removes it (never
// below a quorum of the voters it started with).
type autopilotDelegate struct {
	s *Server

	mu       sync.Mutex
	lastSeen map[raft.ServerID]time.Time
	// last holds each server's last answer, reported again (with a growing
	// last contact) while the server does not answer, so it turns unhealthy.
	last map[raft.ServerID]autopilot.ServerStats
}

var _ autopilot.ApplicationIntegration = (*autopilotDelegate)(nil)

func (s *Server) startAutopilot(ctx context.Context) {
	d := &autopilotDelegate{s: s, lastSeen: map[raft.ServerID]time.Time{}, last: map[raft.ServerID]autopilot.ServerStats{}}
	ap := autopilot.New(s.raft, d,
		autopilot.WithLogger(logging.HCLog(s.log, "autopilot")),
		autopilot.WithUpdateInterval(time.Second),
		autopilot.WithReconcileInterval(5*time.Second))
	s.joinMu.Lock()
	s.autopilot = ap
	s.joinMu.Unlock()
	ap.Start(ctx)
}

func (s *Server) stopAutopilot() {
	s.joinMu.Lock()
	ap := s.autopilot
	s.autopilot = nil
	s.joinMu.Unlock()
	if ap != nil {
		<-ap.Stop()
	}
}

func (s *Server) autopilotState() *autopilot.State {
	s.joinMu.Lock()
	ap := s.autopilot
	s.joinMu.Unlock()
	if ap == nil {
		return nil
	}
	return ap.GetState()
}

func (d *autopilotDelegate) AutopilotConfig() *autopilot.Config {
	return &autopilot.Config{
		CleanupDeadServers:      d.s.cfg.DeadServerCleanup > 0,
		LastContactThreshold:    5 * time.Second,
		MaxTrailingLogs:         1000,
		MinQuorum:               2,
		ServerStabilizationTime: 5 * time.Second,
	}
}

func (d *autopilotDelegate) FetchServerStats(ctx context.Context, servers map[raft.ServerID]*autopilot.Server) map[raft.ServerID]*autopilot.ServerStats {
	out := map[raft.ServerID]*autopilot.ServerStats{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id := range servers {
		_, rec, err := d.s.store().Get(nil, meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, "", string(id))
		if err != nil || rec == nil {
			continue
		}
		addr := rec.(*meshfedv1.ServerRecord).ApiAddr
		wg.Add(1)
		go func(id raft.ServerID, addr string) {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			resp, err := d.s.fwd.clusterClient(addr).ServerStats(cctx, &meshfedv1.ServerStatsRequest{})
			d.mu.Lock()
			defer d.mu.Unlock()
			var st autopilot.ServerStats
			if err != nil {
				prev, ok := d.last[id]
				seen, seenOK := d.lastSeen[id]
				if !ok || !seenOK {
					return
				}
				st = prev
				st.LastContact = time.Since(seen)
			} else {
				st = autopilot.ServerStats{
					LastContact: resp.GetLastContact().AsDuration(),
					LastTerm:    resp.GetLastTerm(),
					LastIndex:   resp.GetLastIndex(),
				}
				d.last[id] = st
				d.lastSeen[id] = time.Now()
			}
			mu.Lock()
			out[id] = &st
			mu.Unlock()
		}(id, addr)
	}
	wg.Wait()
	return out
}

func (d *autopilotDelegate) KnownServers() map[raft.ServerID]*autopilot.Server {
	f := d.s.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	_, leaderID := d.s.raft.LeaderWithID()
	now := time.Now()
	out := map[raft.ServerID]*autopilot.Server{}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, srv := range f.Configuration().Servers {
		seen, ok := d.lastSeen[srv.ID]
		if !ok {
			// Give servers we have not polled yet a full period.
			d.lastSeen[srv.ID] = now
			seen = now
		}
		st := autopilot.NodeAlive
		if srv.ID != raft.ServerID(d.s.cfg.NodeID) && now.Sub(seen) > d.s.cfg.DeadServerCleanup {
			st = autopilot.NodeFailed
		}
		out[srv.ID] = &autopilot.Server{
			ID: srv.ID, Name: string(srv.ID), Address: srv.Address, NodeStatus: st,
			Version: Version, RaftVersion: raft.ProtocolVersionMax, IsLeader: srv.ID == leaderID,
			NodeType: autopilot.NodeVoter,
		}
	}
	// Forget servers that left the configuration: one that is removed and
	// later rejoins starts with a full period again, instead of counting as
	// failed since before its removal.
	for id := range d.lastSeen {
		if _, ok := out[id]; !ok {
			delete(d.lastSeen, id)
			delete(d.last, id)
		}
	}
	return out
}

func (d *autopilotDelegate) NotifyState(*autopilot.State) {}

func (d *autopilotDelegate) RemoveFailedServer(srv *autopilot.Server) {
	d.s.log.Warn("removing failed server", "server", srv.ID)
	if err := d.s.raft.RemoveServer(srv.ID, 0, applyTimeout).Error(); err != nil {
		d.s.log.Error("removing failed server", "server", srv.ID, "error", err)
	}
}
