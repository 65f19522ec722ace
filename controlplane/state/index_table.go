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
}

func indexTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: indexTable,
		Indexes: map[string]*memdb.IndexSchema{
			indexID: {
				Name:    indexID,
				Unique:  true,
				Indexer: &memdb.StringFieldIndex{Field: "Table"},
			},
		},
	}
}

// setIndex records idx as the last change to table.
func setIndex(tx *memdb.Txn, table string, idx uint64) error {
	if err := tx.Insert(indexTable, &indexRow{Table: table, Index: idx}); err != nil {
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
