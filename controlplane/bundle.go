package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

const kindAuthority = meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY

// bundleView is the trust bundle as watchers see it.
type bundleView struct {
	// sequence is the Raft index of the last change to any authority. It
	// grows with every change to the bundle and to which authority signs,
	// so a watcher's acknowledgement of a sequence covers both.
	sequence uint64
	// roots are the PEM roots of every authority that is not retired, in
	// authority ID order.
	roots    []string
	activeID string
	auths    []*meshfedv1.StoredAuthority
}

// trustBundle reads the bundle from replicated state, adding the
// authorities table to ws when it is not nil.
func (s *Server) trustBundle(ws memdb.WatchSet) (bundleView, error) {
	_, items, _, err := s.store().List(ws, listAll(kindAuthority))
	if err != nil {
		return bundleView{}, err
	}
	var v bundleView
	for _, it := range items {
		sa := it.(*meshfedv1.StoredAuthority)
		a := sa.GetAuthority()
		v.auths = append(v.auths, sa)
		v.sequence = max(v.sequence, sa.GetMeta().GetVersion())
		switch a.GetState() {
		case meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRED:
			continue
		case meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE:
			v.activeID = a.GetId()
		}
		v.roots = append(v.roots, a.GetRootPem())
	}
	return v, nil
}

func (v bundleView) proto(td string) *meshfedv1.TrustBundle {
	return &meshfedv1.TrustBundle{TrustDomain: td, RootsPem: v.roots, Sequence: v.sequence}
}

func (a *apiServer) GetTrustBundle(_ context.Context, req *meshfedv1.GetTrustBundleRequest) (*meshfedv1.GetTrustBundleResponse, error) {
	v, err := a.s.trustBundle(nil)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &meshfedv1.GetTrustBundleResponse{Bundles: []*meshfedv1.TrustBundle{v.proto(a.s.td.Name())}}
	if req.GetFederated() {
		out.Bundles = append(out.Bundles, a.s.federatedBundles(nil)...)
	}
	return out, nil
}

