package controlplane

import (
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/ca"
	"github.com/meshfed/meshfed/controlplane/fsm"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
)

// recoverIdentity re-issues this server's certificate from the CA keys in
// its own Raft log, for a server whose certificate expired while it was
// down. Without it, a cluster whose servers were all stopped for longer than
// a certificate's lifetime could never form again: every server would refuse
// every other's expired certificate, so no leader could bring them fresh
// ones. Trust is anchored on the root, which every server holds; an
// intermediate that expired too is re-issued locally under the same root
// (the leader replaces it with a replicated one once elected).
func (s *Server) recoverIdentity(logs raft.LogStore) error {
	auths := map[string]*meshfedv1.StoredAuthority{}
	_, items, _, err := s.store().List(nil, listAll(meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY))
	if err != nil {
		return err
	}
	for _, it := range items {
		a := it.(*meshfedv1.StoredAuthority)
		auths[a.GetMeta().GetName()] = a
	}
	// The FSM holds only the last snapshot until a leader commits the rest:
	// read the authorities written after it from the log itself.
	first, err := logs.FirstIndex()
	if err != nil {
		return err
	}
	last, err := logs.LastIndex()
	if err != nil {
		return err
	}
	for i := max(first, 1); i <= last && first > 0; i++ {
		var l raft.Log
		if err := logs.GetLog(i, &l); err != nil {
			continue
		}
		if l.Type != raft.LogCommand || len(l.Data) == 0 {
			continue
		}
		t := fsm.MessageType(l.Data[0])
		if t != fsm.UpsertResourceType && t != fsm.DeleteResourceType {
			continue
		}
		w := &meshfedv1.ResourceWrite{}
		if err := proto.Unmarshal(l.Data[1:], w); err != nil || w.Kind != meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY {
			continue
		}
		if t == fsm.DeleteResourceType {
			delete(auths, w.Name)
			continue
		}
		a := &meshfedv1.StoredAuthority{}
		if err := proto.Unmarshal(w.Payload, a); err == nil {
			auths[w.Name] = a
		}
	}
	list := make([]*meshfedv1.StoredAuthority, 0, len(auths))
	for _, a := range auths {
		if a.GetAuthority().GetState() == meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE &&
			!time.Now().Before(a.GetAuthority().GetIntermediateNotAfter().AsTime()) {
			renewed, err := ca.RenewIntermediate(a, s.td, s.cfg.intermediateTTL, time.Now())
			if err != nil {
				return err
			}
			a = renewed
		}
		list = append(list, a)
	}
	if len(list) == 0 {
		return fmt.Errorf("no certificate authority in the local raft state")
	}
	if err := s.ca.SetAuthorities(list); err != nil {
		return err
	}
	if _, err := mfid.Server(s.td, s.cfg.NodeID); err != nil {
		return err
	}
	return s.id.signLocally()
}

// certificateExpired reports whether this server's certificate is expired
// or about to.
func (id *serverIdentity) certificateExpired() bool {
	id.mu.Lock()
	defer id.mu.Unlock()
	return len(id.chain) == 0 || time.Until(id.chain[0].NotAfter) < time.Minute
}
