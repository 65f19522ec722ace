package state

import (
	"fmt"

	"github.com/hashicorp/go-memdb"
)

// The index table records, per kind's table, the Raft index of the last
// change to that table, as Consul's does. Lists return it, and watching its
// row is how a whole kind is watched cheaply.
const (
	indexTable = "index"
	indexID    = "id"
)

// indexRow is one row of the index table. Rows are replaced, never mutated.
type indexRow struct {
	Table string
	Index uint64
	// workloads is, in the workloads row, every workload (catalog.go),
	// which changes exactly when the row does; nil in the other rows, or
	// before the first workload.
	workloads *workloadSet
}

func indexTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: indexTable,
		Indexes: map[string]*memdb.IndexSchema{
			indexID: {
				Name:    indexID,
				Unique:  true,
				Indexer: indexRowIndexer{},
			},
		},
	}
}

// rowKey is the key of a table's index row, made once: every transaction
// writes index rows and every read reads one. Passed to memdb as a pointer,
// it costs no allocation.
type rowKey struct{ key []byte }

var rowKeys = func() map[string]*rowKey {
	m := make(map[string]*rowKey, len(kinds))
	for _, info := range kinds {
		m[info.Table] = &rowKey{key: []byte(info.Table)}
	}
	return m
}()

// indexRowIndexer indexes index rows by table: its argument is a *rowKey
// or a table name.
type indexRowIndexer struct{}

func (indexRowIndexer) FromObject(raw any) (bool, []byte, error) {
	r, ok := raw.(*indexRow)
	if !ok {
		return false, nil, fmt.Errorf("unexpected object type %T", raw)
	}
	if k := rowKeys[r.Table]; k != nil {
		return true, k.key, nil
	}
	return true, []byte(r.Table), nil
}

func (indexRowIndexer) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("want one key argument, got %d", len(args))
	}
	switch a := args[0].(type) {
	case *rowKey:
		return a.key, nil
	case string:
		return []byte(a), nil
	default:
		return nil, fmt.Errorf("key argument must be a *rowKey or a string, got %T", a)
	}
}

// setIndex records idx as the last change to table, and the workloads in
// the workloads row.
func setIndex(tx *memdb.Txn, table string, idx uint64, workloads *workloadSet) error {
	if err := tx.Insert(indexTable, &indexRow{Table: table, Index: idx, workloads: workloads}); err != nil {
		return fmt.Errorf("updating index of %s: %w", table, err)
	}
	return nil
}

func latestIndexTxn(tx *memdb.Txn) uint64 {
	it, err := tx.Get(indexTable, indexID)
	if err != nil {
		panic(fmt.Sprintf("state: reading index table: %v", err))
	}
	var max uint64
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if r := raw.(*indexRow); r.Index > max {
			max = r.Index
		}
	}
	return max
}
