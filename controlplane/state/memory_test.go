package state

import (
	"fmt"
	"runtime"
	"testing"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// TestHeapBytesPerWorkload reports the heap one stored workload costs, with
// 100,000 of them (the design target is under 1 KB):
//
//   - "created": realistic workloads (name, namespace, service, address,
//     port, locality, health, SPIFFE ID and version; no labels), 200 per
//     service, each written once;
//   - "updated": the same, each written a second time with a later time
//     stamp and another health, as a health check would, so that the
//     stored meta has distinct create and update times;
//   - "bench": the workloads of the cluster write benchmark (bench/cmd/
//     writebench): all of one service, padded to 256 bytes with labels,
//     the same for all.
//
// It asserts nothing about the figures; they are there to be read (go test
// -v -run HeapBytes).
func TestHeapBytesPerWorkload(t *testing.T) {
	if testing.Short() {
		t.Skip("stores 100,000 workloads")
	}
	if raceEnabled {
		t.Skip("the race detector distorts heap figures")
	}
	for _, tt := range []struct {
		name     string
		passes   int
		workload func(j, pass int) *meshfedv1.Workload
	}{
		{"created", 1, realisticWorkload},
		{"updated", 2, realisticWorkload},
		{"bench", 1, benchShapedWorkload},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const n = 100_000
			before := heapInUse()
			s := newTestStore(t)
			idx := uint64(1)
			for pass := range tt.passes {
				idx = fillWorkloads(t, s, n, idx, pass, tt.workload)
			}
			after := heapInUse()
			per := float64(after-before) / n
			t.Logf("heap per workload with %d workloads: %.0f bytes", n, per)

			_, items, _, err := s.List(nil, ListParams{Kind: meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD, Limit: 1})
			if err != nil || len(items) != 1 {
				t.Fatalf("List = %d items, %v", len(items), err)
			}
			runtime.KeepAlive(s)
		})
	}
}

// realisticWorkload is workload j of a fleet: 20 namespaces, 500 services
// of 200 workloads each. pass > 0 marks it unhealthy on odd passes.
func realisticWorkload(j, pass int) *meshfedv1.Workload {
	ns := fmt.Sprintf("team-%d", j%20)
	svc := fmt.Sprintf("svc-%d", j%500)
	w := workload(ns, fmt.Sprintf("%s-%08x", svc, j), svc, fmt.Sprintf("10.%d.%d.%d", j>>16&255, j>>8&255, j&255))
	if pass%2 == 1 {
		w.Health = meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
	}
	return w
}

// benchPadding is the label values of benchShapedWorkload: 256 bytes in
// labels of at most 60 characters, as the write benchmark pads them.
var benchPadding = func() map[string]string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	labels := map[string]string{}
	for i := 0; i*60 < 256; i++ {
		b := make([]byte, min(60, 256-i*60))
		for k := range b {
			b[k] = alphabet[(i*60+k)*7%len(alphabet)]
		}
		labels[fmt.Sprintf("pad%d", i)] = string(b)
	}
	return labels
}()

// benchShapedWorkload is workload j of the write benchmark.
func benchShapedWorkload(j, _ int) *meshfedv1.Workload {
	return &meshfedv1.Workload{
		Meta:    &meshfedv1.Meta{Namespace: "default", Name: fmt.Sprintf("k%015d", j), Labels: benchPadding},
		Service: "bench",
		Address: "127.0.0.1",
		Port:    8080,
		Health:  meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY,
	}
}

// fillWorkloads upserts workloads 0..n-1 of pass in batches of 512, as the
// FSM would, and returns the next index.
func fillWorkloads(t testing.TB, s *Store, n int, idx uint64, pass int, workload func(j, pass int) *meshfedv1.Workload) uint64 {
	const batch = 512
	writes := make([]*meshfedv1.ResourceWrite, 0, batch)
	for i := 0; i < n; i += batch {
		writes = writes[:0]
		for j := i; j < min(i+batch, n); j++ {
			w := upsertWrite(t, workload(j, pass))
			w.Time.Seconds += int64(pass) * 60
			writes = append(writes, w)
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
	return idx
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

// BenchmarkListService measures listing the 200 workloads of one service in
// a store of 100,000, as a proxy's watch does on every change.
func BenchmarkListService(b *testing.B) {
	s := newTestStore(b)
	fillWorkloads(b, s, 100_000, 1, 0, realisticWorkload)
	b.ReportAllocs()
	for b.Loop() {
		_, items, _, err := s.List(nil, ListParams{Kind: meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD, Namespace: "team-7", Service: "svc-107"})
		if err != nil || len(items) != 200 {
			b.Fatalf("List = %d items, %v", len(items), err)
		}
	}
}
