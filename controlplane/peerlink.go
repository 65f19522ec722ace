package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/fsm"
	"github.com/meshfed/meshfed/controlplane/state"
	"github.com/meshfed/meshfed/controlplane/validate"
	"github.com/meshfed/meshfed/federation"
	"github.com/meshfed/meshfed/internal/client"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// peerLinks tracks the peer sessions this server runs (on the leader) and
// what the peers acknowledged.
type peerLinks struct {
	mu sync.Mutex
	// running maps a peering to its session.
	running map[string]*linkSession
	// closing is set by DeletePeering so a running session tells the peer.
	closing map[string]string
	// acked is the highest bundle sequence each peer acknowledged.
	acked map[string]uint64
}

// linkSession is one running session; its pointer tells it apart from a
// session that replaced it.
type linkSession struct{ cancel context.CancelCauseFunc }

func newPeerLinks() *peerLinks {
	return &peerLinks{running: map[string]*linkSession{}, closing: map[string]string{}, acked: map[string]uint64{}}
}

// errReplaced ends a session when a new stream from the same peer took its
// place: the link is up, so the old session records no disconnection.
var errReplaced = errors.New("replaced by a new session")

// errClosedHere ends a session whose peering an operator deleted here.
var errClosedHere = errors.New("peering deleted on this side")

// start registers a session; the returned function unregisters it.
func (l *peerLinks) start(name string, cancel context.CancelCauseFunc) (*linkSession, func()) {
	me := &linkSession{cancel: cancel}
	l.mu.Lock()
	if prev, ok := l.running[name]; ok {
		prev.cancel(errReplaced)
	}
	l.running[name] = me
	l.mu.Unlock()
	return me, func() {
		l.mu.Lock()
		// A session that was replaced leaves its successor registered.
		if l.running[name] == me {
			delete(l.running, name)
			delete(l.closing, name)
		}
		l.mu.Unlock()
	}
}

// superseded reports whether a session other than me (nil: any session)
// runs for the peering: the link is up again, and a session that ended
// before it must not mark the peering down.
func (l *peerLinks) superseded(name string, me *linkSession) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	cur, ok := l.running[name]
	return ok && cur != me
}

// close ends the session of a peering being deleted, after telling the
// peer (closeReason is picked up by the session's sender).
// It says whether a session was running.
func (l *peerLinks) close(name, reason string) bool {
	l.mu.Lock()
	sess, ok := l.running[name]
	if ok {
		l.closing[name] = reason
	}
	delete(l.acked, name)
	l.mu.Unlock()
	if ok {
		sess.cancel(errClosedHere)
	}
	return ok
}

func (l *peerLinks) closeReason(name string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.closing[name]
	return r, ok
}

func (l *peerLinks) ack(name string, seq uint64) {
	l.mu.Lock()
	l.acked[name] = max(l.acked[name], seq)
	l.mu.Unlock()
}

func (l *peerLinks) ackedSeq(name string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked[name]
}

// peerLocal is the server as a peer session sees it.
type peerLocal struct {
	s *Server
	// exports spares a session rebuilding every export on each change.
	exports *exportCache
}

var _ federation.Local = peerLocal{}

func (l peerLocal) Exports(ctx context.Context, peer string) (map[string]*meshfedv1.ImportedService, <-chan struct{}, error) {
	ws := memdb.NewWatchSet()
	out, err := l.s.exportsTo(ws, peer, l.exports)
	if err != nil {
		return nil, nil, err
	}
	return out, watchChan(ctx, ws), nil
}

func (l peerLocal) Bundle(ctx context.Context) (*meshfedv1.TrustBundle, <-chan struct{}, error) {
	ws := memdb.NewWatchSet()
	ws.Add(l.s.store().AbandonCh())
	b, err := l.s.trustBundleProto(ws)
	if err != nil {
		return nil, nil, err
	}
	return b, watchChan(ctx, ws), nil
}

func (l peerLocal) StoreBundle(ctx context.Context, peer string, b *meshfedv1.TrustBundle) error {
	return l.s.updatePeering(ctx, peer, func(p *meshfedv1.Peering) {
		p.PeerBundle = proto.Clone(b).(*meshfedv1.TrustBundle)
	})
}

