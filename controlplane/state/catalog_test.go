package state

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// listService returns the names of a service's workloads, read in pages of
// limit.
func listService(t *testing.T, s *Store, ns, svc string, limit int) []string {
	t.Helper()
	var out []string
	after := ""
	for {
		_, items, next, err := s.List(nil, ListParams{Kind: kindWorkload, Namespace: ns, Service: svc, After: after, Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		if limit > 0 && len(items) > limit {
			t.Fatalf("page of %d, limit %d", len(items), limit)
		}
		for _, r := range items {
			w := r.(*meshfedv1.Workload)
			if w.GetMeta().GetNamespace() != ns || w.GetService() != svc {
				t.Fatalf("workload %s of %s/%s listed for %s/%s", resourceID(w), w.GetMeta().GetNamespace(), w.GetService(), ns, svc)
			}
			// The listed object is the stored one.
			if _, got, _ := s.Get(nil, kindWorkload, ns, w.GetMeta().GetName()); got != r {
				t.Fatalf("listed %s is not the stored object", resourceID(w))
			}
		}
		out = append(out, names(items)...)
		if next == "" {
			return out
		}
		after = next
	}
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
	for _, ns := range []string{"a", "b"} {
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
	if sg := readServiceGroups(tx); sg != nil {
		btreeAscend(sg.groups, func(*serviceGroup) bool { return true }, func(g *serviceGroup) bool {
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
	for round := range 150 {
		tx := s.WriteTxn(idx)
		n := 1 + rng.IntN(60)
		for range n {
			tx.SetIndex(idx)
			idx++
			ns := []string{"a", "b"}[rng.IntN(2)]
			name := fmt.Sprintf("w%03d", rng.IntN(300))
			switch op := rng.IntN(10); {
			case op < 2:
				_, _ = tx.Delete(&meshfedv1.ResourceWrite{Kind: kindWorkload, Namespace: ns, Name: name})
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
		}
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
