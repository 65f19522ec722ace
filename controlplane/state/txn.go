package state

import (
	"fmt"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// Txn is a write transaction: the FSM opens one per batch of Raft logs so
// that a whole batch becomes visible to readers at once. Each Upsert or
// Delete either fully applies or changes nothing, so a failing command does
// not prevent the others of its batch from committing.
//
// A Txn is not safe for concurrent use. Always call Abort (deferred) or
// Commit; Abort after Commit is a no-op.
type Txn struct {
	db  *database
	tx  *memdb.Txn
	idx uint64
}

// WriteTxn opens a write transaction whose writes are stamped with the Raft
// index idx. Only one write transaction runs at a time; others block.
func (s *Store) WriteTxn(idx uint64) *Txn {
	d := s.db.Load()
	return &Txn{db: d, tx: d.mem.Txn(true), idx: idx}
}

// SetIndex changes the Raft index stamped on the following writes. The FSM
// calls it before each log of a batch: a resource's version must be the
// index of the log that changed it, whatever the batching (which differs
// between servers).
func (t *Txn) SetIndex(idx uint64) { t.idx = idx }

// Index returns the Raft index writes are stamped with.
func (t *Txn) Index() uint64 { return t.idx }

// Commit makes the transaction's writes visible and fires the watches of
// what changed.
func (t *Txn) Commit() { t.tx.Commit() }

// Abort discards the transaction's writes.
func (t *Txn) Abort() { t.tx.Abort() }

// Upsert creates or replaces the resource carried by w and returns the
// stored object. The stored object is w's payload with meta.name and
// meta.namespace set to its key, meta.version set to the transaction's
// index, meta.create_version and meta.create_time kept from the existing
// resource (else the index and w.time), and meta.update_time set to w.time.
//
// It fails, changing nothing, with ErrAlreadyExists (must_not_exist, or a
// token whose secret hash another token has), ErrNotFound (must_exist),
// ErrVersionMismatch (expected_version), ErrUnknownKind or ErrInvalidWrite.
func (t *Txn) Upsert(w *meshfedv1.ResourceWrite) (Resource, error) {
	info, ok := LookupKind(w.GetKind())
	if !ok {
		return nil, fmt.Errorf("%w: %v", ErrUnknownKind, w.GetKind())
	}
	if w.GetMustExist() && w.GetMustNotExist() {
		return nil, fmt.Errorf("%w: must_exist and must_not_exist are both set", ErrInvalidWrite)
	}
	obj := info.New()
	if err := proto.Unmarshal(w.GetPayload(), obj); err != nil {
		return nil, fmt.Errorf("%w: decoding %v payload: %v", ErrInvalidWrite, w.GetKind(), err)
	}
	meta := mutableMeta(obj)
	ns, name, err := writeKey(info, w.GetNamespace(), w.GetName(), meta)
	if err != nil {
		return nil, err
	}
	key := idKey(ns, name)

	raw, err := t.tx.First(info.Table, indexIDName, key)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", describe(info, ns, name), err)
	}
	var existing Resource
	if raw != nil {
		existing = raw.(Resource)
	}
	if err := checkConditions(info, ns, name, existing, w); err != nil {
		return nil, err
	}
	if tok, ok := obj.(*meshfedv1.Token); ok && len(tok.GetSecretHash()) > 0 {
		other, err := t.tx.First(info.Table, tokenSecretHashIndex.name, tok.GetSecretHash())
		if err != nil {
			return nil, fmt.Errorf("reading tokens by secret hash: %w", err)
		}
		if other != nil && resourceID(other.(Resource)) != key {
			return nil, fmt.Errorf("%w: another token has the secret hash of %s",
				ErrAlreadyExists, describe(info, ns, name))
		}
	}

	// Every condition holds; from here on the write cannot fail short of a
	// schema bug.
	meta.Name = name
	meta.Namespace = ns
	meta.Version = t.idx
	// w is decoded per command and never stored, but clone anyway: the
	// stored object must not share a mutable message with the caller.
	var now *timestamppb.Timestamp
	if w.GetTime() != nil {
		now = proto.Clone(w.GetTime()).(*timestamppb.Timestamp)
	}
	meta.UpdateTime = now
	if existing != nil {
		// Sharing create_time with the existing object is safe: stored
		// objects are immutable.
		meta.CreateVersion = existing.GetMeta().GetCreateVersion()
		meta.CreateTime = existing.GetMeta().GetCreateTime()
	} else {
		meta.CreateVersion = t.idx
		meta.CreateTime = now
	}
	if wl, ok := obj.(*meshfedv1.Workload); ok {
		t.shareWorkloadFields(wl, existing)
	}
	if err := t.tx.Insert(info.Table, obj); err != nil {
		return nil, fmt.Errorf("storing %s: %w", describe(info, ns, name), err)
	}
	if err := setIndex(t.tx, info.Table, t.idx); err != nil {
		return nil, err
	}
	return obj, nil
}

