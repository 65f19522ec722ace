package state

import (
	"fmt"
	"iter"
	"strings"

	"github.com/hashicorp/go-memdb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// Get returns the resource of kind named namespace/name, or nil when there is
// none, and the index of the last change to kind. Cluster-scoped kinds ignore
// namespace. With a non-nil ws it adds a watch that fires when that resource
// changes (or is created) and on restore; for a workload, when any workload
// changes (see catalog_schema.go).
//
// The returned object is shared: it must not be mutated.
func (s *Store) Get(ws memdb.WatchSet, kind meshfedv1.ResourceKind, namespace, name string) (uint64, Resource, error) {
	info, ok := LookupKind(kind)
	if !ok {
		return 0, nil, fmt.Errorf("%w: %v", ErrUnknownKind, kind)
	}
	if !info.Namespaced {
		namespace = ""
	}
	d := s.db.Load()
	tx := d.mem.Txn(false)
	defer tx.Abort()
	if info.Table == workloadsTable {
		// Workloads are watched as a kind: ws fires on any change to one.
		row := indexRowTxn(tx, ws, d, info.Table)
		if w := row.workloads.get(namespace, name); w != nil {
			return row.Index, w, nil
		}
		return row.Index, nil, nil
	}
	idx := kindIndexTxn(tx, nil, d, info.Table)
	ch, raw, err := tx.FirstWatch(info.Table, indexIDName, idKey(namespace, name))
	if err != nil {
		return 0, nil, fmt.Errorf("reading %s: %w", describe(info, namespace, name), err)
	}
	if ws != nil {
		ws.Add(ch)
		ws.Add(d.abandonCh)
	}
	if raw == nil {
		return idx, nil, nil
	}
	return idx, raw.(Resource), nil
}

// ListParams selects the resources a List returns.
type ListParams struct {
	Kind meshfedv1.ResourceKind
	// Namespace restricts the list to one namespace; empty lists all.
	// Cluster-scoped kinds ignore it.
	Namespace string
	// Service restricts a workload list to one service; it needs Namespace.
	Service string
	// Peer restricts an imported-service list to one peering.
	Peer string
	// After is the cursor returned as next by the previous page; empty
	// starts at the beginning. It is opaque to callers (it is the id key of
	// the last item returned, and contains NUL bytes: encode it before
	// putting it in a page token).
	After string
	// Limit is the page size; 0 means no limit.
	Limit int
}

// List returns resources in key order (namespace, then name), the index of
// the last change to the kind, and the cursor of the next page (empty when
// this is the last one). With a non-nil ws it adds a watch that fires on any
// change to the kind and on restore.
//
// The returned objects are shared: they must not be mutated.
func (s *Store) List(ws memdb.WatchSet, p ListParams) (uint64, []Resource, string, error) {
	info, ok := LookupKind(p.Kind)
	if !ok {
		return 0, nil, "", fmt.Errorf("%w: %v", ErrUnknownKind, p.Kind)
	}
	ns := p.Namespace
	if !info.Namespaced {
		ns = ""
	}
	if p.Limit < 0 {
		return 0, nil, "", fmt.Errorf("list %v: negative limit %d", p.Kind, p.Limit)
	}

	// group is the part of the index value before the id key; prefix is
	// what every selected value starts with.
	index, group, prefix := indexIDName, "", ""
	var groupOf func(Resource) string
	switch {
	case p.Service != "":
		if info.Kind != meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD {
			return 0, nil, "", fmt.Errorf("list %v: a service filter applies only to workloads", p.Kind)
		}
		if ns == "" {
			return 0, nil, "", fmt.Errorf("list %v: a service filter needs a namespace", p.Kind)
		}
		return s.listService(ws, info, ns, p)
	case info.Table == workloadsTable:
		return s.listWorkloads(ws, info, ns, p)
	case p.Peer != "":
		if info.Kind != meshfedv1.ResourceKind_RESOURCE_KIND_IMPORTED_SERVICE {
			return 0, nil, "", fmt.Errorf("list %v: a peer filter applies only to imported services", p.Kind)
		}
		index, group = importedServicePeerIndex.name, peerKey(p.Peer)
		prefix = group
		if ns != "" {
			prefix += nsPrefix(ns)
		}
		groupOf = func(r Resource) string { g, _ := importedServicePeerIndex.group(r); return g }
	default:
		if ns != "" {
			prefix = nsPrefix(ns)
		}
		groupOf = func(Resource) string { return "" }
	}
	start := prefix
	if p.After != "" {
		// The smallest key after the cursor: names hold no NUL.
		if s := group + p.After + "\x00"; s > start {
			start = s
		}
	}

	d := s.db.Load()
	tx := d.mem.Txn(false)
	defer tx.Abort()
	idx := kindIndexTxn(tx, ws, d, info.Table)
	it, err := tx.LowerBound(info.Table, index, start)
	if err != nil {
		return 0, nil, "", fmt.Errorf("listing %v: %w", p.Kind, err)
	}
	var items []Resource
	for raw := it.Next(); raw != nil; raw = it.Next() {
		r := raw.(Resource)
		id := resourceID(r)
		if !strings.HasPrefix(groupOf(r)+id, prefix) {
			break
		}
		if p.Limit > 0 && len(items) == p.Limit {
			return idx, items, resourceID(items[len(items)-1]), nil
		}
		items = append(items, r)
	}
	return idx, items, "", nil
}

// listService lists the workloads of one service from the service groups
// of the workloads' index row.
func (s *Store) listService(ws memdb.WatchSet, info KindInfo, ns string, p ListParams) (uint64, []Resource, string, error) {
	d := s.db.Load()
	tx := d.mem.Txn(false)
	defer tx.Abort()
	row := indexRowTxn(tx, ws, d, info.Table)
	idx, g := row.Index, row.workloads.group(groupID{ns, p.Service})
	items, next := listGroups(single(g), p.After, p.Limit)
	return idx, items, next, nil
}

// Workloads returns every stored workload, in id key order, as the store
// holds them when it is called: a range over it sees no later write, and
// allocates nothing per workload.
func (s *Store) Workloads() iter.Seq[*meshfedv1.Workload] {
	d := s.db.Load()
	tx := d.mem.Txn(false)
	set := readWorkloads(tx, nil, nil)
	tx.Abort()
	return set.all
}

// listWorkloads lists the workloads of namespace ns (every namespace when
// empty) from the workload set of the workloads' index row.
func (s *Store) listWorkloads(ws memdb.WatchSet, info KindInfo, ns string, p ListParams) (uint64, []Resource, string, error) {
	d := s.db.Load()
	tx := d.mem.Txn(false)
	defer tx.Abort()
	row := indexRowTxn(tx, ws, d, info.Table)
	set := row.workloads
	if set == nil {
		return row.Index, nil, "", nil
	}
	groups := func(yield func(*serviceGroup) bool) {
		btreeAscend(set.namespaces, func(*serviceGroup) bool { return true }, yield)
	}
	if ns != "" {
		g, _ := btreeGet(set.namespaces, ns, cmpNamespace)
		groups = single(g)
	}
	items, next := listGroups(groups, p.After, p.Limit)
	return row.Index, items, next, nil
}
