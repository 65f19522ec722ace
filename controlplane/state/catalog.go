package state

import (
	"fmt"
	"iter"
	"maps"
	"strings"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// workloadSet is every stored workload (see catalog_schema.go): a B+ tree
// of namespaces each with a B+ tree of its workloads by name (which is id
// key order), and a B+ tree of services each with a B+ tree of its
// workloads by name. All are persistent (btree.go): a write copies the few
// nodes on its paths, once per transaction. It is stored in the workloads
// row of the index table, which every transaction that changes workloads
// writes anyway.
//
// Items hold their workload's name so that searches compare names without
// loading the workloads: a search of a tree of pointers ordered by the
// workloads' keys followed two more pointers per comparison, which cost
// the write path about 8% of its time with 64,000 workloads.
type workloadSet struct {
	gen uint64
	// namespaces are serviceGroups with no service.
	namespaces btree[*serviceGroup]
	groups     btree[*serviceGroup]
}

// serviceGroup is one service's workloads, or (service empty) one
// namespace's. Immutable once committed; the transaction gen changes it in
// place until it commits.
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

func cmpNamespace(g *serviceGroup, ns string) int { return strings.Compare(g.namespace, ns) }

// readWorkloads returns the workloads stored in the workloads index row
// of tx, watching the row and the abandon channel of d when ws is set.
func readWorkloads(tx *memdb.Txn, ws memdb.WatchSet, d *database) *workloadSet {
	return indexRowTxn(tx, ws, d, workloadsTable).workloads
}

// get returns the workload namespace/name, nil if there is none.
func (set *workloadSet) get(namespace, name string) *meshfedv1.Workload {
	if set == nil {
		return nil
	}
	g, ok := btreeGet(set.namespaces, namespace, cmpNamespace)
	if !ok {
		return nil
	}
	it, _ := btreeGet(g.members, name, cmpItem)
	return it.w
}

// all calls fn on every workload in id key order until fn returns false.
func (set *workloadSet) all(fn func(*meshfedv1.Workload) bool) {
	if set == nil {
		return
	}
	every := func(groupItem) bool { return true }
	btreeAscend(set.namespaces, func(*serviceGroup) bool { return true }, func(g *serviceGroup) bool {
		more := true
		btreeAscend(g.members, every, func(it groupItem) bool {
			more = fn(it.w)
			return more
		})
		return more
	})
}

// group returns the group of id, nil if there is none.
func (set *workloadSet) group(id groupID) *serviceGroup {
	if set == nil {
		return nil
	}
	g, _ := btreeGet(set.groups, id, cmpGroup)
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
	if g := readWorkloads(tx, nil, nil).group(groupID{ns, service}); g != nil {
		return g.gen
	}
	return 0
}

// workloadsForRead returns the workloads as the transaction sees them.
func (t *Txn) workloadsForRead() *workloadSet {
	if t.workloads != nil {
		return t.workloads
	}
	return readWorkloads(t.committed(), nil, nil)
}

// workloadsForWrite returns the workloads owned by the transaction: the
// set it already changed, or a copy of the committed one.
func (t *Txn) workloadsForWrite() *workloadSet {
	if t.workloads == nil {
		t.workloads = &workloadSet{gen: t.gen}
		if committed := readWorkloads(t.committed(), nil, nil); committed != nil {
			t.workloads.namespaces, t.workloads.groups = committed.namespaces, committed.groups
		}
	}
	return t.workloads
}

// ownGroup returns the group of key k in tree, owned by transaction gen:
// the group it already changed, a copy of the committed one, or a new one
// (of namespace ns and service svc).
func ownGroup[K any](tree *btree[*serviceGroup], gen uint64, k K, cmp func(*serviceGroup, K) int, ns, svc string) *serviceGroup {
	g, ok := btreeGet(*tree, k, cmp)
	if ok && g.gen == gen {
		return g
	}
	n := &serviceGroup{gen: gen, namespace: ns, service: svc}
	if ok {
		n.members = g.members
	}
	btreePut(tree, gen, k, n, cmp)
	return n
}

// groupForWrite returns the group of id owned by the transaction.
func (t *Txn) groupForWrite(id groupID) *serviceGroup {
	return ownGroup(&t.workloadsForWrite().groups, t.gen, id, cmpGroup, id.namespace, id.service)
}

// putWorkload stores w in place of old (nil if none), which has its key.
func (t *Txn) putWorkload(old, w *meshfedv1.Workload) {
	m := w.GetMeta()
	ns := ownGroup(&t.workloadsForWrite().namespaces, t.gen, m.GetNamespace(), cmpNamespace, m.GetNamespace(), "")
	btreePut(&ns.members, t.gen, m.GetName(), groupItem{name: m.GetName(), w: w}, cmpItem)
	t.regroupWorkload(old, w)
}

// deleteWorkload removes old, which is stored.
func (t *Txn) deleteWorkload(old *meshfedv1.Workload) {
	m := old.GetMeta()
	set := t.workloadsForWrite()
	ns := ownGroup(&set.namespaces, t.gen, m.GetNamespace(), cmpNamespace, m.GetNamespace(), "")
	if !btreeDelete(&ns.members, t.gen, m.GetName(), cmpItem) {
		panic(fmt.Sprintf("state: deleting workload %s, which is not stored", resourceID(old)))
	}
	if ns.members.root == nil {
		btreeDelete(&set.namespaces, t.gen, m.GetNamespace(), cmpNamespace)
	}
	t.regroupWorkload(old, nil)
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
			btreeDelete(&t.workloads.groups, t.gen, oldID, cmpGroup)
		}
	}
	if hasNew {
		name := w.GetMeta().GetName()
		btreePut(&t.groupForWrite(newID).members, t.gen, name, groupItem{name: name, w: w}, cmpItem)
	}
}