// Delete removes the resource named by w and returns it. It fails, changing
// nothing, with ErrNotFound when the resource does not exist and with
// ErrVersionMismatch when w.expected_version is set and differs.
func (t *Txn) Delete(w *meshfedv1.ResourceWrite) (Resource, error) {
	info, ok := LookupKind(w.GetKind())
	if !ok {
		return nil, fmt.Errorf("%w: %v", ErrUnknownKind, w.GetKind())
	}
	ns, name, err := writeKey(info, w.GetNamespace(), w.GetName(), nil)
	if err != nil {
		return nil, err
	}
	raw, err := t.tx.First(info.Table, indexIDName, idKey(ns, name))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", describe(info, ns, name), err)
	}
	if raw == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, describe(info, ns, name))
	}
	existing := raw.(Resource)
	if err := checkVersion(info, ns, name, existing, w.GetExpectedVersion()); err != nil {
		return nil, err
	}
	if err := t.tx.Delete(info.Table, existing); err != nil {
		return nil, fmt.Errorf("deleting %s: %w", describe(info, ns, name), err)
	}
	if err := setIndex(t.tx, info.Table, t.idx); err != nil {
		return nil, err
	}
	return existing, nil
}

// writeKey returns the namespace and name a write applies to: those of the
// write, else those of the payload's meta; when both are set they must agree.
func writeKey(info KindInfo, ns, name string, meta *meshfedv1.Meta) (string, string, error) {
	if meta != nil {
		if name == "" {
			name = meta.GetName()
		} else if m := meta.GetName(); m != "" && m != name {
			return "", "", fmt.Errorf("%w: %v: write names %q but payload names %q",
				ErrInvalidWrite, info.Kind, name, m)
		}
		if ns == "" {
			ns = meta.GetNamespace()
		} else if m := meta.GetNamespace(); m != "" && m != ns {
			return "", "", fmt.Errorf("%w: %v: write is in namespace %q but payload in %q",
				ErrInvalidWrite, info.Kind, ns, m)
		}
	}
	switch {
	case name == "":
		return "", "", fmt.Errorf("%w: %v: missing name", ErrInvalidWrite, info.Kind)
	case info.Namespaced && ns == "":
		return "", "", fmt.Errorf("%w: %v %q: missing namespace", ErrInvalidWrite, info.Kind, name)
	case !info.Namespaced && ns != "":
		return "", "", fmt.Errorf("%w: %v %q is cluster-scoped but has namespace %q",
			ErrInvalidWrite, info.Kind, name, ns)
	}
	return ns, name, nil
}

func checkConditions(info KindInfo, ns, name string, existing Resource, w *meshfedv1.ResourceWrite) error {
	if w.GetMustNotExist() && existing != nil {
		return fmt.Errorf("%w: %s", ErrAlreadyExists, describe(info, ns, name))
	}
	if w.GetMustExist() && existing == nil {
		return fmt.Errorf("%w: %s", ErrNotFound, describe(info, ns, name))
	}
	return checkVersion(info, ns, name, existing, w.GetExpectedVersion())
}

func checkVersion(info KindInfo, ns, name string, existing Resource, expected uint64) error {
	if expected == 0 {
		return nil
	}
	var stored uint64
	if existing != nil {
		stored = existing.GetMeta().GetVersion()
	}
	if stored != expected {
		return fmt.Errorf("%w: %s: stored version %d, expected %d",
			ErrVersionMismatch, describe(info, ns, name), stored, expected)
	}
	return nil
}

// describe names a resource in errors: "service default/web", "token abc".
func describe(info KindInfo, ns, name string) string {
	kind := kindLabel(info.Kind)
	if ns == "" {
		return fmt.Sprintf("%s %q", kind, name)
	}
	return fmt.Sprintf("%s %q", kind, ns+"/"+name)
}