// ApplyImports writes a run of received service changes as one Raft batch:
// the last change to each service wins, and an upsert that changes nothing
// or a deletion of what is not there is left out.
func (l peerLocal) ApplyImports(ctx context.Context, peer string, changes []federation.ImportChange) error {
	s := l.s
	p, err := s.peering(peer)
	if err != nil {
		return err
	}
	if p == nil {
		return errPeeringGone
	}
	last := make(map[string]int, len(changes))
	for i, c := range changes {
		last[c.Key()] = i
	}
	var writes []*meshfedv1.ResourceWrite
	size := 0
	for i, c := range changes {
		if last[c.Key()] != i {
			continue
		}
		w, err := s.importWrite(p, c)
		if err != nil {
			return err
		}
		if w == nil {
			continue
		}
		// A Raft entry stays small enough to replicate quickly.
		if size+len(w.Payload) > maxImportBatchBytes && len(writes) > 0 {
			if err := s.applyWrites(ctx, writes); err != nil {
				return err
			}
			writes, size = nil, 0
		}
		writes = append(writes, w)
		size += len(w.Payload)
	}
	return s.applyWrites(ctx, writes)
}

// maxImportBatchBytes bounds the payload of one batch of import writes.
const maxImportBatchBytes = 1 << 20

// applyWrites applies resource writes (a nil payload deletes) atomically:
// as one write, or as one batch.
func (s *Server) applyWrites(ctx context.Context, writes []*meshfedv1.ResourceWrite) error {
	switch len(writes) {
	case 0:
		return nil
	case 1:
		t := fsm.UpsertResourceType
		if writes[0].Payload == nil {
			t = fsm.DeleteResourceType
		}
		_, err := s.applyWrite(ctx, t, writes[0])
		return err
	}
	_, err := s.applyBatch(ctx, &meshfedv1.ResourceWriteBatch{Writes: writes})
	return err
}

// importWrite is the write that stores one change of peering p's imports,
// or nil when the store already agrees.
func (s *Server) importWrite(p *meshfedv1.Peering, c federation.ImportChange) (*meshfedv1.ResourceWrite, error) {
	peer := p.GetMeta().GetName()
	if c.Service == nil {
		name := importName(peer, c.Name)
		_, cur, err := s.store().Get(nil, kindImported, c.Namespace, name)
		if err != nil || cur == nil {
			return nil, err
		}
		return &meshfedv1.ResourceWrite{Kind: kindImported, Namespace: c.Namespace, Name: name}, nil
	}
	in := c.Service
	next := proto.Clone(in).(*meshfedv1.ImportedService)
	ns, name := in.GetMeta().GetNamespace(), in.GetMeta().GetName()
	next.Meta = &meshfedv1.Meta{Namespace: ns, Name: importName(peer, name), Peer: peer}
	next.Service.Meta = &meshfedv1.Meta{Namespace: ns, Name: name}
	next.PeerCluster, next.PeerTrustDomain = p.GetPeerCluster(), p.GetPeerTrustDomain()
	next.Stale, next.LastSync = false, nil
	_, cur, err := s.store().Get(nil, kindImported, ns, next.Meta.Name)
	if err != nil {
		return nil, err
	}
	if cur != nil {
		old := cur.(*meshfedv1.ImportedService)
		next.LastSync = old.GetLastSync()
		if equalImport(old, next) {
			return nil, nil
		}
	}
	payload, err := proto.Marshal(next)
	if err != nil {
		return nil, err
	}
	return &meshfedv1.ResourceWrite{Kind: kindImported, Namespace: ns, Name: next.Meta.Name, Payload: payload}, nil
}

