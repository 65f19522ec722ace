// Package state owns the server's replicated state: every resource kind in a
// go-memdb database, written by the FSM one Raft index at a time and read by
// the API through blocking queries built on memdb watch sets.
//
// Objects returned by any read or write are shared with the database and with
// every other reader: they must never be mutated. Clone them first
// (proto.Clone) to change anything.
package state

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/hashicorp/go-memdb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	// ErrNotFound is returned by a write that requires an existing resource
	// (must_exist, delete) when there is none.
	ErrNotFound = errors.New("not found")

	// ErrAlreadyExists is returned by an upsert with must_not_exist when the
	// resource exists, and by a token upsert whose secret hash another token
	// already has.
	ErrAlreadyExists = errors.New("already exists")

	// ErrVersionMismatch is returned by a write whose non-zero expected
	// version differs from the stored version (0 when the resource is
	// missing). The message carries the stored version.
	ErrVersionMismatch = errors.New("version mismatch")

	// ErrUnknownKind is returned for a ResourceKind that is not stored.
	ErrUnknownKind = errors.New("unknown resource kind")

	// ErrInvalidWrite is returned for a malformed write: an undecodable
	// payload, a missing name, a namespace on a cluster-scoped kind (or none
	// on a namespaced one), or a key that disagrees with the payload's meta.
	ErrInvalidWrite = errors.New("invalid write")
)

// Store is the replicated state. All methods are safe for concurrent use;
// writes are serialised by memdb, and the FSM is the only writer.
type Store struct {
	// db is swapped as a whole by Restore.
	db atomic.Pointer[database]
}

// database is one generation of the store: a memdb and the channel closed
// when a restore replaces it.
type database struct {
	mem       *memdb.MemDB
	abandonCh chan struct{}
	// keys is the id indexes' memo (idIndexer), and scratch what write
	// transactions reuse; both belong to the holder of memdb's writer lock.
	keys    *keyMemo
	scratch *txnScratch
}

// NewStore returns an empty store.
func NewStore() (*Store, error) {
	d, err := newDatabase()
	if err != nil {
		return nil, err
	}
	s := &Store{}
	s.db.Store(d)
	return s, nil
}

func newDatabase() (*database, error) {
	keys := &keyMemo{}
	mem, err := memdb.NewMemDB(schema(keys))
	if err != nil {
		return nil, fmt.Errorf("creating state database: %w", err)
	}
	// Every table gets its index row now: watching a missing row would
	// watch memdb's nearest node, which other kinds' rows share.
	tx := mem.Txn(true)
	defer tx.Abort()
	for _, info := range kinds {
		if err := setIndex(tx, info.Table, 0, nil); err != nil {
			return nil, err
		}
	}
	tx.Commit()
	return &database{mem: mem, abandonCh: make(chan struct{}), keys: keys}, nil
}

// AbandonCh is closed when a snapshot restore replaces the store's contents.
// Every read adds it to its watch set, so a restore wakes every watcher, which
// then reads again from the restored state.
func (s *Store) AbandonCh() <-chan struct{} {
	return s.db.Load().abandonCh
}

// KindIndex returns the Raft index of the last change to any resource of
// kind (0 if none or unknown). With a non-nil ws it adds a watch that fires
// on the next change to that kind or a restore: a cheap way to watch a whole
// kind.
func (s *Store) KindIndex(ws memdb.WatchSet, kind meshfedv1.ResourceKind) uint64 {
	d := s.db.Load()
	tx := d.mem.Txn(false)
	defer tx.Abort()
	info, ok := LookupKind(kind)
	if !ok {
		return 0
	}
	return kindIndexTxn(tx, ws, d, info.Table)
}

// LatestIndex returns the Raft index of the last change to any resource.
func (s *Store) LatestIndex() uint64 {
	tx := s.db.Load().mem.Txn(false)
	defer tx.Abort()
	return latestIndexTxn(tx)
}

// kindIndexTxn reads a table's index, watching its row and the abandon
// channel when ws is set.
func kindIndexTxn(tx *memdb.Txn, ws memdb.WatchSet, d *database, table string) uint64 {
	return indexRowTxn(tx, ws, d, table).Index
}

// indexRowTxn reads a table's index row, watching it and the abandon
// channel when ws is set.
func indexRowTxn(tx *memdb.Txn, ws memdb.WatchSet, d *database, table string) *indexRow {
	var key any = table
	if k := rowKeys[table]; k != nil {
		key = k
	}
	ch, raw, err := tx.FirstWatch(indexTable, indexID, key)
	if err != nil {
		// The index table and its indexer are static; this cannot happen.
		panic(fmt.Sprintf("state: reading index row %q: %v", table, err))
	}
	if ws != nil {
		ws.Add(ch)
		ws.Add(d.abandonCh)
	}
	if raw == nil {
		return &indexRow{Table: table}
	}
	return raw.(*indexRow)
}
