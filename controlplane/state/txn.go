package state

import (
	"fmt"
	"sync/atomic"

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
	// gen identifies the transaction as the owner of the workload set,
	// service groups and B+ tree nodes it made, which it changes in place.
	gen uint64

	// read is the state as the transaction started (it holds the writer
	// lock, so nothing commits meanwhile), and txnScratch.written what the
	// transaction wrote over it. Reads go through these, not through tx:
	// memdb's reads of an index the transaction changed clone the index's
	// radix transaction, which drops its cache of the nodes already copied,
	// so that every following write of a batch copied its whole path
	// again.
	read *memdb.Txn
	*txnScratch

	// workloads is every workload, once the transaction changed one.
	workloads *workloadSet
}

// txnScratch is what a write transaction tracks, reused by the next one
// of its database: memdb's writer lock, which a write transaction holds,
// guards database.scratch.
type txnScratch struct {
	// written is, per kind (in kinds order), what the transaction wrote
	// (nil for a deletion).
	written []map[resourceKey]Resource
	// changed is, per kind, the index of the transaction's last write to
	// it, 0 for none: Commit writes the index table once per kind instead
	// of once per write.
	changed []uint64
}

// txnGen numbers write transactions.
var txnGen atomic.Uint64

// WriteTxn opens a write transaction whose writes are stamped with the Raft
// index idx. Only one write transaction runs at a time; others block.
func (s *Store) WriteTxn(idx uint64) *Txn {
	d := s.db.Load()
	t := &Txn{db: d, tx: d.mem.Txn(true), idx: idx, gen: txnGen.Add(1)}
	t.txnScratch, d.scratch = d.scratch, nil
	if t.txnScratch == nil {
		t.txnScratch = &txnScratch{written: make([]map[resourceKey]Resource, len(kinds)), changed: make([]uint64, len(kinds))}
	}
	return t
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
func (t *Txn) Commit() {
	if t.tx == nil {
		return
	}
	for i, idx := range t.changed {
		if idx == 0 {
			continue
		}
		var workloads *workloadSet
		if kinds[i].Table == workloadsTable {
			workloads = t.workloadsForRead()
		}
		if err := setIndex(t.tx, kinds[i].Table, idx, workloads); err != nil {
			panic(fmt.Sprintf("state: %v", err))
		}
	}
	tx := t.done()
	tx.Commit()
}

// Abort discards the transaction's writes.
func (t *Txn) Abort() {
	if t.tx == nil {
		return
	}
	t.done().Abort()
}

// done ends the transaction, handing its scratch back to the database,
// and returns the memdb transaction to commit or abort: that releases the
// writer lock, so it comes last.
func (t *Txn) done() *memdb.Txn {
	s := t.txnScratch
	for _, m := range s.written {
		clear(m)
	}
	clear(s.changed)
	t.db.scratch = s
	tx := t.tx
	t.tx, t.read, t.txnScratch, t.workloads = nil, nil, nil, nil
	return tx
}

// committed returns a read transaction on the state the transaction
// started from.
func (t *Txn) committed() *memdb.Txn {
	if t.read == nil {
		t.read = t.db.mem.Txn(false)
	}
	return t.read
}

// resourceKey keys written: unlike the id key, it needs no allocation.
type resourceKey struct{ namespace, name string }

// current returns the stored resource of info's kind named ns/name, whose
// id key is key, as this transaction sees it.
func (t *Txn) current(info KindInfo, ns, name string, key []byte) (Resource, error) {
	if r, ok := t.written[int(info.Kind)-1][resourceKey{ns, name}]; ok {
		return r, nil
	}
	if info.Table == workloadsTable {
		if w := t.workloadsForRead().get(ns, name); w != nil {
			return w, nil
		}
		return nil, nil
	}
	raw, err := t.committed().First(info.Table, indexIDName, key)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", describe(info, ns, name), err)
	}
	if raw == nil {
		return nil, nil
	}
	return raw.(Resource), nil
}

// wrote records a successful write of r (nil: a deletion) of ns/name.
func (t *Txn) wrote(info KindInfo, ns, name string, r Resource) {
	i := int(info.Kind) - 1
	t.changed[i] = t.idx
	if info.Table == workloadsTable {
		// The transaction's workload set has it.
		return
	}
	if t.written[i] == nil {
		t.written[i] = make(map[resourceKey]Resource)
	}
	t.written[i][resourceKey{ns, name}] = r
}

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
	if info.Kind == meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD && fastWorkloadDecode {
		if p, ok := parseWorkload(w.GetPayload()); ok && p.keyIs(w.GetNamespace(), w.GetName()) {
			return t.upsertWorkload(info, w, &p)
		}
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
	key := idKeyBytes(ns, name)

	existing, err := t.current(info, ns, name, key)
	if err != nil {
		return nil, err
	}
	if err := checkConditions(info, ns, name, existing, w); err != nil {
		return nil, err
	}
	if tok, ok := obj.(*meshfedv1.Token); ok && len(tok.GetSecretHash()) > 0 {
		// Tokens are few and rarely written: reading through tx is fine.
		other, err := t.tx.First(info.Table, tokenSecretHashIndex.name, tok.GetSecretHash())
		if err != nil {
			return nil, fmt.Errorf("reading tokens by secret hash: %w", err)
		}
		if other != nil && resourceID(other.(Resource)) != string(key) {
			return nil, fmt.Errorf("%w: another token has the secret hash of %s",
				ErrAlreadyExists, describe(info, ns, name))
		}
	}

	// Every condition holds; from here on the write cannot fail short of a
	// schema bug.
	meta.Name = name
	meta.Namespace = ns
	if wl, ok := obj.(*meshfedv1.Workload); ok {
		old, _ := existing.(*meshfedv1.Workload)
		shareWorkloadFields(wl, t.workloadSibling(old, ns, wl.GetService()))
	}
	return t.store(info, w, obj, existing, key, stamps{})
}

