package state

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// testTime is the proposal time stamped on test writes.
var testTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newTestStore(t testing.TB) *Store {
	t.Helper()
	s, err := NewStore()
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	return s
}

// upsertWrite builds the write of r with the kind found by KindOf.
func upsertWrite(t testing.TB, r Resource) *meshfedv1.ResourceWrite {
	t.Helper()
	kind, ok := KindOf(r)
	if !ok {
		t.Fatalf("KindOf(%T): not a resource", r)
	}
	payload, err := proto.Marshal(r)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return &meshfedv1.ResourceWrite{
		Kind:      kind,
		Payload:   payload,
		Namespace: r.GetMeta().GetNamespace(),
		Name:      r.GetMeta().GetName(),
		Time:      timestamppb.New(testTime),
	}
}

// apply runs fn in a write transaction at idx and commits it.
func apply(t testing.TB, s *Store, idx uint64, fn func(tx *Txn) error) error {
	t.Helper()
	tx := s.WriteTxn(idx)
	defer tx.Abort()
	if err := fn(tx); err != nil {
		return err
	}
	tx.Commit()
	return nil
}

// mustUpsert stores r at idx and returns the stored object.
func mustUpsert(t testing.TB, s *Store, idx uint64, r Resource) Resource {
	t.Helper()
	var out Resource
	err := apply(t, s, idx, func(tx *Txn) error {
		var err error
		out, err = tx.Upsert(upsertWrite(t, r))
		return err
	})
	if err != nil {
		t.Fatalf("upsert %v at %d: %v", r, idx, err)
	}
	return out
}

func service(ns, name string, port uint32) *meshfedv1.Service {
	return &meshfedv1.Service{
		Meta:     &meshfedv1.Meta{Namespace: ns, Name: name},
		Port:     port,
		Protocol: meshfedv1.Protocol_PROTOCOL_HTTP,
	}
}

func workload(ns, name, svc, addr string) *meshfedv1.Workload {
	return &meshfedv1.Workload{
		Meta:     &meshfedv1.Meta{Namespace: ns, Name: name},
		Service:  svc,
		Address:  addr,
		Port:     8080,
		Health:   meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY,
		Locality: &meshfedv1.Locality{Region: "eu-west-1", Zone: "eu-west-1a"},
		SpiffeId: "spiffe://example.org/ns/" + ns + "/sa/" + svc,
		Version:  "v1",
	}
}

func names(items []Resource) []string {
	out := make([]string, len(items))
	for i, r := range items {
		m := r.GetMeta()
		if m.GetNamespace() != "" {
			out[i] = m.GetNamespace() + "/" + m.GetName()
		} else {
			out[i] = m.GetName()
		}
	}
	return out
}
