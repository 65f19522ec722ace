package ca

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// A rotation moves the cluster from one authority to the next in three
// steps, each a single replicated write, so that every server sees the same
// authorities at the same Raft index and none ever signs with a key the
// others lack:
//
//	prepare   a new authority is PREPARED: its root joins the bundle, it
//	          does not sign yet. Its intermediate is cross-signed by the
//	          active root, so leaves it signs later verify against either.
//	activate  once watchers have the new bundle, the PREPARED authority
//	          becomes ACTIVE and the active one RETIRING (still in the
//	          bundle, signs nothing).
//	retire    once no watcher presents an SVID of the RETIRING authority,
//	          it becomes RETIRED: its root leaves the bundle, its keys are
//	          dropped, and the active authority stops sending the
//	          cross-signed intermediate.

// Rotation is where a cluster's authorities are in a rotation.
type Rotation struct {
	// Active signs; it is nil only before bootstrap.
	Active *meshfedv1.StoredAuthority
	// Prepared is the authority waiting to be activated, if any.
	Prepared *meshfedv1.StoredAuthority
	// Retiring is the authority waiting to be retired, if any.
	Retiring *meshfedv1.StoredAuthority
}

// RotationOf sorts the authorities by state. It refuses sets a rotation
// never produces: more than one authority in the same live state.
func RotationOf(auths []*meshfedv1.StoredAuthority) (Rotation, error) {
	var r Rotation
	for _, a := range auths {
		var slot **meshfedv1.StoredAuthority
		switch a.GetAuthority().GetState() {
		case meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE:
			slot = &r.Active
		case meshfedv1.AuthorityState_AUTHORITY_STATE_PREPARED:
			slot = &r.Prepared
		case meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRING:
			slot = &r.Retiring
		default:
			continue
		}
		if *slot != nil {
			return Rotation{}, fmt.Errorf("%w: authorities %q and %q are both %v", ErrInvalidAuthority,
				(*slot).GetAuthority().GetId(), a.GetAuthority().GetId(), a.GetAuthority().GetState())
		}
		*slot = a
	}
	return r, nil
}

// Next is the step a rotation in progress waits at: ACTIVATE when an
// authority is prepared, RETIRE when one is retiring, UNSPECIFIED when no
// rotation is in progress.
func (r Rotation) Next() meshfedv1.RotationStep {
	switch {
	case r.Prepared != nil:
		return meshfedv1.RotationStep_ROTATION_STEP_ACTIVATE
	case r.Retiring != nil:
		return meshfedv1.RotationStep_ROTATION_STEP_RETIRE
	}
	return meshfedv1.RotationStep_ROTATION_STEP_UNSPECIFIED
}

// Prepare returns a new PREPARED authority made with p. When the active
// authority holds its root key, the new intermediate is cross-signed by
// that root.
func (r Rotation) Prepare(p GenerateParams) (*meshfedv1.StoredAuthority, error) {
	if r.Active == nil {
		return nil, fmt.Errorf("%w: there is no active authority", ErrRotationState)
	}
	if r.Prepared != nil {
		return nil, fmt.Errorf("%w: authority %q is already prepared", ErrRotationState, r.Prepared.GetAuthority().GetId())
	}
	if r.Retiring != nil {
		return nil, fmt.Errorf("%w: authority %q must be retired first", ErrRotationState, r.Retiring.GetAuthority().GetId())
	}
	next, err := GenerateAuthority(p)
	if err != nil {
		return nil, err
	}
	next.Authority.State = meshfedv1.AuthorityState_AUTHORITY_STATE_PREPARED
	next.Authority.StateTime = timestamppb.New(p.Now)
	if len(r.Active.GetRootKey()) > 0 {
		if err := CrossSign(next, r.Active, p.Now); err != nil {
			return nil, err
		}
	}
	return next, nil
}

// Stage makes an imported authority the prepared one, cross-signing its
// intermediate with the active root when both allow it.
func (r Rotation) Stage(imported *meshfedv1.StoredAuthority, now time.Time) (*meshfedv1.StoredAuthority, error) {
	if r.Prepared != nil {
		return nil, fmt.Errorf("%w: authority %q is already prepared", ErrRotationState, r.Prepared.GetAuthority().GetId())
	}
	if r.Retiring != nil {
		return nil, fmt.Errorf("%w: authority %q must be retired first", ErrRotationState, r.Retiring.GetAuthority().GetId())
	}
	next := proto.Clone(imported).(*meshfedv1.StoredAuthority)
	next.Authority.State = meshfedv1.AuthorityState_AUTHORITY_STATE_PREPARED
	next.Authority.StateTime = timestamppb.New(now)
	if r.Active != nil && len(r.Active.GetRootKey()) > 0 {
		if err := CrossSign(next, r.Active, now); err != nil {
			return nil, err
		}
	}
	return next, nil
}

// Activate returns the prepared authority as ACTIVE and the active one as
// RETIRING.
func (r Rotation) Activate(now time.Time) (active, retiring *meshfedv1.StoredAuthority, err error) {
	if r.Prepared == nil {
		return nil, nil, fmt.Errorf("%w: no authority is prepared", ErrRotationState)
	}
	if r.Retiring != nil {
		return nil, nil, fmt.Errorf("%w: authority %q must be retired first", ErrRotationState, r.Retiring.GetAuthority().GetId())
	}
	active = stateCopy(r.Prepared, meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE, now)
	if r.Active != nil {
		retiring = stateCopy(r.Active, meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRING, now)
	}
	return active, retiring, nil
}

// Retire returns the retiring authority as RETIRED, without its private
// keys, and the active one without its cross-signed intermediate: from now
// on leaves chain only to the new root.
func (r Rotation) Retire(now time.Time) (active, retired *meshfedv1.StoredAuthority, err error) {
	if r.Retiring == nil {
		return nil, nil, fmt.Errorf("%w: no authority is retiring", ErrRotationState)
	}
	retired = stateCopy(r.Retiring, meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRED, now)
	retired.RootKey, retired.IntermediateKey = nil, nil
	if r.Active != nil {
		active = proto.Clone(r.Active).(*meshfedv1.StoredAuthority)
		active.Authority.CrossSignedIntermediatePem = ""
	}
	return active, retired, nil
}

func stateCopy(a *meshfedv1.StoredAuthority, st meshfedv1.AuthorityState, now time.Time) *meshfedv1.StoredAuthority {
	out := proto.Clone(a).(*meshfedv1.StoredAuthority)
	out.Authority.State = st
	out.Authority.StateTime = timestamppb.New(now)
	return out
}
