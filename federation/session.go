package federation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// Local is what a session needs from the server it runs in. Every method
// runs on the server that owns the session (the leader); writes go through
// Raft.
type Local interface {
	// Exports returns what this cluster exports to peer, keyed
	// "namespace/name", and a channel closed when that may have changed (or
	// ctx ends). A service that did not change may come back as the same
	// pointer as in an earlier call; neither side modifies what it returns.
	Exports(ctx context.Context, peer string) (map[string]*meshfedv1.ImportedService, <-chan struct{}, error)
	// Bundle returns this cluster's trust bundle and a channel closed when
	// it may have changed (or ctx ends).
	Bundle(ctx context.Context) (*meshfedv1.TrustBundle, <-chan struct{}, error)

	// StoreBundle keeps the peer's bundle (already checked).
	StoreBundle(ctx context.Context, peer string, b *meshfedv1.TrustBundle) error
	// ApplyImports stores services the peer exports and removes those it
	// deleted (all already checked), in order; a later change to the same
	// service wins. At most MaxImportBatch changes come at once.
	ApplyImports(ctx context.Context, peer string, changes []ImportChange) error
	// Synced is called once the peer's full state has arrived: imports of
	// the peer not in keep ("namespace/name") are removed, the rest are no
	// longer stale.
	Synced(ctx context.Context, peer string, keep map[string]bool) error
	// BundleAcked records that the peer stored this side's bundle sequence.
	BundleAcked(peer string, sequence uint64)
	// Closed is called when the peer ended the peering: this side deletes
	// its own.
	Closed(ctx context.Context, peer, reason string) error
}

// Stream is one side of a peer stream.
type Stream interface {
	Send(*meshfedv1.PeerMessage) error
	Recv() (*meshfedv1.PeerMessage, error)
}

// Session replicates both ways over one established stream, after both
// sides have exchanged PeerOpen: this side's exports and bundle go out,
// the peer's come in.
type Session struct {
	// Peer is the local name of the peering; PeerTD the peer's trust domain.
	Peer   string
	PeerTD spiffeid.TrustDomain
	Local  Local
	Stream Stream
	Log    *slog.Logger
	// Heartbeat is how often this side sends a heartbeat when it has
	// nothing else to send; a peer silent for three of them is gone.
	Heartbeat time.Duration
}

// ErrPeerClosed is returned by Run when the peer ended the peering.
var ErrPeerClosed = errors.New("the peer deleted the peering")

// DefaultHeartbeat is Session.Heartbeat's default.
const DefaultHeartbeat = 5 * time.Second

