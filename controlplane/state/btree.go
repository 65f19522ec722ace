package state

import "slices"

// btree is a persistent B+ tree: items in leaves, ordered by a key; inner
// nodes hold their children and each child's last item. Committed trees,
// and their nodes, are never changed. A write transaction changes a tree
// it owns in place, copying a node the first time it changes it (node.gen
// is the transaction that made the node), so a write copies the nodes on
// its path once per transaction rather than once per write.
//
// Functions take the key looked for and cmp, which compares an item with a
// key: a tree is ordered by it and holds no two items of one key.
type btree[T any] struct {
	root *bnode[T]
}

type bnode[T any] struct {
	gen      uint64
	items    []T         // a leaf's items
	children []*bnode[T] // an inner node's children
	lasts    []T         // an inner node's children's last items
}

// bnodeMax bounds the items of a leaf and the children of an inner node.
const bnodeMax = 16

func (n *bnode[T]) leaf() bool { return n.children == nil }

func (n *bnode[T]) size() int {
	if n.leaf() {
		return len(n.items)
	}
	return len(n.children)
}

func (n *bnode[T]) last() T {
	if n.leaf() {
		return n.items[len(n.items)-1]
	}
	return n.lasts[len(n.lasts)-1]
}

// writable returns n, or a copy of it made by transaction gen with room for
// one more entry.
func (n *bnode[T]) writable(gen uint64) *bnode[T] {
	if n.gen == gen {
		return n
	}
	c := &bnode[T]{gen: gen}
	if n.leaf() {
		c.items = make([]T, len(n.items), len(n.items)+1)
		copy(c.items, n.items)
	} else {
		c.children = make([]*bnode[T], len(n.children), len(n.children)+1)
		copy(c.children, n.children)
		c.lasts = make([]T, len(n.lasts), len(n.lasts)+1)
		copy(c.lasts, n.lasts)
	}
	return c
}

// child returns the index of the child of inner node n that holds k, or
// would: the first whose last item is not before k, else the last child.
func child[T, K any](n *bnode[T], k K, cmp func(T, K) int) int {
	i, _ := slices.BinarySearchFunc(n.lasts, k, cmp)
	return min(i, len(n.children)-1)
}

// btreeGet returns the item of key k.
func btreeGet[T, K any](t btree[T], k K, cmp func(T, K) int) (T, bool) {
	n := t.root
	if n == nil {
		var zero T
		return zero, false
	}
	for !n.leaf() {
		n = n.children[child(n, k, cmp)]
	}
	i, found := slices.BinarySearchFunc(n.items, k, cmp)
	if !found {
		var zero T
		return zero, false
	}
	return n.items[i], true
}

// btreeFirst returns the first item of t.
func btreeFirst[T any](t btree[T]) (T, bool) {
	n := t.root
	if n == nil {
		var zero T
		return zero, false
	}
	for !n.leaf() {
		n = n.children[0]
	}
	return n.items[0], true
}

// btreePut stores item, whose key is k, in t for transaction gen,
// replacing the item of that key if there is one.
func btreePut[T, K any](t *btree[T], gen uint64, k K, item T, cmp func(T, K) int) {
	if t.root == nil {
		t.root = &bnode[T]{gen: gen, items: []T{item}}
		return
	}
	n := t.root.writable(gen)
	right := bnodePut(n, gen, k, item, cmp)
	if right != nil {
		n = &bnode[T]{gen: gen, children: []*bnode[T]{n, right}, lasts: []T{n.last(), right.last()}}
	}
	t.root = n
}

