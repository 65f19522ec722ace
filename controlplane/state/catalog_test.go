package state

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// listPages lists the workloads p selects in pages of p.Limit, following
// the cursor, and checks the size of each page.
func listPages(t *testing.T, s *Store, p ListParams) []*meshfedv1.Workload {
	t.Helper()
	p.Kind = kindWorkload
	var out []*meshfedv1.Workload
	for {
		_, items, next, err := s.List(nil, p)
		if err != nil {
			t.Fatal(err)
		}
		if p.Limit > 0 && len(items) > p.Limit {
			t.Fatalf("page of %d, limit %d", len(items), p.Limit)
		}
		for _, r := range items {
			out = append(out, r.(*meshfedv1.Workload))
		}
		if next == "" {
			return out
		}
		if next <= p.After {
			t.Fatalf("cursor %q does not move past %q", next, p.After)
		}
		p.After = next
	}
}

// listService returns the names of a service's workloads, read in pages of
// limit.
func listService(t *testing.T, s *Store, ns, svc string, limit int) []string {
	t.Helper()
	var out []string
	for _, w := range listPages(t, s, ListParams{Namespace: ns, Service: svc, Limit: limit}) {
		if w.GetMeta().GetNamespace() != ns || w.GetService() != svc {
			t.Fatalf("workload %s of %s/%s listed for %s/%s", resourceID(w), w.GetMeta().GetNamespace(), w.GetService(), ns, svc)
		}
		// The listed object is the stored one.
		if _, got, _ := s.Get(nil, kindWorkload, ns, w.GetMeta().GetName()); got != w {
			t.Fatalf("listed %s is not the stored object", resourceID(w))
		}
		out = append(out, ns+"/"+w.GetMeta().GetName())
	}
	return out
}

// checkGroups compares every service's list with the workloads of the
// store filtered by service.
func checkGroups(t *testing.T, s *Store, limit int) {
	t.Helper()
	_, all, _, err := s.List(nil, ListParams{Kind: kindWorkload})
	if err != nil {
		t.Fatal(err)
	}
	want := map[groupID][]string{}
	for _, r := range all {
		w := r.(*meshfedv1.Workload)
		if id, ok := workloadGroup(w); ok {
			want[id] = append(want[id], w.GetMeta().GetNamespace()+"/"+w.GetMeta().GetName())
		}
	}
	for _, ns := range []string{"a", "ab", "b"} {
		for _, svc := range []string{"s0", "s1", "s2", "s3", "none"} {
			got := listService(t, s, ns, svc, limit)
			if w := want[groupID{ns, svc}]; !slices.Equal(got, w) {
				t.Fatalf("%s/%s: listed %v, want %v", ns, svc, got, w)
			}
		}
	}
	// No empty group is kept.
	d := s.db.Load()
	tx := d.mem.Txn(false)
	defer tx.Abort()
	if set := readWorkloads(tx, nil, nil); set != nil {
		btreeAscend(set.groups, func(*serviceGroup) bool { return true }, func(g *serviceGroup) bool {
			if g.members.root == nil {
				t.Fatalf("empty group %s/%s kept", g.namespace, g.service)
			}
			return true
		})
	}
}

func TestServiceGroupsRandom(t *testing.T) {
	s := newTestStore(t)
	rng := rand.New(rand.NewPCG(7, 8))
	idx := uint64(1)
	services := []string{"s0", "s1", "s2", "s3", ""}
	// model is what the store should hold: ns/name to service.
	model := map[string]string{}
	for round := range 150 {
		tx := s.WriteTxn(idx)
		pending := maps.Clone(model)
		n := 1 + rng.IntN(60)
		for range n {
			tx.SetIndex(idx)
			idx++
			// "a" is a prefix of "ab": lists of "a" stop before "ab".
			ns := []string{"a", "ab"}[rng.IntN(2)]
			name := fmt.Sprintf("w%03d", rng.IntN(300))
			switch op := rng.IntN(10); {
			case op < 2:
				_, err := tx.Delete(&meshfedv1.ResourceWrite{Kind: kindWorkload, Namespace: ns, Name: name})
				if _, ok := pending[ns+"/"+name]; ok != (err == nil) {
					t.Fatalf("delete %s/%s: %v, but the model has it: %v", ns, name, err, ok)
				}
				delete(pending, ns+"/"+name)
			case op < 3:
				// Fails: changes nothing.
				w := upsertWrite(t, workload(ns, name, services[rng.IntN(len(services))], "10.0.0.1"))
				w.ExpectedVersion = 1
				_, _ = tx.Upsert(w)
			default:
				wl := workload(ns, name, services[rng.IntN(len(services))], fmt.Sprintf("10.0.0.%d", rng.IntN(3)))
				if rng.IntN(4) == 0 {
					wl.Meta.Labels = map[string]string{"x": "y"} // through proto.Unmarshal half the time
				}
				if _, err := tx.Upsert(upsertWrite(t, wl)); err != nil {
					t.Fatal(err)
				}
				pending[ns+"/"+name] = wl.GetService()
			}
		}
		if rng.IntN(8) == 0 {
			// An aborted transaction changes nothing, and it did not
			// show while open.
			before := dump(t, s)
			tx.Abort()
			if diff := diffDump(before, dump(t, s)); diff != "" {
				t.Fatalf("abort changed the state: %s", diff)
			}
		} else {
			tx.Commit()
			model = pending
		}
		checkModel(t, s, model, []int{0, 1, 3, 50}[round%4])
		checkGroups(t, s, []int{0, 1, 3, 50}[round%4])
	}

	// A restore rebuilds them.
	var buf bytes.Buffer
	snap := s.Snapshot()
	if err := snap.Persist(&buf); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	dst := newTestStore(t)
	if err := dst.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	checkModel(t, dst, model, 7)
	checkGroups(t, dst, 7)
	mustUpsert(t, dst, idx, workload("a", "w999", "s1", "10.0.0.9"))
	checkGroups(t, dst, 0)
}

