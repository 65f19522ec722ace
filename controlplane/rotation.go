package controlplane

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/ca"
	"github.com/meshfed/meshfed/controlplane/state"
)

// Rotation defaults.
const (
	defaultRotationTimeout = 5 * time.Minute
	maxRotationTimeout     = 24 * time.Hour
	// rotationPoll is how often a waiting step re-counts the watchers.
	rotationPoll = 250 * time.Millisecond
	// rotationReport is how often a waiting step reports progress when
	// nothing changed.
	rotationReport = 5 * time.Second
)

func (a *apiServer) GetCAStatus(ctx context.Context, _ *meshfedv1.GetCAStatusRequest) (*meshfedv1.CAStatus, error) {
	st, err := a.s.caStatus(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return st, nil
}

// caStatus describes the authorities, the bundle and its propagation.
func (s *Server) caStatus(ctx context.Context) (*meshfedv1.CAStatus, error) {
	v, err := s.trustBundle(nil)
	if err != nil {
		return nil, err
	}
	rot, err := ca.RotationOf(v.auths)
	if err != nil {
		return nil, err
	}
	ws, err := s.clusterWatcherStats(ctx, v.sequence)
	if err != nil {
		return nil, err
	}
	out := &meshfedv1.CAStatus{
		TrustDomain: s.td.Name(), BundleSequence: v.sequence,
		Watchers: ws.total, WatchersCurrent: ws.current,
	}
	all, err := s.peerings()
	if err != nil {
		return nil, err
	}
	for _, p := range all {
		if p.GetPeerBundle() == nil || p.GetPeerTrustDomain() == "" || deleting(p) {
			continue
		}
		out.Peers++
		if s.links.ackedSeq(p.GetMeta().GetName()) >= v.sequence {
			out.PeersCurrent++
		}
	}
	switch rot.Next() {
	case meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE:
		out.RotationStep = "activate"
	case meshfedv1.RotationStep_ROTATION_STEP_RETIRE:
		out.RotationStep = "retire"
	}
	for _, sa := range v.auths {
		au := proto.Clone(sa.GetAuthority()).(*meshfedv1.Authority)
		au.WatcherSvids = ws.byAuthority[au.GetId()]
		out.Authorities = append(out.Authorities, au)
	}
	return out, nil
}

// RotateCA runs rotation steps on the leader and streams their progress.
// Each step is one Raft write guarded by the versions of the authorities it
// changes, so a rotation interrupted anywhere (a leader dies, the client
// goes away) resumes where the replicated state says it is, and two
// rotations started at once cannot both apply a step.
func (a *apiServer) RotateCA(req *meshfedv1.RotateCARequest, stream meshfedv1.CAService_RotateCAServer) error {
	s := a.s
	ctx := stream.Context()
	if !s.isLeader() && !isForwarded(ctx) {
		return relayToLeader(ctx, s.fwd, func(ctx context.Context, conn *grpc.ClientConn) (grpc.ServerStreamingClient[meshfedv1.RotateCAProgress], error) {
			return meshfedv1.NewCAServiceClient(conn).RotateCA(ctx, req)
		}, stream.Send)
	}
	timeout := defaultRotationTimeout
	if req.GetTimeout() != nil {
		if !req.GetTimeout().IsValid() || req.GetTimeout().AsDuration() <= 0 || req.GetTimeout().AsDuration() > maxRotationTimeout {
			return status.Errorf(codes.InvalidArgument, "invalid timeout: must be between 0 and %s", maxRotationTimeout)
		}
		timeout = req.GetTimeout().AsDuration()
	}
	switch req.GetStep() {
	case meshfedv1.RotationStep_ROTATION_STEP_UNSPECIFIED, meshfedv1.RotationStep_ROTATION_STEP_PREPARE,
		meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE, meshfedv1.RotationStep_ROTATION_STEP_RETIRE:
	default:
		return status.Errorf(codes.InvalidArgument, "invalid step: unknown value %d", req.GetStep())
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r := &rotator{s: s, force: req.GetForce(), send: func(step meshfedv1.RotationStep, done bool, format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		s.log.Info("CA rotation", "step", step.String(), "message", msg)
		return stream.Send(&meshfedv1.RotateCAProgress{Step: step, Message: msg, Done: done})
	}}
	if err := r.run(ctx, req.GetStep()); err != nil {
		if errors.Is(err, context.DeadlineExceeded) && stream.Context().Err() == nil {
			return status.Errorf(codes.DeadlineExceeded, "rotation timed out after %s: %v", timeout, err)
		}
		return toStatus(err)
	}
	st, err := s.caStatus(stream.Context())
	if err != nil {
		return toStatus(err)
	}
	return stream.Send(&meshfedv1.RotateCAProgress{Step: req.GetStep(), Message: "rotation finished", Done: true, Status: st})
}

// rotator runs rotation steps.
type rotator struct {
	s     *Server
	force bool
	send  func(step meshfedv1.RotationStep, done bool, format string, args ...any) error
}

// run runs one step, or, for UNSPECIFIED, every step from where the
// rotation stands to the end: a fresh rotation prepares, activates and
// retires; one interrupted after prepare resumes at activate.
func (r *rotator) run(ctx context.Context, only meshfedv1.RotationStep) error {
	if only != meshfedv1.RotationStep_ROTATION_STEP_UNSPECIFIED {
		return r.step(ctx, only)
	}
	rot, _, err := r.s.rotation()
	if err != nil {
		return err
	}
	steps := []meshfedv1.RotationStep{meshfedv1.RotationStep_ROTATION_STEP_PREPARE, meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE, meshfedv1.RotationStep_ROTATION_STEP_RETIRE}
	switch rot.Next() {
	case meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE:
		steps = steps[1:]
		if err := r.send(steps[0], false, "resuming: authority %s is prepared", rot.Prepared.GetAuthority().GetId()); err != nil {
			return err
		}
	case meshfedv1.RotationStep_ROTATION_STEP_RETIRE:
		steps = steps[2:]
		if err := r.send(steps[0], false, "resuming: authority %s is retiring", rot.Retiring.GetAuthority().GetId()); err != nil {
			return err
		}
	}
	for _, st := range steps {
		if err := r.step(ctx, st); err != nil {
			return err
		}
	}
	return nil
}

func (r *rotator) step(ctx context.Context, st meshfedv1.RotationStep) error {
	switch st {
	case meshfedv1.RotationStep_ROTATION_STEP_PREPARE:
		return r.prepare(ctx)
	case meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE:
		return r.activate(ctx)
	case meshfedv1.RotationStep_ROTATION_STEP_RETIRE:
		return r.retire(ctx)
	}
	return status.Errorf(codes.InvalidArgument, "invalid step: %v", st)
}

// rotation reads where the authorities are.
func (s *Server) rotation() (ca.Rotation, bundleView, error) {
	v, err := s.trustBundle(nil)
	if err != nil {
		return ca.Rotation{}, v, err
	}
	rot, err := ca.RotationOf(v.auths)
	return rot, v, err
}

func (r *rotator) prepare(ctx context.Context) error {
	const step = meshfedv1.RotationStep_ROTATION_STEP_PREPARE
	rot, _, err := r.s.rotation()
	if err != nil {
		return err
	}
	settings := r.s.caSettings()
	next, err := rot.Prepare(ca.GenerateParams{
		TrustDomain: r.s.td, KeyAlgorithm: settings.GetKeyAlgorithm(), Now: time.Now(),
		RootTTL: settings.GetRootTtl().AsDuration(), IntermediateTTL: r.s.intermediateTTL(),
	})
	if err != nil {
		return rotationStatus(err)
	}
	// The active authority must not change under the cross-signature.
	idx, err := r.s.writeAuthorities(ctx, authorityWrite{next: next}, authorityWrite{next: rot.Active, unchanged: true})
	if err != nil {
		return err
	}
	return r.send(step, true, "prepared authority %s (%s); its root joined the trust bundle at sequence %d",
		next.GetAuthority().GetId(), algorithmName(settings.GetKeyAlgorithm()), idx)
}

func (r *rotator) activate(ctx context.Context) error {
	const step = meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE
	rot, v, err := r.s.rotation()
	if err != nil {
		return err
	}
	if rot.Prepared == nil {
		return rotationStatus(fmt.Errorf("%w: no authority is prepared: run the prepare step first", ca.ErrRotationState))
	}
	// Every watcher, on every server, must have acknowledged a bundle that
	// holds the new root before anything is signed under it.
	// So must every peer cluster, which verifies this cluster's workloads
	// with it.
	err = r.wait(ctx, step, func() (bool, string, error) {
		ws, err := r.s.clusterWatcherStats(ctx, v.sequence)
		if err != nil {
			return false, "", err
		}
		behind, err := r.s.peersBehind(v.sequence)
		if err != nil {
			return false, "", err
		}
		msg := ws.String()
		if len(behind) > 0 {
			msg += "; peers without the new bundle: " + strings.Join(behind, ", ")
		} else if n := r.s.establishedPeers(); n > 0 {
			msg += fmt.Sprintf("; %d peers have the new bundle", n)
		}
		return ws.current == ws.total && len(ws.unreachable) == 0 && len(behind) == 0, msg, nil
	})
	if err != nil {
		return err
	}
	active, retiring, err := rot.Activate(time.Now())
	if err != nil {
		return rotationStatus(err)
	}
	writes := []authorityWrite{{next: active, prev: rot.Prepared}}
	if retiring != nil {
		writes = append(writes, authorityWrite{next: retiring, prev: rot.Active})
	}
	if _, err := r.s.writeAuthorities(ctx, writes...); err != nil {
		return err
	}
	return r.send(step, true, "authority %s is active; %s is retiring", active.GetAuthority().GetId(), retiring.GetAuthority().GetId())
}

func (r *rotator) retire(ctx context.Context) error {
	const step = meshfedv1.RotationStep_ROTATION_STEP_RETIRE
	rot, _, err := r.s.rotation()
	if err != nil {
		return err
	}
	if rot.Retiring == nil {
		return rotationStatus(fmt.Errorf("%w: no authority is retiring: run the activate step first", ca.ErrRotationState))
	}
	old := rot.Retiring.GetAuthority().GetId()
	// The old root may leave the bundle once no connected watcher and no
	// server presents a certificate it issued.
	err = r.wait(ctx, step, func() (bool, string, error) {
		v, err := r.s.trustBundle(nil)
		if err != nil {
			return false, "", err
		}
		ws, err := r.s.clusterWatcherStats(ctx, v.sequence)
		if err != nil {
			return false, "", err
		}
		// The active authority comes from the replicated state, not from
		// this server's signer, which follows the state a moment later.
		servers := ws.serversOff(rot.Active.GetAuthority().GetId())
		msg := fmt.Sprintf("%d watchers still present SVIDs of %s, %d servers do not have a certificate of the active authority yet; %s", ws.byAuthority[old], old, servers, ws)
		return ws.byAuthority[old] == 0 && servers == 0 && len(ws.unreachable) == 0, msg, nil
	})
	if err != nil {
		return err
	}
	active, retired, err := rot.Retire(time.Now())
	if err != nil {
		return rotationStatus(err)
	}
	writes := []authorityWrite{{next: retired, prev: rot.Retiring}}
	if active != nil {
		writes = append(writes, authorityWrite{next: active, prev: rot.Active})
	}
	if _, err := r.s.writeAuthorities(ctx, writes...); err != nil {
		return err
	}
	return r.send(step, true, "authority %s is retired; the trust bundle holds only the roots of live authorities", old)
}

// wait polls ready until it holds, reporting progress, or until ctx ends.
// With force, it reports once and goes on regardless.
func (r *rotator) wait(ctx context.Context, step meshfedv1.RotationStep, ready func() (bool, string, error)) error {
	var lastMsg string
	var lastReport time.Time
	for {
		ok, msg, err := ready()
		if err != nil {
			return err
		}
		if ok {
			return r.send(step, false, "%s", msg)
		}
		if r.force {
			return r.send(step, false, "forced: %s", msg)
		}
		if msg != lastMsg || time.Since(lastReport) >= rotationReport {
			if err := r.send(step, false, "waiting: %s", msg); err != nil {
				return err
			}
			lastMsg, lastReport = msg, time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s", ctx.Err(), msg)
		case <-time.After(rotationPoll):
		}
	}
}

// ownCertAuthority is the authority that issued this server's certificate.
func (s *Server) ownCertAuthority() string {
	chain := s.tls.Certificate()
	if len(chain) == 0 {
		return ""
	}
	return s.ca.AuthorityOf(chain[0])
}

// authorityWrite is one authority of a batch: next replaces prev (whose
// version guards the write; nil prev means next is new). With unchanged,
// next is only checked to be still at its version.
type authorityWrite struct {
	next, prev *meshfedv1.StoredAuthority
	unchanged  bool
}

// writeAuthorities applies authority changes in one Raft command, all or
// nothing, and returns its index.
func (s *Server) writeAuthorities(ctx context.Context, writes ...authorityWrite) (uint64, error) {
	b := &meshfedv1.ResourceWriteBatch{}
	now := timestamppb.Now()
	for _, w := range writes {
		name := w.next.GetMeta().GetName()
		rw := &meshfedv1.ResourceWrite{Kind: kindAuthority, Name: name, Time: now}
		switch {
		case w.unchanged:
			// Rewriting the stored value with its own version as the
			// condition fails the batch if anything changed it.
			rw.ExpectedVersion = w.next.GetMeta().GetVersion()
			rw.MustExist = true
		case w.prev != nil:
			rw.ExpectedVersion = w.prev.GetMeta().GetVersion()
			rw.MustExist = true
		default:
			rw.MustNotExist = true
		}
		next := proto.Clone(w.next).(*meshfedv1.StoredAuthority)
		stripServerMeta(next.Meta)
		payload, err := proto.Marshal(next)
		if err != nil {
			return 0, err
		}
		rw.Payload = payload
		b.Writes = append(b.Writes, rw)
	}
	res, err := s.applyBatch(ctx, b)
	if err != nil && res == nil {
		return 0, err
	}
	if res.Err != nil {
		if errors.Is(res.Err, state.ErrVersionMismatch) || errors.Is(res.Err, state.ErrAlreadyExists) || errors.Is(res.Err, state.ErrNotFound) {
			return 0, status.Error(codes.Aborted, "the authorities changed while this step ran (another rotation?); run it again")
		}
		return 0, res.Err
	}
	return res.Index, nil
}

func rotationStatus(err error) error {
	switch {
	case errors.Is(err, ca.ErrRotationState):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ca.ErrInvalidParams), errors.Is(err, ca.ErrInvalidAuthority), errors.Is(err, ca.ErrInvalidKey):
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return err
}

// ImportAuthority stores an operator's root (with its key, or with an
// intermediate and the intermediate's key) as the prepared authority; the
// activate and retire steps then move the cluster onto it like onto a
// generated one.
func (a *apiServer) ImportAuthority(ctx context.Context, req *meshfedv1.ImportAuthorityRequest) (*meshfedv1.Authority, error) {
	s := a.s
	if req.GetRootPem() == "" {
		return nil, status.Error(codes.InvalidArgument, "invalid root_pem: required")
	}
	if req.GetPrivateKeyPem() == "" {
		return nil, status.Error(codes.InvalidArgument, "invalid private_key_pem: required")
	}
	imported, err := ca.ImportAuthority(ca.ImportParams{
		TrustDomain: s.td, RootPEM: req.GetRootPem(), IntermediatePEM: req.GetIntermediatePem(),
		KeyPEM: req.GetPrivateKeyPem(), IntermediateTTL: s.intermediateTTL(),
	})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	rot, _, err := s.rotation()
	if err != nil {
		return nil, toStatus(err)
	}
	next, err := rot.Stage(imported, time.Now())
	if err != nil {
		return nil, rotationStatus(err)
	}
	writes := []authorityWrite{{next: next}}
	if rot.Active != nil {
		writes = append(writes, authorityWrite{next: rot.Active, unchanged: true})
	}
	if _, err := s.writeAuthorities(ctx, writes...); err != nil {
		return nil, toStatus(err)
	}
	s.log.Info("imported authority", "authority", next.GetAuthority().GetId())
	return next.GetAuthority(), nil
}

// algorithmName is how the CLI spells a key algorithm (ecdsa-p256).
func algorithmName(a meshfedv1.KeyAlgorithm) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(a.String(), "KEY_ALGORITHM_")), "_", "-")
}

// peersBehind names the established peerings whose peer has not
// acknowledged bundle sequence seq (or later).
func (s *Server) peersBehind(seq uint64) ([]string, error) {
	all, err := s.peerings()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range all {
		if p.GetPeerBundle() == nil || p.GetPeerTrustDomain() == "" || deleting(p) {
			continue
		}
		if s.links.ackedSeq(p.GetMeta().GetName()) < seq {
			out = append(out, p.GetMeta().GetName())
		}
	}
	return out, nil
}

// establishedPeers counts the peerings with a peer bundle.
func (s *Server) establishedPeers() int {
	all, _ := s.peerings()
	n := 0
	for _, p := range all {
		if p.GetPeerBundle() != nil && p.GetPeerTrustDomain() != "" && !deleting(p) {
			n++
		}
	}
	return n
}