// Run replicates until ctx ends, the stream breaks or the peer sends
// something it must not; the error says which. The caller ends the stream
// after Run returns: that releases the receiving goroutine, which applies
// nothing more once Run has returned.
func (s *Session) Run(ctx context.Context) error {
	if s.Heartbeat <= 0 {
		s.Heartbeat = DefaultHeartbeat
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	acks := make(chan uint64, 16)
	heard := make(chan struct{}, 1)

	go func() { cancel(s.receive(ctx, acks, heard)) }()
	go func() { cancel(s.watchdog(ctx, heard)) }()
	err := s.send(ctx, acks)
	cancel(err)
	<-ctx.Done()
	return context.Cause(ctx)
}

// send streams this side's state: the bundle and every export, a
// sync_complete, then each change, acknowledgements and heartbeats.
func (s *Session) send(ctx context.Context, acks <-chan uint64) error {
	sent := map[string]*meshfedv1.ImportedService{}
	var bundleSeq uint64
	synced := false
	tick := time.NewTicker(s.Heartbeat)
	defer tick.Stop()
	for {
		// The watches of one round end with it.
		wctx, wcancel := context.WithCancel(ctx)
		err := s.sendRound(ctx, wctx, acks, tick, sent, &bundleSeq, &synced)
		wcancel()
		if err != nil {
			return err
		}
	}
}

// sendRound sends what changed since the last round, then waits for the
// next change, sending acknowledgements and heartbeats meanwhile.
func (s *Session) sendRound(ctx, wctx context.Context, acks <-chan uint64, tick *time.Ticker,
	sent map[string]*meshfedv1.ImportedService, bundleSeq *uint64, synced *bool) error {
	{
		bundle, bundleCh, err := s.Local.Bundle(wctx)
		if err != nil {
			return fmt.Errorf("reading the trust bundle: %w", err)
		}
		if bundle.GetSequence() != *bundleSeq {
			if err := s.Stream.Send(&meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_Bundle{Bundle: bundle}}); err != nil {
				return err
			}
			*bundleSeq = bundle.GetSequence()
		}
		exports, exportsCh, err := s.Local.Exports(wctx, s.Peer)
		if err != nil {
			return fmt.Errorf("reading exports: %w", err)
		}
		for key, svc := range exports {
			// Unchanged exports may come back as the same pointer.
			if prev, ok := sent[key]; ok && (prev == svc || proto.Equal(prev, svc)) {
				continue
			}
			if err := s.Stream.Send(&meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_ServiceUpsert{ServiceUpsert: svc}}); err != nil {
				return err
			}
			sent[key] = svc
		}
		for key, svc := range sent {
			if _, ok := exports[key]; ok {
				continue
			}
			del := &meshfedv1.PeerServiceDelete{Namespace: svc.GetMeta().GetNamespace(), Name: svc.GetMeta().GetName()}
			if err := s.Stream.Send(&meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_ServiceDelete{ServiceDelete: del}}); err != nil {
				return err
			}
			delete(sent, key)
		}
		if !*synced {
			if err := s.Stream.Send(&meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_SyncComplete{SyncComplete: &meshfedv1.PeerSyncComplete{}}}); err != nil {
				return err
			}
			*synced = true
		}
		for {
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			case <-bundleCh:
				return nil
			case <-exportsCh:
				return nil
			case seq := <-acks:
				if err := s.Stream.Send(&meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_BundleAck{BundleAck: &meshfedv1.PeerBundleAck{Sequence: seq}}}); err != nil {
					return err
				}
			case <-tick.C:
				if err := s.Stream.Send(&meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_Heartbeat{Heartbeat: &meshfedv1.PeerHeartbeat{}}}); err != nil {
					return err
				}
			}
		}
	}
}

// ImportChange is one change the peer sent to a service it exports: an
// upsert when Service is set, else the deletion of Namespace/Name.
type ImportChange struct {
	Service         *meshfedv1.ImportedService
	Namespace, Name string
}

// Key is "namespace/name" of the service the change is about.
func (c ImportChange) Key() string {
	if c.Service != nil {
		return c.Service.GetMeta().GetNamespace() + "/" + c.Service.GetMeta().GetName()
	}
	return c.Namespace + "/" + c.Name
}

// MaxImportBatch bounds how many service changes one ApplyImports call
// carries.
const MaxImportBatch = 256

// received is one message from the peer, or the error that ended the stream.
type received struct {
	m   *meshfedv1.PeerMessage
	err error
}

