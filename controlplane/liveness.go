package controlplane

import (
	"context"
	"errors"
	"iter"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/fsm"
	"github.com/meshfed/meshfed/controlplane/state"
)

// Liveness of proxy-registered endpoints. Heartbeats are frequent and
// almost never change anything, so the leader keeps their times in memory
// and writes through Raft only what callers must see: a change of health,
// and an endpoint whose proxy fell silent, marked HEALTH_STATUS_UNKNOWN.

// workloadKey names a workload: namespace and name.
type workloadKey struct{ ns, name string }

// proxyLiveness is when each proxy last reported to this server, since it
// became the leader. A proxy it has not heard from yet counts as seen when
// leadership began: a new leader knows nothing of the old one's heartbeats,
// and must not take live proxies for dead ones.
type proxyLiveness struct {
	mu    sync.Mutex
	since time.Time
	seen  map[workloadKey]time.Time
}

// reset forgets every heartbeat and counts every proxy as seen at now.
func (l *proxyLiveness) reset(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.since, l.seen = now, map[workloadKey]time.Time{}
}

func (l *proxyLiveness) saw(k workloadKey, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = map[workloadKey]time.Time{}
	}
	l.seen[k] = now
}

func (l *proxyLiveness) forget(k workloadKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.seen, k)
}

// silent returns the proxy workloads among ws that have not reported for
// longer than ttl, and forgets heartbeats older than that: lastSeen then
// falls back to since, which is older still, so they stay silent and
// deleted workloads do not linger here.
func (l *proxyLiveness) silent(ws iter.Seq[*meshfedv1.Workload], now time.Time, ttl time.Duration) []*meshfedv1.Workload {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, t := range l.seen {
		if now.Sub(t) > ttl {
			delete(l.seen, k)
		}
	}
	if now.Sub(l.since) <= ttl {
		return nil // everything counts as seen within the TTL
	}
	var out []*meshfedv1.Workload
	for w := range ws {
		if !w.GetProxy() || w.GetHealth() == meshfedv1.HealthStatus_HEALTH_STATUS_UNKNOWN {
			continue
		}
		if _, ok := l.seen[workloadKey{w.GetMeta().GetNamespace(), w.GetMeta().GetName()}]; !ok {
			out = append(out, w)
		}
	}
	return out
}

// livenessTick is how often the leader looks for silent proxies: every
// second, or every half heartbeat interval if that is shorter.
func (s *Server) livenessTick() time.Duration {
	return max(min(time.Second, s.cfg.ProxyHeartbeatInterval/2), 10*time.Millisecond)
}

// watchProxyLiveness marks the endpoints of silent proxies unknown until
// ctx ends (leadership is lost).
func (s *Server) watchProxyLiveness(ctx context.Context) {
	s.liveness.reset(time.Now())
	t := time.NewTicker(s.livenessTick())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Ranging over the stored workloads, not listing them: a list of
		// every workload each second is garbage the size of the catalog.
		silent := s.liveness.silent(s.store().Workloads(), time.Now(), s.cfg.ProxyHeartbeatTTL)
		if len(silent) == 0 {
			continue
		}
		for _, w := range silent {
			s.log.Info("proxy stopped sending heartbeats; marking its endpoint unknown",
				"workload", qualified(w.GetMeta().GetNamespace(), w.GetMeta().GetName()), "spiffe_id", w.GetSpiffeId())
		}
		s.markUnknown(ctx, silent)
	}
}

// maxHealthBatch bounds the writes of one Raft entry that marks endpoints.
const maxHealthBatch = 256

// markUnknown writes HEALTH_STATUS_UNKNOWN for ws, in batches. A batch
// applies all or nothing: when one of its workloads changed meanwhile (its
// proxy came back, or it was deleted), the others are written one by one
// and the changed one is left alone; the next round looks at it again.
func (s *Server) markUnknown(ctx context.Context, ws []*meshfedv1.Workload) {
	for len(ws) > 0 && ctx.Err() == nil {
		n := min(len(ws), maxHealthBatch)
		batch := ws[:n]
		ws = ws[n:]
		err := s.writeHealth(ctx, batch, meshfedv1.HealthStatus_HEALTH_STATUS_UNKNOWN)
		switch {
		case err == nil:
		case lostToChange(err) && len(batch) > 1:
			for _, w := range batch {
				if err := s.writeHealth(ctx, []*meshfedv1.Workload{w}, meshfedv1.HealthStatus_HEALTH_STATUS_UNKNOWN); err != nil && !lostToChange(err) {
					s.log.Warn("marking a silent proxy's endpoint unknown",
						"workload", qualified(w.GetMeta().GetNamespace(), w.GetMeta().GetName()), "error", err)
				}
			}
		case !lostToChange(err):
			s.log.Warn("marking silent proxies' endpoints unknown", "error", err)
		}
	}
}

// lostToChange reports whether a conditional write failed because its
// workload changed or went away after it was read.
func lostToChange(err error) bool {
	return isVersionMismatch(err) || errors.Is(err, state.ErrNotFound)
}

// writeHealth sets the health of stored workloads, each only if it is
// still at the version read: one Raft entry for all of them.
func (s *Server) writeHealth(ctx context.Context, ws []*meshfedv1.Workload, h meshfedv1.HealthStatus) error {
	writes := make([]*meshfedv1.ResourceWrite, 0, len(ws))
	for _, w := range ws {
		m := w.GetMeta()
		next := proto.Clone(w).(*meshfedv1.Workload)
		next.Health = h
		stripServerMeta(next.Meta)
		payload, err := proto.Marshal(next)
		if err != nil {
			return err
		}
		writes = append(writes, &meshfedv1.ResourceWrite{
			Kind: kindWorkload, Payload: payload, Namespace: m.GetNamespace(), Name: m.GetName(),
			ExpectedVersion: m.GetVersion(), MustExist: true,
		})
	}
	if len(writes) == 1 {
		_, err := s.applyWrite(ctx, fsm.UpsertResourceType, writes[0])
		return err
	}
	_, err := s.applyBatch(ctx, &meshfedv1.ResourceWriteBatch{Writes: writes})
	return err
}