// Synced prunes what the peer no longer exports, clears the stale marks
// and records the sync, in one write.
func (l peerLocal) Synced(ctx context.Context, peer string, keep map[string]bool) error {
	s := l.s
	_, items, _, err := s.store().List(nil, state.ListParams{Kind: kindImported, Peer: peer})
	if err != nil {
		return err
	}
	now := timestamppb.Now()
	b := &meshfedv1.ResourceWriteBatch{}
	for _, it := range items {
		imp := it.(*meshfedv1.ImportedService)
		ns, svc := imp.GetMeta().GetNamespace(), imp.GetService().GetMeta().GetName()
		if !keep[ns+"/"+svc] {
			b.Writes = append(b.Writes, &meshfedv1.ResourceWrite{Kind: kindImported, Namespace: ns, Name: imp.GetMeta().GetName(), ExpectedVersion: imp.GetMeta().GetVersion()})
			continue
		}
		next := proto.Clone(imp).(*meshfedv1.ImportedService)
		stripServerMeta(next.Meta)
		next.Meta.Peer = peer
		next.Stale, next.LastSync = false, now
		payload, err := proto.Marshal(next)
		if err != nil {
			return err
		}
		b.Writes = append(b.Writes, &meshfedv1.ResourceWrite{Kind: kindImported, Namespace: ns, Name: imp.GetMeta().GetName(), Payload: payload, ExpectedVersion: imp.GetMeta().GetVersion()})
	}
	p, err := s.peering(peer)
	if err != nil || p == nil {
		return errPeeringGone
	}
	np := proto.Clone(p).(*meshfedv1.Peering)
	stripServerMeta(np.Meta)
	np.State, np.LastSync, np.LastError = meshfedv1.PeeringState_PEERING_STATE_ACTIVE, now, ""
	payload, err := proto.Marshal(np)
	if err != nil {
		return err
	}
	b.Writes = append(b.Writes, &meshfedv1.ResourceWrite{Kind: kindPeering, Name: peer, Payload: payload, ExpectedVersion: p.GetMeta().GetVersion()})
	_, err = s.applyBatch(ctx, b)
	return err
}

func (l peerLocal) BundleAcked(peer string, seq uint64) { l.s.links.ack(peer, seq) }

func (l peerLocal) Closed(ctx context.Context, peer, reason string) error {
	l.s.log.Warn("the peer deleted the peering; deleting this side", "peer", peer, "reason", reason)
	_, err := l.s.deletePeeringState(ctx, peer, 0)
	return err
}

// disconnected records that a peering's link is down: the peering says so
// with the error, and its imports are kept but marked stale. me is the
// session that ended (nil when none ran); nothing is recorded once another
// session for the peering runs. A concurrent write to the peering or its
// imports (the ended session's last apply, say) is read again and the
// marks retried.
func (s *Server) disconnected(ctx context.Context, peer string, me *linkSession, cause error) {
	if errors.Is(cause, errPeeringGone) || errors.Is(cause, federation.ErrPeerClosed) || errors.Is(cause, errClosedHere) {
		return
	}
	msg := ""
	if cause != nil {
		msg = cause.Error()
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var err error
	for range 5 {
		if !s.isLeader() || s.links.superseded(peer, me) {
			return
		}
		var b *meshfedv1.ResourceWriteBatch
		if b, err = s.disconnectedWrites(peer, msg); err != nil || b == nil {
			break
		}
		if _, err = s.applyBatch(wctx, b); err == nil || !isVersionMismatch(err) {
			break
		}
	}
	if err != nil {
		s.log.Warn("marking peering disconnected", "peer", peer, "error", err)
	}
}

// disconnectedWrites is the batch that marks a peering disconnected with
// msg and its imports stale, or nil when the store already says so.
func (s *Server) disconnectedWrites(peer, msg string) (*meshfedv1.ResourceWriteBatch, error) {
	p, err := s.peering(peer)
	if err != nil || p == nil {
		return nil, err
	}
	b := &meshfedv1.ResourceWriteBatch{}
	_, items, _, err := s.store().List(nil, state.ListParams{Kind: kindImported, Peer: peer})
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		imp := it.(*meshfedv1.ImportedService)
		if imp.GetStale() {
			continue
		}
		next := proto.Clone(imp).(*meshfedv1.ImportedService)
		stripServerMeta(next.Meta)
		next.Meta.Peer = peer
		next.Stale = true
		payload, err := proto.Marshal(next)
		if err != nil {
			return nil, err
		}
		b.Writes = append(b.Writes, &meshfedv1.ResourceWrite{Kind: kindImported, Namespace: next.Meta.Namespace, Name: next.Meta.Name, Payload: payload, ExpectedVersion: imp.GetMeta().GetVersion()})
	}
	np := proto.Clone(p).(*meshfedv1.Peering)
	stripServerMeta(np.Meta)
	if np.GetState() == meshfedv1.PeeringState_PEERING_STATE_ACTIVE {
		np.State = meshfedv1.PeeringState_PEERING_STATE_DISCONNECTED
	}
	np.LastError = msg
	if proto.Equal(np, p) && len(b.Writes) == 0 {
		return nil, nil
	}
	payload, err := proto.Marshal(np)
	if err != nil {
		return nil, err
	}
	b.Writes = append(b.Writes, &meshfedv1.ResourceWrite{Kind: kindPeering, Name: peer, Payload: payload, ExpectedVersion: p.GetMeta().GetVersion()})
	return b, nil
}

