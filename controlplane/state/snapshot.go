package state

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// SnapshotFormat is the format number written in snapshot headers. Restore
// refuses any other.
const SnapshotFormat = 1

// maxRecordSize bounds one snapshot record, so that a corrupt length prefix
// cannot make Restore allocate without limit.
const maxRecordSize = 64 << 20

// clusterRecordName is the name of the one ClusterRecord.
const clusterRecordName = "cluster"

// Snapshot is a point-in-time view of the store, taken cheaply (memdb is
// immutable) and persisted while writes go on.
type Snapshot struct {
	tx *memdb.Txn
}

// Snapshot returns a view of the current state. Call Release when done.
func (s *Store) Snapshot() *Snapshot {
	return &Snapshot{tx: s.db.Load().mem.Txn(false)}
}

// Release frees the snapshot.
func (s *Snapshot) Release() { s.tx.Abort() }

// Persist writes the snapshot: a SnapshotHeader, then one SnapshotRecord per
// resource, kinds in ResourceKind order and resources in key order, each
// length-delimited (protodelim).
func (s *Snapshot) Persist(w io.Writer) error {
	bw := bufio.NewWriter(w)
	hdr := &meshfedv1.SnapshotHeader{Format: SnapshotFormat, Index: latestIndexTxn(s.tx)}
	clusters, _ := LookupKind(meshfedv1.ResourceKind_RESOURCE_KIND_CLUSTER)
	if raw, err := s.tx.First(clusters.Table, indexIDName, idKey("", clusterRecordName)); err == nil && raw != nil {
		c := raw.(*meshfedv1.ClusterRecord)
		hdr.Cluster, hdr.TrustDomain = c.GetCluster(), c.GetTrustDomain()
	}
	if _, err := protodelim.MarshalTo(bw, hdr); err != nil {
		return fmt.Errorf("writing snapshot header: %w", err)
	}
	opts := proto.MarshalOptions{Deterministic: true}
	rec := &meshfedv1.SnapshotRecord{}
	var buf []byte
	write := func(info KindInfo, r Resource) error {
		var err error
		buf, err = opts.MarshalAppend(buf[:0], r)
		if err != nil {
			return fmt.Errorf("encoding %s %s: %w", info.Table, resourceID(r), err)
		}
		rec.Kind, rec.Payload = info.Kind, buf
		if _, err := protodelim.MarshalTo(bw, rec); err != nil {
			return fmt.Errorf("writing snapshot record: %w", err)
		}
		return nil
	}
	for _, info := range kinds {
		if info.Table == workloadsTable {
			var err error
			readWorkloads(s.tx, nil, nil).all(func(w *meshfedv1.Workload) bool {
				err = write(info, w)
				return err == nil
			})
			if err != nil {
				return err
			}
			continue
		}
		it, err := s.tx.Get(info.Table, indexIDName)
		if err != nil {
			return fmt.Errorf("reading %s: %w", info.Table, err)
		}
		for raw := it.Next(); raw != nil; raw = it.Next() {
			if err := write(info, raw.(Resource)); err != nil {
				return err
			}
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing snapshot: %w", err)
	}
	return nil
}

// Restore replaces the store's contents with a snapshot written by Persist.
// The snapshot is read into a new database, which replaces the current one
// only when all of it has been read: on error the current state is left
// untouched. After the swap, AbandonCh's old channel is closed so every
// watcher wakes and reads the restored state.
//
// The index of every kind becomes the snapshot's index (or the highest
// version restored, if greater): the index of a kind's last deletion is not
// in the snapshot, and indexes must not go backwards.
//
// Restore must not run concurrently with a write transaction; Raft
// guarantees that for the FSM.
func (s *Store) Restore(r io.Reader) error {
	d, err := newDatabase()
	if err != nil {
		return err
	}
	br := bufio.NewReader(r)
	in := protodelim.UnmarshalOptions{MaxSize: maxRecordSize}
	hdr := &meshfedv1.SnapshotHeader{}
	if err := in.UnmarshalFrom(br, hdr); err != nil {
		return fmt.Errorf("reading snapshot header: %w", err)
	}
	if hdr.GetFormat() != SnapshotFormat {
		return fmt.Errorf("unsupported snapshot format %d (want %d)", hdr.GetFormat(), SnapshotFormat)
	}

	tx := d.mem.Txn(true)
	defer tx.Abort()
	workloads := &workloadSet{gen: txnGen.Add(1)}
	index := hdr.GetIndex()
	rec := &meshfedv1.SnapshotRecord{}
	for n := 0; ; n++ {
		if err := in.UnmarshalFrom(br, rec); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("reading snapshot record %d: %w", n, err)
		}
		info, ok := LookupKind(rec.GetKind())
		if !ok {
			return fmt.Errorf("snapshot record %d: %w: %v", n, ErrUnknownKind, rec.GetKind())
		}
		obj := info.New()
		if err := proto.Unmarshal(rec.GetPayload(), obj); err != nil {
			return fmt.Errorf("snapshot record %d: decoding %s: %w", n, info.Table, err)
		}
		meta := mutableMeta(obj)
		if _, _, err := writeKey(info, "", "", meta); err != nil {
			return fmt.Errorf("snapshot record %d: %w", n, err)
		}
		if w, ok := obj.(*meshfedv1.Workload); ok {
			workloads.restoreWorkload(w)
		} else if err := tx.Insert(info.Table, obj); err != nil {
			return fmt.Errorf("snapshot record %d: storing %s: %w", n, resourceID(obj), err)
		}
		index = max(index, meta.GetVersion())
	}
	workloads.buildGroups()
	for _, info := range kinds {
		var set *workloadSet
		if info.Table == workloadsTable && workloads.namespaces.root != nil {
			set = workloads
		}
		if err := setIndex(tx, info.Table, index, set); err != nil {
			return err
		}
	}
	tx.Commit()

	old := s.db.Swap(d)
	close(old.abandonCh)
	return nil
}