// receive applies what the peer sends. Service changes that arrive
// back-to-back are applied together (one Raft write for a full sync rather
// than one per service); a single change is applied as soon as it arrives.
// Anything refused ends the session with an error naming it; what arrived
// before it is applied, nothing of it or after it is.
func (s *Session) receive(ctx context.Context, acks chan<- uint64, heard chan<- struct{}) error {
	in := make(chan received, MaxImportBatch)
	go func() {
		for {
			m, err := s.Stream.Recv()
			if err == nil {
				select {
				case heard <- struct{}{}:
				default:
				}
			}
			select {
			case in <- received{m, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	seen := map[string]bool{} // until the first sync_complete
	start := time.Now()
	var batch []ImportChange
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		// Once the session ended, nothing more is applied: the caller has
		// recorded the disconnection.
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		err := s.Local.ApplyImports(ctx, s.Peer, batch)
		if err == nil && seen != nil {
			for _, c := range batch {
				if c.Service != nil {
					seen[c.Key()] = true
				} else {
					delete(seen, c.Key())
				}
			}
		}
		batch = batch[:0]
		return err
	}
	var next *received
	for {
		var r received
		if next != nil {
			r, next = *next, nil
		} else {
			select {
			case r = <-in:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
		if r.err != nil {
			if err := flush(); err != nil {
				return err
			}
			return r.err
		}
		c, ok, err := importChange(s.PeerTD, r.m)
		if err != nil {
			if ferr := flush(); ferr != nil {
				return ferr
			}
			return s.refuse(err)
		}
		if ok {
			batch = append(batch, c)
			// Take what else is already queued, up to a batch.
		drain:
			for len(batch) < MaxImportBatch {
				select {
				case q := <-in:
					if q.err == nil {
						if c, ok, err := importChange(s.PeerTD, q.m); ok && err == nil {
							batch = append(batch, c)
							continue
						}
					}
					next = &q
					break drain
				default:
					break drain
				}
			}
			if err := flush(); err != nil {
				return err
			}
			continue
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		first, services := seen != nil, len(seen)
		if err := s.handle(ctx, r.m, acks, &seen); err != nil {
			return err
		}
		if first && seen == nil {
			s.Log.Info("received the peer's full state", "peer", s.Peer, "services", services, "took", time.Since(start))
		}
	}
}

// importChange returns the service change m carries, checked; ok is false
// when m is not a service change.
func importChange(td spiffeid.TrustDomain, m *meshfedv1.PeerMessage) (c ImportChange, ok bool, err error) {
	switch msg := m.GetMessage().(type) {
	case *meshfedv1.PeerMessage_ServiceUpsert:
		if err := CheckService(td, msg.ServiceUpsert); err != nil {
			return c, true, err
		}
		return ImportChange{Service: msg.ServiceUpsert}, true, nil
	case *meshfedv1.PeerMessage_ServiceDelete:
		d := msg.ServiceDelete
		if err := checkLabel("namespace", d.GetNamespace()); err != nil {
			return c, true, err
		}
		if err := checkLabel("name", d.GetName()); err != nil {
			return c, true, err
		}
		return ImportChange{Namespace: d.GetNamespace(), Name: d.GetName()}, true, nil
	}
	return c, false, nil
}

// handle applies one message that is not a service change.
func (s *Session) handle(ctx context.Context, m *meshfedv1.PeerMessage, acks chan<- uint64, seen *map[string]bool) error {
	switch msg := m.GetMessage().(type) {
	case *meshfedv1.PeerMessage_Heartbeat:
	case *meshfedv1.PeerMessage_Bundle:
		if err := CheckBundle(s.PeerTD, msg.Bundle); err != nil {
			return s.refuse(err)
		}
		if err := s.Local.StoreBundle(ctx, s.Peer, msg.Bundle); err != nil {
			return err
		}
		select {
		case acks <- msg.Bundle.GetSequence():
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	case *meshfedv1.PeerMessage_SyncComplete:
		if *seen == nil {
			return nil // a later full sync changes nothing we track
		}
		if err := s.Local.Synced(ctx, s.Peer, *seen); err != nil {
			return err
		}
		*seen = nil
	case *meshfedv1.PeerMessage_BundleAck:
		s.Local.BundleAcked(s.Peer, msg.BundleAck.GetSequence())
	case *meshfedv1.PeerMessage_Close:
		if err := s.Local.Closed(ctx, s.Peer, msg.Close.GetReason()); err != nil {
			return err
		}
		return ErrPeerClosed
	case *meshfedv1.PeerMessage_Open:
		return s.refuse(fmt.Errorf("%w: a second open", ErrBadPeerMessage))
	default:
		return s.refuse(fmt.Errorf("%w: unknown message", ErrBadPeerMessage))
	}
	return nil
}

func (s *Session) refuse(err error) error {
	s.Log.Warn("refused message from peer", "peer", s.Peer, "error", err)
	return err
}

// watchdog ends the session when the peer has been silent for three
// heartbeats: a link that drops packets never reports an error itself.
func (s *Session) watchdog(ctx context.Context, heard <-chan struct{}) error {
	limit := 3 * s.Heartbeat
	t := time.NewTimer(limit)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-heard:
			if !t.Stop() {
				<-t.C
			}
			t.Reset(limit)
		case <-t.C:
			return fmt.Errorf("peer %s silent for %s", s.Peer, limit)
		}
	}
}