// ownOpen is this side's first message on a peer stream.
func (s *Server) ownOpen(secret string) (*meshfedv1.PeerMessage, error) {
	b, err := s.trustBundleProto(nil)
	if err != nil {
		return nil, err
	}
	return &meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_Open{Open: &meshfedv1.PeerOpen{
		Cluster: s.cfg.Cluster, TrustDomain: s.td.Name(), Secret: secret, Bundle: b, ApiAddresses: s.apiAddresses(),
	}}}, nil
}

// runSession replicates over an opened stream until it ends, then records
// the disconnection. A deletion here first tells the peer.
func (s *Server) runSession(ctx context.Context, name string, td spiffeid.TrustDomain, stream federation.Stream) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	me, done := s.links.start(name, cancel)
	defer done()
	// A session lives only as long as this server leads: its writes go
	// through Raft, and the dialer's new leader takes the link over.
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if !s.isLeader() {
					cancel(errors.New("this server is no longer the leader"))
					return
				}
			}
		}
	}()
	sess := &federation.Session{Peer: name, PeerTD: td, Local: peerLocal{s: s, exports: newExportCache()}, Stream: stream,
		Log: s.log.With("peer", name), Heartbeat: s.cfg.peerHeartbeat}
	err := sess.Run(ctx)
	if errors.Is(err, errClosedHere) {
		reason, _ := s.links.closeReason(name)
		done()
		// The session's reader is still reading the stream.
		return s.tellDeleted(context.WithoutCancel(ctx), name, reason, stream, false)
	}
	if errors.Is(err, errReplaced) {
		s.log.Info("peer session replaced by the peer's new stream", "peer", name)
		return err
	}
	s.log.Warn("peer link down", "peer", name, "error", err)
	s.disconnected(ctx, name, me, err)
	return err
}