// restoreWorkload adds w to a set being restored, made by its own
// transaction; a later workload of the same key replaces an earlier one.
// buildGroups then makes the service groups.
func (set *workloadSet) restoreWorkload(w *meshfedv1.Workload) {
	m := w.GetMeta()
	ns := ownGroup(&set.namespaces, set.gen, m.GetNamespace(), cmpNamespace, m.GetNamespace(), "")
	btreePut(&ns.members, set.gen, m.GetName(), groupItem{name: m.GetName(), w: w}, cmpItem)
}

// buildGroups makes the service groups of a restored set.
func (set *workloadSet) buildGroups() {
	var g *serviceGroup
	set.all(func(w *meshfedv1.Workload) bool {
		id, ok := workloadGroup(w)
		if !ok {
			return true
		}
		if g == nil || cmpGroup(g, id) != 0 {
			if g, ok = btreeGet(set.groups, id, cmpGroup); !ok {
				g = &serviceGroup{gen: set.gen, namespace: id.namespace, service: id.service}
				btreePut(&set.groups, set.gen, id, g, cmpGroup)
			}
		}
		// Workloads come in id key order: each is appended.
		name := w.GetMeta().GetName()
		btreePut(&g.members, set.gen, name, groupItem{name: name, w: w}, cmpItem)
		return true
	})
}

// listGroups returns the workloads of groups, which come in id key
// order, whose id key is after after, at most limit of them (0: all), and
// the cursor of the next page.
func listGroups(groups iter.Seq[*serviceGroup], after string, limit int) ([]Resource, string) {
	var items []Resource
	next := ""
	for g := range groups {
		from, ok := groupStart(g, after)
		if !ok {
			continue
		}
		btreeAscend(g.members, from, func(it groupItem) bool {
			if limit > 0 && len(items) == limit {
				next = resourceID(items[len(items)-1])
				return false
			}
			items = append(items, it.w)
			return true
		})
		if next != "" {
			break
		}
	}
	return items, next
}

// groupStart returns where the workloads of g whose id key is after the
// cursor after begin, and false when every one of them is before it.
func groupStart(g *serviceGroup, after string) (func(groupItem) bool, bool) {
	// Every item's id key is namespace, NUL, name.
	prefix := nsPrefix(g.namespace)
	switch {
	case after == "" || after < prefix:
		return func(groupItem) bool { return true }, true
	case strings.HasPrefix(after, prefix):
		name := after[len(prefix):]
		return func(it groupItem) bool { return it.name > name }, true
	default:
		return nil, false
	}
}

// single is the sequence of g alone, or of nothing when g is nil.
func single(g *serviceGroup) iter.Seq[*serviceGroup] {
	return func(yield func(*serviceGroup) bool) {
		if g != nil {
			yield(g)
		}
	}
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
		if g := t.workloadsForRead().group(groupID{namespace, service}); g != nil {
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
