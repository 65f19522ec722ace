package state

import (
	"fmt"
	"maps"
	"strings"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// serviceGroups is the workloads of every service (see catalog_schema.go),
// in a B+ tree of services each with a B+ tree of its workloads by name
// (which is id key order: they share the namespace). Both are persistent
// (btree.go): a write copies the few nodes on its paths, once per
// transaction. It is stored in the workloads row of the index table, which
// every transaction that changes workloads writes anyway.
type serviceGroups struct {
	gen    uint64
	groups btree[*serviceGroup]
}

// serviceGroup is one service's workloads. Immutable once committed; the
// transaction gen changes it in place until it commits.
type serviceGroup struct {
	gen       uint64
	namespace string
	service   string
	members   btree[groupItem]
}

// groupItem is a workload and its name: searches compare names without
// loading the workloads.
type groupItem struct {
	name string
	w    *meshfedv1.Workload
}

// groupID names a service group.
type groupID struct{ namespace, service string }

func workloadGroup(w *meshfedv1.Workload) (groupID, bool) {
	if w == nil || w.GetService() == "" {
		return groupID{}, false
	}
	return groupID{w.GetMeta().GetNamespace(), w.GetService()}, true
}

func cmpGroup(g *serviceGroup, id groupID) int {
	if c := strings.Compare(g.namespace, id.namespace); c != 0 {
		return c
	}
	return strings.Compare(g.service, id.service)
}

func cmpItem(it groupItem, name string) int { return strings.Compare(it.name, name) }

// readServiceGroups returns the groups stored in the workloads index row
// of tx.
func readServiceGroups(tx *memdb.Txn) *serviceGroups {
	return indexRowTxn(tx, nil, nil, workloadsTable).groups
}

// group returns the group of id, nil if there is none.
func (sg *serviceGroups) group(id groupID) *serviceGroup {
	if sg == nil {
		return nil
	}
	g, _ := btreeGet(sg.groups, id, cmpGroup)
	return g
}

// WorkloadsGen returns a number that changes whenever a workload of the
// service ns/service is written, added or removed: the generation of the
// write transaction that last changed its group, 0 when it has none. It
// is how a reader that keeps something derived from a service's workloads
// tells, without listing them, that it is still current.
func (s *Store) WorkloadsGen(ns, service string) uint64 {
	d := s.db.Load()
	tx := d.mem.Txn(false)
	defer tx.Abort()
	if g := readServiceGroups(tx).group(groupID{ns, service}); g != nil {
		return g.gen
	}
	return 0
}

// groupsForRead returns the groups as the transaction sees them.
func (t *Txn) groupsForRead() *serviceGroups {
	if t.serviceGroups != nil {
		return t.serviceGroups
	}
	return readServiceGroups(t.committed())
}

// groupForWrite returns the group of id owned by the transaction: the
// group it already changed, a copy of the committed one, or a new one.
func (t *Txn) groupForWrite(id groupID) *serviceGroup {
	sg := t.serviceGroups
	if sg == nil {
		sg = &serviceGroups{gen: t.gen}
		if committed := readServiceGroups(t.committed()); committed != nil {
			sg.groups = committed.groups
		}
		t.serviceGroups = sg
	}
	g, ok := btreeGet(sg.groups, id, cmpGroup)
	if ok && g.gen == t.gen {
		return g
	}
	n := &serviceGroup{gen: t.gen, namespace: id.namespace, service: id.service}
	if ok {
		n.members = g.members
	}
	btreePut(&sg.groups, t.gen, id, n, cmpGroup)
	return n
}

// regroupWorkload updates the service groups for a write of a workload:
// old is the workload it replaces or deletes (nil if none), w the new one
// (nil on delete).
func (t *Txn) regroupWorkload(old, w *meshfedv1.Workload) {
	oldID, hadOld := workloadGroup(old)
	newID, hasNew := workloadGroup(w)
	if hadOld && (!hasNew || oldID != newID) {
		g := t.groupForWrite(oldID)
		if !btreeDelete(&g.members, t.gen, old.GetMeta().GetName(), cmpItem) {
			panic(fmt.Sprintf("state: workload %s missing from the group of service %q", resourceID(old), oldID.service))
		}
		if g.members.root == nil {
			btreeDelete(&t.serviceGroups.groups, t.gen, oldID, cmpGroup)
		}
	}
	if hasNew {
		name := w.GetMeta().GetName()
		btreePut(&t.groupForWrite(newID).members, t.gen, name, groupItem{name: name, w: w}, cmpItem)
	}
}

// buildServiceGroups returns the groups of the workloads of a database
// filled without them (by a restore).
func buildServiceGroups(tx *memdb.Txn, gen uint64) (*serviceGroups, error) {
	it, err := tx.Get(workloadsTable, indexIDName)
	if err != nil {
		return nil, fmt.Errorf("reading workloads: %w", err)
	}
	sg := &serviceGroups{gen: gen}
	var g *serviceGroup
	for raw := it.Next(); raw != nil; raw = it.Next() {
		w := raw.(*meshfedv1.Workload)
		id, ok := workloadGroup(w)
		if !ok {
			continue
		}
		if g == nil || cmpGroup(g, id) != 0 {
			if g, ok = btreeGet(sg.groups, id, cmpGroup); !ok {
				g = &serviceGroup{gen: gen, namespace: id.namespace, service: id.service}
				btreePut(&sg.groups, gen, id, g, cmpGroup)
			}
		}
		// Workloads come in id key order: each is appended.
		name := w.GetMeta().GetName()
		btreePut(&g.members, gen, name, groupItem{name: name, w: w}, cmpItem)
	}
	return sg, nil
}

// listGroup returns the workloads of a group whose id key is after after,
// at most limit of them (0: all), and the cursor of the next page.
func listGroup(g *serviceGroup, after string, limit int) ([]Resource, string) {
	if g == nil {
		return nil, ""
	}
	// Every item's id key is namespace, NUL, name: start at the first
	// name whose key sorts after the cursor.
	prefix := nsPrefix(g.namespace)
	from := func(groupItem) bool { return true }
	switch {
	case after == "" || after < prefix:
	case strings.HasPrefix(after, prefix):
		name := after[len(prefix):]
		from = func(it groupItem) bool { return it.name > name }
	default:
		return nil, ""
	}
	var items []Resource
	next := ""
	btreeAscend(g.members, from, func(it groupItem) bool {
		if limit > 0 && len(items) == limit {
			next = resourceID(items[len(items)-1])
			return false
		}
		items = append(items, it.w)
		return true
	})
	return items, next
}

// workloadSibling returns a stored workload to share strings with, for
// a write of a workload of service in namespace replacing old (nil if
// none): old if it is of the same service, else a workload of the service,
// else old.
func (t *Txn) workloadSibling(old *meshfedv1.Workload, namespace, service string) *meshfedv1.Workload {
	if old != nil && old.GetService() == service {
		return old
	}
	if service != "" {
		if g := t.groupsForRead().group(groupID{namespace, service}); g != nil {
			if first, ok := btreeFirst(g.members); ok {
				return first.w
			}
		}
	}
	return old
}

// shareWorkloadFields makes w, as proto.Unmarshal returns it, reuse the
// strings, locality and labels of sibling (nil for none) where they are
// equal. Workloads of a service repeat their namespace, service, SPIFFE ID,
// version, locality and often labels, and a workload updated repeats most
// of itself; sharing them (stored objects are immutable) saves about a
// fifth of a workload's memory.
func shareWorkloadFields(w, sibling *meshfedv1.Workload) {
	if sibling == nil {
		return
	}
	m, sm := w.GetMeta(), sibling.GetMeta()
	share(&m.Namespace, sm.GetNamespace())
	share(&m.Peer, sm.GetPeer())
	if len(m.Labels) > 0 && maps.Equal(m.Labels, sm.GetLabels()) {
		m.Labels = sm.GetLabels()
	}
	share(&w.Service, sibling.GetService())
	share(&w.Address, sibling.GetAddress())
	share(&w.SpiffeId, sibling.GetSpiffeId())
	share(&w.Version, sibling.GetVersion())
	if w.Locality != nil && sibling.Locality != nil && w.Locality != sibling.Locality && proto.Equal(w.Locality, sibling.Locality) {
		w.Locality = sibling.Locality
	}
}

// share points *dst at src's bytes when they are equal.
func share(dst *string, src string) {
	if *dst == src {
		*dst = src
	}
}