// Stream serves a peer cluster's stream (this cluster accepted the
// peering). It runs on the leader, which writes what the peer sends; other
// servers send the dialer on to the next address.
//
// The caller is authenticated either by the peering token's one-time
// secret in its PeerOpen (first contact; the secret is spent and the
// caller's bundle recorded), or by its server certificate, verified during
// the TLS handshake against the bundle recorded for its trust domain.
func (a *apiServer) Stream(stream meshfedv1.PeerStreamService_StreamServer) error {
	s := a.s
	ctx := stream.Context()
	if !s.isLeader() {
		return status.Error(codes.FailedPrecondition, "not the leader; dial another server")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	open := first.GetOpen()
	if open == nil {
		return status.Error(codes.InvalidArgument, "the first message must be open")
	}
	td, err := spiffeid.TrustDomainFromString(open.GetTrustDomain())
	if err != nil || td == s.td {
		return status.Errorf(codes.InvalidArgument, "invalid open.trust_domain %q", open.GetTrustDomain())
	}
	var name string
	if certs := peerCertificates(ctx); len(certs) > 0 {
		name, err = s.acceptByCertificate(certs, td)
	} else {
		name, err = s.acceptBySecret(ctx, open, td)
	}
	if err != nil {
		s.log.Warn("refused peer stream", "trust_domain", open.GetTrustDomain(), "cluster", open.GetCluster(), "error", err)
		return err
	}
	if err := federation.CheckBundle(td, open.GetBundle()); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	p, err := s.peering(name)
	if err != nil {
		return toStatus(err)
	}
	if !deleting(p) {
		if err := (peerLocal{s: s}).StoreBundle(ctx, name, open.GetBundle()); err != nil {
			return toStatus(err)
		}
	}
	reply, err := s.ownOpen("")
	if err != nil {
		return toStatus(err)
	}
	if err := stream.Send(reply); err != nil {
		return err
	}
	if deleting(p) {
		// Closing the stream ends what is left of the call.
		_ = s.tellDeleted(ctx, name, "", stream, false)
		return nil
	}
	s.log.Info("peer connected", "peer", name, "cluster", open.GetCluster())
	err = s.runSession(ctx, name, td, stream)
	if errors.Is(err, federation.ErrPeerClosed) || errors.Is(err, errClosedHere) {
		return nil
	}
	if errors.Is(err, federation.ErrBadPeerMessage) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return toStatus(err)
}

// acceptByCertificate finds the established peering of a caller that
// presented a server certificate of trust domain td.
func (s *Server) acceptByCertificate(certs []*x509.Certificate, td spiffeid.TrustDomain) (string, error) {
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil || !id.MemberOf(td) {
		return "", status.Error(codes.PermissionDenied, "the client certificate is not of the trust domain the caller claims")
	}
	if _, ok := mfid.ServerNodeID(id); !ok {
		return "", status.Errorf(codes.PermissionDenied, "%s is not a server identity", id)
	}
	all, err := s.peerings()
	if err != nil {
		return "", toStatus(err)
	}
	for _, p := range all {
		if p.GetPeerTrustDomain() == td.Name() && !p.GetDialer() && p.GetPeerBundle() != nil {
			return p.GetMeta().GetName(), nil
		}
	}
	return "", status.Errorf(codes.PermissionDenied, "no peering with trust domain %q accepts this cluster's certificates", td.Name())
}

// acceptBySecret spends a pending peering's one-time secret and records
// who spent it.
func (s *Server) acceptBySecret(ctx context.Context, open *meshfedv1.PeerOpen, td spiffeid.TrustDomain) (string, error) {
	if open.GetSecret() == "" {
		return "", status.Error(codes.Unauthenticated, "present the peering token's secret, or a server certificate of an established peering")
	}
	hash := hashSecret(open.GetSecret())
	all, err := s.peerings()
	if err != nil {
		return "", toStatus(err)
	}
	var p *meshfedv1.Peering
	for _, c := range all {
		if c.GetPeerTrustDomain() == td.Name() && c.GetPeerBundle() != nil {
			return "", status.Errorf(codes.AlreadyExists, "trust domain %q is already peered as %q", td.Name(), c.GetMeta().GetName())
		}
		if len(c.GetSecretHash()) > 0 && string(c.GetSecretHash()) == string(hash) {
			p = c
		}
	}
	if p == nil {
		return "", status.Error(codes.Unauthenticated, "invalid peering secret: unknown or already spent")
	}
	if exp := p.GetTokenExpireTime(); exp != nil && time.Now().After(exp.AsTime()) {
		return "", status.Error(codes.Unauthenticated, "invalid peering secret: the token expired")
	}
	if err := validateOpen(open); err != nil {
		return "", err
	}
	// A token names the cluster it was made for: the acceptor calls the
	// peering after it, and nobody else may use it.
	if open.GetCluster() != p.GetMeta().GetName() {
		return "", status.Errorf(codes.PermissionDenied, "this peering token was issued for cluster %q; cluster %q cannot use it", p.GetMeta().GetName(), open.GetCluster())
	}
	next := proto.Clone(p).(*meshfedv1.Peering)
	next.SecretHash, next.TokenExpireTime = nil, nil
	next.State = meshfedv1.PeeringState_PEERING_STATE_ESTABLISHING
	next.PeerCluster, next.PeerTrustDomain, next.PeerApiAddresses = open.GetCluster(), td.Name(), open.GetApiAddresses()
	next.PeerBundle = proto.Clone(open.GetBundle()).(*meshfedv1.TrustBundle)
	if _, err := s.putPeering(ctx, next, p.GetMeta().GetVersion()); err != nil {
		if isVersionMismatch(err) {
			return "", status.Error(codes.Unauthenticated, "invalid peering secret: already spent")
		}
		return "", toStatus(err)
	}
	return p.GetMeta().GetName(), nil
}

// validateOpen checks the fields of a peer's open message.
func validateOpen(open *meshfedv1.PeerOpen) error {
	if err := federationLabel("open.cluster", open.GetCluster()); err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(open.GetTrustDomain())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid open.trust_domain: %v", err)
	}
	if err := federation.CheckBundle(td, open.GetBundle()); err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid open.bundle: %v", err)
	}
	return nil
}

func federationLabel(field, v string) error {
	if err := validate.DNSLabel(field, v); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return nil
}