// bnodePut puts item in n, which gen owns, and returns the node split off
// n's end when it overflows.
func bnodePut[T, K any](n *bnode[T], gen uint64, k K, item T, cmp func(T, K) int) *bnode[T] {
	if n.leaf() {
		i, found := slices.BinarySearchFunc(n.items, k, cmp)
		if found {
			n.items[i] = item
			return nil
		}
		n.items = slices.Insert(n.items, i, item)
		if len(n.items) <= bnodeMax {
			return nil
		}
		// Both halves get arrays of their own size: the one grown by
		// appends may be twice that.
		at := splitPoint(i, len(n.items))
		right := &bnode[T]{gen: gen, items: slices.Clone(n.items[at:])}
		n.items = slices.Clone(n.items[:at])
		return right
	}
	i := child(n, k, cmp)
	c := n.children[i].writable(gen)
	n.children[i] = c
	split := bnodePut(c, gen, k, item, cmp)
	n.lasts[i] = c.last()
	if split == nil {
		return nil
	}
	n.children = slices.Insert(n.children, i+1, split)
	n.lasts = slices.Insert(n.lasts, i+1, split.last())
	if len(n.children) <= bnodeMax {
		return nil
	}
	at := splitPoint(i+1, len(n.children))
	right := &bnode[T]{gen: gen, children: slices.Clone(n.children[at:]), lasts: slices.Clone(n.lasts[at:])}
	n.children, n.lasts = slices.Clone(n.children[:at]), slices.Clone(n.lasts[:at])
	return right
}

// splitPoint is where a node of n entries, the one at i just inserted,
// splits: in the middle, but after the full node when the insertion was at
// its end, so that items inserted in order fill their nodes.
func splitPoint(i, n int) int {
	if i == n-1 {
		return n - 1
	}
	return n / 2
}

// btreeDelete removes the item of key k from t for transaction gen and
// reports whether there was one.
func btreeDelete[T, K any](t *btree[T], gen uint64, k K, cmp func(T, K) int) bool {
	if _, ok := btreeGet(*t, k, cmp); !ok {
		return false
	}
	n := t.root.writable(gen)
	bnodeDelete(n, gen, k, cmp)
	switch {
	case n.size() == 0:
		n = nil
	case !n.leaf() && len(n.children) == 1:
		n = n.children[0]
	}
	t.root = n
	return true
}

// bnodeDelete removes the item of key k, which is there, from n, which gen
// owns.
func bnodeDelete[T, K any](n *bnode[T], gen uint64, k K, cmp func(T, K) int) {
	if n.leaf() {
		i, _ := slices.BinarySearchFunc(n.items, k, cmp)
		n.items = slices.Delete(n.items, i, i+1)
		return
	}
	i := child(n, k, cmp)
	c := n.children[i].writable(gen)
	n.children[i] = c
	bnodeDelete(c, gen, k, cmp)
	switch {
	case c.size() == 0:
		n.children = slices.Delete(n.children, i, i+1)
		n.lasts = slices.Delete(n.lasts, i, i+1)
		return
	case c.size() < bnodeMax/4:
		// Merge a small node into a neighbour, so that deletions do not
		// leave long runs of nearly empty nodes.
		lo := i
		if i+1 == len(n.children) {
			lo = i - 1
		}
		if lo >= 0 && n.children[lo].size()+n.children[lo+1].size() <= bnodeMax/2 {
			a, b := n.children[lo], n.children[lo+1]
			m := &bnode[T]{gen: gen}
			if a.leaf() {
				m.items = append(slices.Clip(a.items), b.items...)
			} else {
				m.children = append(slices.Clip(a.children), b.children...)
				m.lasts = append(slices.Clip(a.lasts), b.lasts...)
			}
			n.children[lo], n.lasts[lo] = m, m.last()
			n.children = slices.Delete(n.children, lo+1, lo+2)
			n.lasts = slices.Delete(n.lasts, lo+1, lo+2)
			return
		}
	}
	n.lasts[i] = c.last()
}

// btreeAscend calls fn on the items of t in order, from the first for
// which from is true (from must be false, then true, along the order),
// until fn returns false.
func btreeAscend[T any](t btree[T], from func(T) bool, fn func(T) bool) {
	if t.root != nil {
		bnodeAscend(t.root, from, fn)
	}
}

func bnodeAscend[T any](n *bnode[T], from func(T) bool, fn func(T) bool) bool {
	if n.leaf() {
		i, _ := slices.BinarySearchFunc(n.items, true, func(it T, _ bool) int {
			if from(it) {
				return 1
			}
			return -1
		})
		for _, it := range n.items[i:] {
			if !fn(it) {
				return false
			}
		}
		return true
	}
	i, _ := slices.BinarySearchFunc(n.lasts, true, func(it T, _ bool) int {
		if from(it) {
			return 1
		}
		return -1
	})
	for _, c := range n.children[i:] {
		if !bnodeAscend(c, from, fn) {
			return false
		}
	}
	return true
}
