package state

import (
	"fmt"

	"github.com/hashicorp/go-memdb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// Every resource table has an "id" index over idKey(namespace, name).
// Kind-specific secondary indexes are declared beside their kind
// (token_schema.go, federation_schema.go); workloads are found by service
// through B+ trees kept in their index row (catalog_schema.go).
const indexIDName = "id"

// schema returns the database schema: one table per kind plus the index
// table. Its id indexes share memo.
func schema(memo *keyMemo) *memdb.DBSchema {
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
					Indexer: idIndexer{memo},
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

// appendIDKey appends idKey(namespace, name) to b.
func appendIDKey(b []byte, namespace, name string) []byte {
	b = append(b, namespace...)
	b = append(b, 0)
	return append(b, name...)
}

// idKeyBytes returns idKey(namespace, name) in one allocation.
func idKeyBytes(namespace, name string) []byte {
	return appendIDKey(make([]byte, 0, len(namespace)+1+len(name)), namespace, name)
}

// idIndexer is the indexer of every id index. memdb asks for the key of
// the object it inserts up to three times (and for the one it replaces), so
// the write transaction tells the memo the key beforehand. The memo is only
// used under memdb's writer lock: memdb asks for objects' keys only to
// write them.
type idIndexer struct {
	memo *keyMemo
}

// keyMemo is the id key of one object, and of the object it replaces
// (which has the same key). Stored objects are immutable, so a key once
// right stays right.
type keyMemo struct {
	obj, old any
	key      []byte
}

func (m *keyMemo) set(obj, old any, key []byte) { m.obj, m.old, m.key = obj, old, key }

func (x idIndexer) FromObject(raw any) (bool, []byte, error) {
	if m := x.memo; m.obj == raw || (m.old != nil && m.old == raw) {
		return true, m.key, nil
	}
	r, ok := raw.(Resource)
	if !ok {
		return false, nil, fmt.Errorf("unexpected object type %T", raw)
	}
	m := r.GetMeta()
	return true, idKeyBytes(m.GetNamespace(), m.GetName()), nil
}

func (idIndexer) FromArgs(args ...any) ([]byte, error) { return keyIndexer{}.FromArgs(args...) }

func (idIndexer) PrefixFromArgs(args ...any) ([]byte, error) { return keyIndexer{}.FromArgs(args...) }

// keyIndexer indexes resources by a string computed from the object. Its
// FromArgs and PrefixFromArgs take the already encoded key (a string or
// []byte), so that keys are composed in one place (idKey and friends).
type keyIndexer struct {
	key func(Resource) (string, bool)
}

var (
	_ memdb.SingleIndexer = keyIndexer{}
	_ memdb.PrefixIndexer = keyIndexer{}
	_ memdb.SingleIndexer = idIndexer{}
	_ memdb.PrefixIndexer = idIndexer{}
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