// runPeerLinks keeps one link running for every peering this cluster
// dialed, while this server leads.
func (s *Server) runPeerLinks(ctx context.Context) {
	running := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	defer func() {
		for _, cancel := range running {
			cancel()
		}
		wg.Wait()
	}()
	for {
		ws := memdb.NewWatchSet()
		ws.Add(s.store().AbandonCh())
		_, items, _, err := s.store().List(ws, listAll(kindPeering))
		if err != nil {
			s.log.Error("reading peerings", "error", err)
		}
		want := map[string]bool{}
		for _, it := range items {
			if p := it.(*meshfedv1.Peering); p.GetDialer() {
				want[p.GetMeta().GetName()] = true
			}
		}
		for name, cancel := range running {
			if !want[name] {
				cancel()
				delete(running, name)
			}
		}
		for name := range want {
			if _, ok := running[name]; ok {
				continue
			}
			lctx, cancel := context.WithCancel(ctx)
			running[name] = cancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.peerLink(lctx, name)
			}()
		}
		if err := ws.WatchCtx(ctx); err != nil {
			return
		}
	}
}

// peerLink dials the peer of one peering until ctx ends, with backoff: the
// wait doubles from cfg.peerBackoff (1s) up to 30 times that.
func (s *Server) peerLink(ctx context.Context, name string) {
	backoff := s.cfg.peerBackoff
	if backoff <= 0 {
		backoff = time.Second
	}
	wait := backoff
	for ctx.Err() == nil {
		start := time.Now()
		err := s.dialPeer(ctx, name)
		if errors.Is(err, errPeeringGone) || errors.Is(err, federation.ErrPeerClosed) || ctx.Err() != nil {
			return
		}
		if errors.Is(err, errClosedHere) {
			return
		}
		s.disconnected(ctx, name, nil, err)
		// The wait doubles while the peer cannot be reached; a link that
		// was up (a session ran) starts again from the shortest wait.
		if errors.Is(err, errSessionEnded) || time.Since(start) > time.Minute {
			wait = backoff
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*backoff)
	}
}

// dialPeer connects to the peer's servers in turn and runs a session with
// the first leader that accepts.
func (s *Server) dialPeer(ctx context.Context, name string) error {
	p, err := s.peering(name)
	if err != nil {
		return err
	}
	if p == nil {
		return errPeeringGone
	}
	td, err := peerTD(p)
	if err != nil {
		return fmt.Errorf("peering %s: %w", name, err)
	}
	var roots []*x509.Certificate
	for _, r := range p.GetPeerBundle().GetRootsPem() {
		certs, err := tlsutil.ParseCertificatesPEM([]byte(r))
		if err != nil {
			return fmt.Errorf("peer bundle: %w", err)
		}
		roots = append(roots, certs...)
	}
	var errs []error
	for _, addr := range p.GetPeerApiAddresses() {
		err := s.dialPeerAt(ctx, p, td, roots, addr)
		if err == nil || errors.Is(err, errPeeringGone) || errors.Is(err, federation.ErrPeerClosed) || errors.Is(err, errClosedHere) || ctx.Err() != nil {
			return err
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		if st, ok := status.FromError(err); !ok || (st.Code() != codes.FailedPrecondition && st.Code() != codes.Unavailable) {
			// Anything but "not the leader" or "unreachable" is the
			// peer's answer to this peering, not to this server.
			if !errors.Is(err, errSessionEnded) {
				return errors.Join(errs...)
			}
		}
	}
	return errors.Join(errs...)
}

// tellDeleted sends the close of a peering deleted here and, once the peer
// has ended the stream (it does so after deleting its side), removes the
// tombstone. If the peer does not answer within a few seconds the
// tombstone stays, and the next session tells it again. With drain,
// nobody else reads the stream, so this reads and drops until it ends.
func (s *Server) tellDeleted(ctx context.Context, name, reason string, stream federation.Stream, drain bool) error {
	if reason == "" {
		reason = "deleted by an operator of " + s.cfg.Cluster
	}
	if err := stream.Send(&meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_Close{Close: &meshfedv1.PeerClose{Reason: reason}}}); err != nil {
		s.log.Warn("could not tell the peer of the deletion; the peering stays deleting", "peer", name, "error", err)
		return errClosedHere
	}
	if !awaitPeerEnd(stream, drain) {
		s.log.Warn("the peer did not confirm the deletion; the peering stays deleting", "peer", name)
		return errClosedHere
	}
	if _, err := s.deletePeeringState(ctx, name, 0); err != nil {
		s.log.Warn("removing a deleted peering", "peer", name, "error", err)
		return errClosedHere
	}
	s.log.Info("peering deleted: the peer was told", "peer", name)
	return errClosedHere
}