// WatchBundle sends the trust bundle at once and after every change, and
// records the watcher's acknowledgements so that rotation can tell when
// every watcher has the new bundle and has moved to the new authority.
func (a *apiServer) WatchBundle(stream meshfedv1.WorkloadIdentityService_WatchBundleServer) error {
	s := a.s
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	w := s.watchers.add()
	defer s.watchers.remove(w)

	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				cancel(err)
				return
			}
			s.watchers.ack(w, req.GetAckSequence(), req.GetSvidAuthorityId())
		}
	}()

	var last *meshfedv1.WatchBundleResponse
	for {
		ws := memdb.NewWatchSet()
		ws.Add(s.store().AbandonCh())
		v, err := s.trustBundle(ws)
		if err != nil {
			return toStatus(err)
		}
		// Peers' bundles ride along: a workload trusts them to verify
		// callers from peer clusters.
		next := &meshfedv1.WatchBundleResponse{Bundle: v.proto(s.td.Name()), ActiveAuthorityId: v.activeID, FederatedBundles: s.federatedBundles(ws)}
		if len(v.roots) > 0 && (last == nil || !proto.Equal(next, last)) {
			if err := stream.Send(next); err != nil {
				return err
			}
			s.watchers.sent(w, v.sequence)
			last = next
		}
		if err := ws.WatchCtx(ctx); err != nil {
			if cause := context.Cause(ctx); errors.Is(cause, io.EOF) {
				return nil
			} else if cause != nil && !errors.Is(cause, context.Canceled) {
				return cause
			}
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// bundleWatchers tracks the bundle watchers connected to this server.
type bundleWatchers struct {
	mu  sync.Mutex
	set map[*bundleWatcher]struct{}
}

type bundleWatcher struct {
	since time.Time
	// sentSeq is the last sequence sent, ackSeq the last acknowledged.
	sentSeq, ackSeq uint64
	// svidAuthority is the authority of the SVID the watcher presents.
	svidAuthority string
}

func newBundleWatchers() *bundleWatchers {
	return &bundleWatchers{set: map[*bundleWatcher]struct{}{}}
}

func (b *bundleWatchers) add() *bundleWatcher {
	w := &bundleWatcher{since: time.Now()}
	b.mu.Lock()
	b.set[w] = struct{}{}
	b.mu.Unlock()
	return w
}

func (b *bundleWatchers) remove(w *bundleWatcher) {
	b.mu.Lock()
	delete(b.set, w)
	b.mu.Unlock()
}

func (b *bundleWatchers) sent(w *bundleWatcher, seq uint64) {
	b.mu.Lock()
	w.sentSeq = seq
	b.mu.Unlock()
}

// ack records an acknowledgement. A watcher cannot acknowledge a sequence
// it was never sent: that would let a confused client hold up nothing and
// fake progress.
func (b *bundleWatchers) ack(w *bundleWatcher, seq uint64, authority string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if seq > 0 && seq <= w.sentSeq {
		w.ackSeq = max(w.ackSeq, seq)
	}
	if authority != "" {
		w.svidAuthority = authority
	}
}

// stats counts the watchers, those that acknowledged seq or later, and the
// watchers by the authority of their SVID.
func (b *bundleWatchers) stats(seq uint64) (total, current uint32, byAuthority map[string]uint32) {
	b.mu.Lock()
	defer b.mu.Unlock()
	byAuthority = map[string]uint32{}
	for w := range b.set {
		total++
		if w.ackSeq >= seq && w.ackSeq > 0 {
			current++
		}
		if w.svidAuthority != "" {
			byAuthority[w.svidAuthority]++
		}
	}
	return total, current, byAuthority
}

// watcherStats is the cluster-wide sum of every server's bundle watchers.
type watcherStats struct {
	total, current uint32
	byAuthority    map[string]uint32
	// unreachable names servers that did not answer: their watchers are
	// unknown, so propagation cannot be confirmed while it is not empty.
	unreachable []string
	// certAuthority is, per answering server, the authority that issued its
	// own certificate ("" when it is not a current intermediate's).
	certAuthority map[string]string
}

// serversOff counts the voters not known to present a certificate of
// authority: those on another one, and those that did not answer.
func (w watcherStats) serversOff(authority string) int {
	n := len(w.unreachable)
	for _, a := range w.certAuthority {
		if a != authority {
			n++
		}
	}
	return n
}

// clusterWatcherStats asks every voter for its watcher counts against seq.
func (s *Server) clusterWatcherStats(ctx context.Context, seq uint64) (watcherStats, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return watcherStats{}, err
	}
	out := watcherStats{byAuthority: map[string]uint32{}, certAuthority: map[string]string{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	add := func(total, current uint32, by map[string]uint32) {
		mu.Lock()
		defer mu.Unlock()
		out.total += total
		out.current += current
		for k, n := range by {
			out.byAuthority[k] += n
		}
	}
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage != raft.Voter {
			continue
		}
		if string(srv.ID) == s.cfg.NodeID {
			add(s.watchers.stats(seq))
			out.certAuthority[s.cfg.NodeID] = s.ownCertAuthority()
			continue
		}
		_, rec, err := s.store().Get(nil, meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, "", string(srv.ID))
		if err != nil || rec == nil {
			out.unreachable = append(out.unreachable, string(srv.ID))
			continue
		}
		wg.Add(1)
		go func(id, addr string) {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			resp, err := s.fwd.clusterClient(addr).ServerStats(cctx, &meshfedv1.ServerStatsRequest{BundleSequence: seq})
			if err != nil {
				mu.Lock()
				out.unreachable = append(out.unreachable, id)
				mu.Unlock()
				return
			}
			add(resp.GetBundleWatchers(), resp.GetBundleWatchersCurrent(), resp.GetSvidsByAuthority())
			mu.Lock()
			out.certAuthority[id] = resp.GetCertificateAuthorityId()
			mu.Unlock()
		}(string(srv.ID), rec.(*meshfedv1.ServerRecord).GetApiAddr())
	}
	wg.Wait()
	sort.Strings(out.unreachable)
	return out, nil
}

func (w watcherStats) String() string {
	msg := fmt.Sprintf("%d of %d watchers on the current bundle", w.current, w.total)
	if len(w.unreachable) > 0 {
		msg += fmt.Sprintf("; no answer from %s", strings.Join(w.unreachable, ", "))
	}
	return msg
}