// TestBigServiceGroup covers a service of more workloads than two B+ tree
// levels hold, written in batches, then mostly deleted.
func TestBigServiceGroup(t *testing.T) {
	s := newTestStore(t)
	const n = 3 * bnodeMax * bnodeMax
	perm := rand.New(rand.NewPCG(9, 10)).Perm(n)
	idx := uint64(1)
	for i := 0; i < n; i += 100 {
		tx := s.WriteTxn(idx)
		for _, j := range perm[i:min(n, i+100)] {
			tx.SetIndex(idx)
			idx++
			if _, err := tx.Upsert(upsertWrite(t, workload("a", fmt.Sprintf("w%05d", j), "s0", "10.0.0.1"))); err != nil {
				t.Fatal(err)
			}
		}
		tx.Commit()
	}
	checkGroups(t, s, 1000)
	tx := s.WriteTxn(idx)
	for _, j := range perm[:n-10] {
		if _, err := tx.Delete(&meshfedv1.ResourceWrite{Kind: kindWorkload, Namespace: "a", Name: fmt.Sprintf("w%05d", j)}); err != nil {
			t.Fatal(err)
		}
	}
	tx.Commit()
	checkGroups(t, s, 3)
	if got := len(listService(t, s, "a", "s0", 0)); got != 10 {
		t.Fatalf("%d workloads left, want 10", got)
	}
}

func TestWorkloadsGen(t *testing.T) {
	s := newTestStore(t)
	if g := s.WorkloadsGen("default", "web"); g != 0 {
		t.Fatalf("no workloads: gen %d, want 0", g)
	}
	mustUpsert(t, s, 1, workload("default", "web-1", "web", "10.0.0.1"))
	mustUpsert(t, s, 2, workload("default", "db-1", "db", "10.0.0.2"))
	web, db := s.WorkloadsGen("default", "web"), s.WorkloadsGen("default", "db")
	if web == 0 || db == 0 || web == db {
		t.Fatalf("gens web %d, db %d: want two different non-zero values", web, db)
	}
	// A write to another service leaves web's alone.
	mustUpsert(t, s, 3, workload("default", "db-2", "db", "10.0.0.3"))
	if g := s.WorkloadsGen("default", "web"); g != web {
		t.Fatalf("web's gen moved from %d to %d on a write to db", web, g)
	}
	if g := s.WorkloadsGen("default", "db"); g == db {
		t.Fatal("db's gen did not move when a workload was added")
	}
	// Changing a workload (here its health) moves its service's gen.
	w := workload("default", "web-1", "web", "10.0.0.1")
	w.Health = meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
	mustUpsert(t, s, 4, w)
	web2 := s.WorkloadsGen("default", "web")
	if web2 == web {
		t.Fatal("web's gen did not move when its workload changed")
	}
	// Moving a workload to another service moves both.
	moved := workload("default", "web-1", "db", "10.0.0.1")
	db = s.WorkloadsGen("default", "db")
	mustUpsert(t, s, 5, moved)
	if s.WorkloadsGen("default", "db") == db {
		t.Fatal("db's gen did not move when a workload joined it")
	}
	if g := s.WorkloadsGen("default", "web"); g != 0 {
		t.Fatalf("web has no workload left: gen %d, want 0", g)
	}
}

// checkModel compares the store's workloads with model (ns/name to
// service): listed in pages of limit, in all namespaces and in each, and
// each read by Get.
func checkModel(t *testing.T, s *Store, model map[string]string, limit int) {
	t.Helper()
	list := func(ns string) []string {
		var out []string
		for _, w := range listPages(t, s, ListParams{Namespace: ns, Limit: limit}) {
			id := w.GetMeta().GetNamespace() + "/" + w.GetMeta().GetName()
			if svc, ok := model[id]; !ok || svc != w.GetService() {
				t.Fatalf("listed %s of service %q; the model has %q (%v)", id, w.GetService(), svc, ok)
			}
			out = append(out, id)
		}
		return out
	}
	want := slices.Sorted(maps.Keys(model))
	if got := list(""); !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
	for _, ns := range []string{"a", "ab", "b"} {
		var wantNS []string
		for _, id := range want {
			if strings.HasPrefix(id, ns+"/") {
				wantNS = append(wantNS, id)
			}
		}
		if got := list(ns); !slices.Equal(got, wantNS) {
			t.Fatalf("listed %v in %s, want %v", got, ns, wantNS)
		}
	}
	for id, svc := range model {
		ns, name, _ := strings.Cut(id, "/")
		_, r, err := s.Get(nil, kindWorkload, ns, name)
		if err != nil || r == nil || r.(*meshfedv1.Workload).GetService() != svc {
			t.Fatalf("Get %s = %v, %v; want service %q", id, r, err, svc)
		}
	}
	if _, r, _ := s.Get(nil, kindWorkload, "a", "missing"); r != nil {
		t.Fatalf("Get of a missing workload = %v", r)
	}
}