// awaitPeerEnd waits (a few seconds at most) for the peer to end the
// stream after a close, and says whether it did. The dialing side
// half-closes first; the accepting side sees the dialer cancel its call.
func awaitPeerEnd(stream federation.Stream, drain bool) bool {
	var done <-chan struct{}
	switch cs := stream.(type) {
	case interface {
		CloseSend() error
		Context() context.Context
	}:
		if cs.CloseSend() != nil {
			return false
		}
		if drain {
			go func() {
				for {
					if _, err := stream.Recv(); err != nil {
						return
					}
				}
			}()
		}
		done = cs.Context().Done()
	case interface{ Context() context.Context }:
		done = cs.Context().Done()
	default:
		return false
	}
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// errSessionEnded wraps the end of a session that had started.
var errSessionEnded = errors.New("session ended")

func (s *Server) dialPeerAt(ctx context.Context, p *meshfedv1.Peering, td spiffeid.TrustDomain, roots []*x509.Certificate, addr string) error {
	name := p.GetMeta().GetName()
	secret := p.GetSecret()
	src := s.tls
	if secret != "" {
		src = nil // first contact: the secret, not a certificate the peer cannot verify yet
	}
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsutil.PeerClient(src, td, roots))),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(client.MaxMessageSize), grpc.MaxCallSendMsgSize(client.MaxMessageSize)),
		grpc.WithContextDialer(s.peerDialer()),
	)
	if err != nil {
		return err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := meshfedv1.NewPeerStreamServiceClient(conn).Stream(sctx)
	if err != nil {
		return err
	}
	open, err := s.ownOpen(secret)
	if err != nil {
		return err
	}
	if err := stream.Send(open); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		if secret != "" && status.Code(err) == codes.Unauthenticated && hasAlreadySpent(err) {
			// The secret was spent by an earlier attempt whose answer was
			// lost: the peer has this cluster's bundle, so certificates work.
			_ = s.updatePeering(ctx, name, func(p *meshfedv1.Peering) { p.Secret = "" })
		}
		return err
	}
	reply := first.GetOpen()
	if reply == nil {
		return status.Error(codes.InvalidArgument, "the peer's first message is not open")
	}
	if reply.GetTrustDomain() != td.Name() {
		return fmt.Errorf("the peer answered as trust domain %q, the peering is with %q", reply.GetTrustDomain(), td.Name())
	}
	if err := validateOpen(reply); err != nil {
		return err
	}
	if deleting(p) {
		return s.tellDeleted(ctx, name, "", stream, true)
	}
	err = s.updatePeering(ctx, name, func(p *meshfedv1.Peering) {
		p.Secret = ""
		p.PeerBundle = proto.Clone(reply.GetBundle()).(*meshfedv1.TrustBundle)
		if len(reply.GetApiAddresses()) > 0 {
			p.PeerApiAddresses = reply.GetApiAddresses()
		}
		if p.GetPeerCluster() == "" {
			p.PeerCluster = reply.GetCluster()
		}
	})
	if err != nil {
		return err
	}
	s.log.Info("connected to peer", "peer", name, "addr", addr)
	err = s.runSession(sctx, name, td, stream)
	return fmt.Errorf("%w: %w", errSessionEnded, err)
}

func hasAlreadySpent(err error) bool {
	return status.Convert(err).Message() == "invalid peering secret: unknown or already spent"
}

// followPeerBundles keeps the TLS trust of peer trust domains equal to the
// bundles the peerings recorded, so that an established peer's servers are
// verified against their own roots.
func (s *Server) followPeerBundles(ctx context.Context) {
	for {
		ws := memdb.NewWatchSet()
		ws.Add(s.store().AbandonCh())
		fed := map[string][]*x509.Certificate{}
		for _, b := range s.peerBundles(ws, true) {
			for _, r := range b.GetRootsPem() {
				if certs, err := tlsutil.ParseCertificatesPEM([]byte(r)); err == nil {
					fed[b.GetTrustDomain()] = append(fed[b.GetTrustDomain()], certs...)
				}
			}
		}
		s.tls.SetFederated(fed)
		if err := ws.WatchCtx(ctx); err != nil {
			return
		}
	}
}

func (s *Server) peerDialer() func(context.Context, string) (net.Conn, error) {
	if s.cfg.peerDial != nil {
		return s.cfg.peerDial
	}
	return s.dial
}