// upsertWorkload is Upsert of a workload whose payload parseWorkload took
// and whose key is the write's.
func (t *Txn) upsertWorkload(info KindInfo, w *meshfedv1.ResourceWrite, p *workloadPayload) (Resource, error) {
	ns, name := w.GetNamespace(), w.GetName()
	existing, err := t.current(info, ns, name, nil)
	if err != nil {
		return nil, err
	}
	if err := checkConditions(info, ns, name, existing, w); err != nil {
		return nil, err
	}
	old, _ := existing.(*meshfedv1.Workload)
	sib := old
	if old == nil || !p.serviceIs(old.GetService()) {
		sib = t.workloadSibling(old, ns, string(p.service))
	}
	obj, st := p.build(ns, name, sib, existing != nil)
	return t.store(info, w, obj, existing, nil, st)
}

// stamps are Timestamps allocated with an object for store to fill, nil
// for store to allocate.
type stamps struct{ update, create *timestamppb.Timestamp }

// store stores obj, whose conditions hold, in place of existing: it sets
// the versions and times of its meta (whose key is set), and updates the
// indexes.
func (t *Txn) store(info KindInfo, w *meshfedv1.ResourceWrite, obj, existing Resource, key []byte, st stamps) (Resource, error) {
	meta := obj.GetMeta()
	meta.Version = t.idx
	// The times are copies: w is the caller's, and pointing at the
	// existing object's create_time would keep alive all that was
	// allocated with it.
	meta.UpdateTime = copyTime(st.update, w.GetTime())
	if existing != nil {
		meta.CreateVersion = existing.GetMeta().GetCreateVersion()
		meta.CreateTime = copyTime(st.create, existing.GetMeta().GetCreateTime())
	} else {
		meta.CreateVersion = t.idx
		meta.CreateTime = meta.UpdateTime
	}
	if wl, ok := obj.(*meshfedv1.Workload); ok {
		old, _ := existing.(*meshfedv1.Workload)
		t.putWorkload(old, wl)
	} else {
		t.db.keys.set(obj, existing, key)
		if err := t.tx.Insert(info.Table, obj); err != nil {
			return nil, fmt.Errorf("storing %s: %w", describe(info, meta.GetNamespace(), meta.GetName()), err)
		}
	}
	t.wrote(info, meta.GetNamespace(), meta.GetName(), obj)
	return obj, nil
}

// copyTime returns a copy of ts, in slot if it is not nil; nil for nil.
func copyTime(slot, ts *timestamppb.Timestamp) *timestamppb.Timestamp {
	if ts == nil {
		return nil
	}
	if len(ts.ProtoReflect().GetUnknown()) != 0 {
		return proto.Clone(ts).(*timestamppb.Timestamp)
	}
	if slot == nil {
		slot = new(timestamppb.Timestamp)
	}
	slot.Seconds, slot.Nanos = ts.GetSeconds(), ts.GetNanos()
	return slot
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
	key := idKeyBytes(ns, name)
	existing, err := t.current(info, ns, name, key)
	if err != nil {
		return nil, err
	}
	if existing == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, describe(info, ns, name))
	}
	if err := checkVersion(info, ns, name, existing, w.GetExpectedVersion()); err != nil {
		return nil, err
	}
	if old, ok := existing.(*meshfedv1.Workload); ok {
		t.deleteWorkload(old)
	} else {
		t.db.keys.set(existing, nil, key)
		if err := t.tx.Delete(info.Table, existing); err != nil {
			return nil, fmt.Errorf("deleting %s: %w", describe(info, ns, name), err)
		}
	}
	t.wrote(info, ns, name, nil)
	return existing, nil
}

// Check reports whether w would apply (upsert when it has a payload,
// delete otherwise) without changing anything: its kind is known, it names
// its resource, and its existence and version conditions hold. The batch
// command checks every write before applying any.
func (t *Txn) Check(w *meshfedv1.ResourceWrite) error {
	info, ok := LookupKind(w.GetKind())
	if !ok {
		return fmt.Errorf("%w: %v", ErrUnknownKind, w.GetKind())
	}
	ns, name, err := writeKey(info, w.GetNamespace(), w.GetName(), nil)
	if err != nil {
		return err
	}
	existing, err := t.current(info, ns, name, idKeyBytes(ns, name))
	if err != nil {
		return err
	}
	if len(w.GetPayload()) == 0 {
		if existing == nil {
			return fmt.Errorf("%w: %s", ErrNotFound, describe(info, ns, name))
		}
		return checkVersion(info, ns, name, existing, w.GetExpectedVersion())
	}
	if w.GetMustExist() && w.GetMustNotExist() {
		return fmt.Errorf("%w: must_exist and must_not_exist are both set", ErrInvalidWrite)
	}
	return checkConditions(info, ns, name, existing, w)
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
