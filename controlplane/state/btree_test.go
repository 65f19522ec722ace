package state

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

type kv struct {
	k string
	v int
}

func cmpKV(a kv, k string) int { return cmp.Compare(a.k, k) }

// checkTree verifies t's structure and returns its items in order.
func checkTree(t *testing.T, tr btree[kv]) []kv {
	t.Helper()
	var out []kv
	var walk func(n *bnode[kv], depth int) int
	leafDepth := -1
	walk = func(n *bnode[kv], depth int) int {
		if n.size() == 0 || n.size() > bnodeMax {
			t.Fatalf("node of %d entries", n.size())
		}
		if n.leaf() {
			if leafDepth == -1 {
				leafDepth = depth
			} else if depth != leafDepth {
				t.Fatalf("leaves at depths %d and %d", leafDepth, depth)
			}
			out = append(out, n.items...)
			return len(n.items)
		}
		if len(n.lasts) != len(n.children) {
			t.Fatalf("%d lasts for %d children", len(n.lasts), len(n.children))
		}
		total := 0
		for i, c := range n.children {
			total += walk(c, depth+1)
			if c.last() != n.lasts[i] {
				t.Fatalf("lasts[%d] = %v, child's last %v", i, n.lasts[i], c.last())
			}
		}
		return total
	}
	if tr.root != nil {
		walk(tr.root, 0)
	}
	if !slices.IsSortedFunc(out, func(a, b kv) int { return cmp.Compare(a.k, b.k) }) {
		t.Fatal("items out of order")
	}
	return out
}

func TestBtree(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, keys := range []int{10, 300, 3000} {
		t.Run(fmt.Sprint(keys), func(t *testing.T) {
			var tr btree[kv]
			ref := map[string]int{}
			type version struct {
				tree btree[kv]
				want []kv
			}
			var versions []version
			gen := uint64(100)
			for txn := range 300 {
				gen++
				ops := 1 + rng.IntN(40)
				if txn < 5 {
					ops = keys // fill
				}
				for range ops {
					k := fmt.Sprintf("k%06d", rng.IntN(keys))
					if txn < 5 {
						k = fmt.Sprintf("k%06d", len(ref)) // in order
					}
					_, had := ref[k]
					if rng.IntN(3) == 0 {
						if got := btreeDelete(&tr, gen, k, cmpKV); got != had {
							t.Fatalf("delete %s = %v, had %v", k, got, had)
						}
						delete(ref, k)
					} else {
						v := rng.Int()
						btreePut(&tr, gen, k, kv{k, v}, cmpKV)
						ref[k] = v
					}
				}
				got := checkTree(t, tr)
				want := make([]kv, 0, len(ref))
				for k, v := range ref {
					want = append(want, kv{k, v})
				}
				slices.SortFunc(want, func(a, b kv) int { return cmp.Compare(a.k, b.k) })
				if !slices.Equal(got, want) {
					t.Fatalf("txn %d: tree holds %d items, want %d", txn, len(got), len(want))
				}
				if txn%10 == 0 {
					versions = append(versions, version{tr, want})
				}
				for k, v := range ref {
					if it, ok := btreeGet(tr, k, cmpKV); !ok || it.v != v {
						t.Fatalf("get %s = %v, %v", k, it, ok)
					}
					break
				}
				if _, ok := btreeGet(tr, "missing", cmpKV); ok {
					t.Fatal("got a missing key")
				}
			}
			// Later transactions changed none of the earlier versions.
			for i, v := range versions {
				if got := checkTree(t, v.tree); !slices.Equal(got, v.want) {
					t.Fatalf("version %d changed", i)
				}
			}
			// Ascend from every kind of starting point.
			all := checkTree(t, tr)
			for _, from := range []string{"", "k", "k000005", "k0000050", "k999999", "z"} {
				var got []kv
				btreeAscend(tr, func(it kv) bool { return it.k > from }, func(it kv) bool {
					got = append(got, it)
					return len(got) < 7
				})
				i, _ := slices.BinarySearchFunc(all, from, func(a kv, k string) int {
					if a.k > k {
						return 1
					}
					return -1
				})
				want := all[i:min(len(all), i+7)]
				if !slices.Equal(got, want) {
					t.Fatalf("ascend from %q = %v, want %v", from, got, want)
				}
			}
			if first, ok := btreeFirst(tr); len(all) > 0 && (!ok || first != all[0]) {
				t.Fatalf("first = %v, want %v", first, all[0])
			}
		})
	}
}

// TestBtreeFill checks that items inserted in order fill their nodes.
func TestBtreeFill(t *testing.T) {
	var tr btree[kv]
	const n = 10_000
	for i := range n {
		k := fmt.Sprintf("k%06d", i)
		btreePut(&tr, 1, k, kv{k, i}, cmpKV)
	}
	leaves := 0
	var walk func(*bnode[kv])
	walk = func(n *bnode[kv]) {
		if n.leaf() {
			leaves++
			return
		}
		for _, c := range n.children {
			walk(c)
		}
	}
	walk(tr.root)
	if want := (n + bnodeMax - 1) / bnodeMax; leaves != want {
		t.Errorf("%d leaves for %d items, want %d", leaves, n, want)
	}
}
