package state

import (
	"fmt"
	"runtime"
	"testing"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// TestHeapBytesPerWorkload reports the heap one stored workload costs, with
// 100,000 of them (the design target is under 1 KB). It asserts nothing
// about the figure; it is there to be read (go test -v -run HeapBytes).
func TestHeapBytesPerWorkload(t *testing.T) {
	if testing.Short() {
		t.Skip("stores 100,000 workloads")
	}
	if raceEnabled {
		t.Skip("the race detector distorts heap figures")
	}
	const n = 100_000
	const batch = 512
	before := heapInUse()
	s := newTestStore(t)
	writes := make([]*meshfedv1.ResourceWrite, 0, batch)
	idx := uint64(1)
	for i := 0; i < n; i += batch {
		writes = writes[:0]
		for j := i; j < min(i+batch, n); j++ {
			ns := fmt.Sprintf("team-%d", j%20)
			svc := fmt.Sprintf("svc-%d", j%500)
			w := workload(ns, fmt.Sprintf("%s-%08x", svc, j), svc, fmt.Sprintf("10.%d.%d.%d", j>>16&255, j>>8&255, j&255))
			writes = append(writes, upsertWrite(t, w))
		}
		tx := s.WriteTxn(idx)
		for _, w := range writes {
			tx.SetIndex(idx)
			if _, err := tx.Upsert(w); err != nil {
				t.Fatal(err)
			}
			idx++
		}
		tx.Commit()
	}
	writes = nil
	after := heapInUse()
	per := float64(after-before) / n
	t.Logf("heap per workload with %d workloads: %.0f bytes", n, per)

	_, items, _, err := s.List(nil, ListParams{Kind: meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD, Limit: 1})
	if err != nil || len(items) != 1 {
		t.Fatalf("List = %d items, %v", len(items), err)
	}
	runtime.KeepAlive(s)
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkUpsertWorkload measures one workload upsert in its own
// transaction, as the FSM applies an unbatched log, into a store that
// already holds 10,000 workloads.
func BenchmarkUpsertWorkload(b *testing.B) {
	s := newTestStore(b)
	const prefill = 10_000
	writes := make([]*meshfedv1.ResourceWrite, prefill)
	for i := range writes {
		svc := fmt.Sprintf("svc-%d", i%100)
		writes[i] = upsertWrite(b, workload("default", fmt.Sprintf("%s-%d", svc, i), svc, fmt.Sprintf("10.0.%d.%d", i>>8&255, i&255)))
	}
	idx := uint64(1)
	tx := s.WriteTxn(idx)
	for _, w := range writes {
		if _, err := tx.Upsert(w); err != nil {
			b.Fatal(err)
		}
	}
	tx.Commit()

	b.ReportAllocs()
	i := 0
	for b.Loop() {
		idx++
		tx := s.WriteTxn(idx)
		if _, err := tx.Upsert(writes[i%prefill]); err != nil {
			b.Fatal(err)
		}
		tx.Commit()
		i++
	}
}
