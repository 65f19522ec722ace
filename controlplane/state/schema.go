package state

import (
	"fmt"

	"github.com/hashicorp/go-memdb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// Every resource table has an "id" index over idKey(namespace, name).
// Kind-specific secondary indexes are declared beside their kind
// (catalog_schema.go, token_schema.go, federation_schema.go).
const indexIDName = "id"

// schema returns the database schema: one table per kind plus the index
// table.
func schema() *memdb.DBSchema {
	db := &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		indexTable: indexTableSchema(),
	}}
	for _, info := range kinds {
		t := &memdb.TableSchema{
			Name: info.Table,
			Indexes: map[string]*memdb.IndexSchema{
				indexIDName: {
					Name:    indexIDName,
					Unique:  true,
					Indexer: keyIndexer{key: func(r Resource) (string, bool) { return resourceID(r), true }},
				},
			},
		}
		for _, ix := range secondaryIndexes[info.Kind] {
			t.Indexes[ix.name] = &memdb.IndexSchema{
				Name:         ix.name,
				Unique:       ix.unique,
				AllowMissing: true,
				Indexer:      keyIndexer{key: ix.group},
			}
		}
		db.Tables[info.Table] = t
	}
	return db
}

// secondaryIndex is an index besides "id". For a non-unique index memdb
// appends the object's id key to group's value, so objects of one group are
// ordered by id key, which is what makes List's cursor work on it too.
type secondaryIndex struct {
	name   string
	unique bool
	// group returns the object's index value, and false when the object
	// has none (it is then absent from the index).
	group func(Resource) (string, bool)
}

// secondaryIndexes is the registration table of kind-specific indexes.
var secondaryIndexes = map[meshfedv1.ResourceKind][]secondaryIndex{
	meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD:         {workloadServiceIndex},
	meshfedv1.ResourceKind_RESOURCE_KIND_TOKEN:            {tokenSecretHashIndex},
	meshfedv1.ResourceKind_RESOURCE_KIND_IMPORTED_SERVICE: {importedServicePeerIndex},
}

// idKey is the primary key of a resource: namespace, NUL, name. Cluster-
// scoped kinds have an empty namespace. Every key of one namespace shares
// the prefix nsPrefix(namespace).
func idKey(namespace, name string) string {
	return namespace + "\x00" + name
}

func nsPrefix(namespace string) string {
	return namespace + "\x00"
}

func resourceID(r Resource) string {
	m := r.GetMeta()
	return idKey(m.GetNamespace(), m.GetName())
}

// keyIndexer indexes resources by a string computed from the object. Its
// FromArgs and PrefixFromArgs take the already encoded key (a string or
// []byte), so that keys are composed in one place (idKey and friends).
type keyIndexer struct {
	key func(Resource) (string, bool)
}

var (
	_ memdb.SingleIndexer = keyIndexer{}
	_ memdb.PrefixIndexer = keyIndexer{}
)

func (k keyIndexer) FromObject(raw any) (bool, []byte, error) {
	r, ok := raw.(Resource)
	if !ok {
		return false, nil, fmt.Errorf("unexpected object type %T", raw)
	}
	key, ok := k.key(r)
	if !ok {
		return false, nil, nil
	}
	return true, []byte(key), nil
}

func (keyIndexer) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("want one key argument, got %d", len(args))
	}
	switch a := args[0].(type) {
	case string:
		return []byte(a), nil
	case []byte:
		return a, nil
	default:
		return nil, fmt.Errorf("key argument must be a string or []byte, got %T", a)
	}
}

func (k keyIndexer) PrefixFromArgs(args ...any) ([]byte, error) {
	return k.FromArgs(args...)
}
