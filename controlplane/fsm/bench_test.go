package fsm

import (
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// benchWorkload is workload j of a realistic fleet: 20 namespaces, 500
// services of 200 workloads each at 100,000; no labels.
func benchWorkload(j int, health meshfedv1.HealthStatus) *meshfedv1.Workload {
	ns := fmt.Sprintf("team-%d", j%20)
	svc := fmt.Sprintf("svc-%d", j%500)
	return &meshfedv1.Workload{
		Meta:     &meshfedv1.Meta{Namespace: ns, Name: fmt.Sprintf("%s-%08x", svc, j)},
		Service:  svc,
		Address:  fmt.Sprintf("10.%d.%d.%d", j>>16&255, j>>8&255, j&255),
		Port:     8080,
		Health:   health,
		Locality: &meshfedv1.Locality{Region: "eu-west-1", Zone: "eu-west-1a"},
		SpiffeId: "spiffe://example.org/ns/" + ns + "/sa/" + svc,
		Version:  "v1",
	}
}

// upsertCommand encodes the upsert of w as the API server proposes it.
func upsertCommand(tb testing.TB, w *meshfedv1.Workload, at time.Time) []byte {
	tb.Helper()
	payload, err := proto.Marshal(w)
	if err != nil {
		tb.Fatal(err)
	}
	data, err := Encode(UpsertResourceType, &meshfedv1.ResourceWrite{
		Kind:      meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD,
		Payload:   payload,
		Namespace: w.GetMeta().GetNamespace(),
		Name:      w.GetMeta().GetName(),
		Time:      timestamppb.New(at),
	})
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// BenchmarkApplyBatch measures ApplyBatch of 256 workload upserts (one
// Raft batch under load) into a store that already holds 100,000
// workloads: "update" rewrites existing workloads (a health change),
// "create" adds new ones. One op is one batch; ns/write, B/write and
// allocs/write are per upsert.
func BenchmarkApplyBatch(b *testing.B) {
	const prefill = 100_000
	const batch = 256
	for _, mode := range []string{"update", "create"} {
		b.Run(mode, func(b *testing.B) {
			f, err := New(Config{})
			if err != nil {
				b.Fatal(err)
			}
			at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			logs := make([]*raft.Log, batch)
			for i := range logs {
				logs[i] = &raft.Log{Type: raft.LogCommand}
			}
			idx := uint64(0)
			apply := func(data [][]byte) {
				for i := range logs {
					idx++
					logs[i].Index, logs[i].Data = idx, data[i]
				}
				for i, r := range f.ApplyBatch(logs) {
					if err := r.(*Result).Err; err != nil {
						b.Fatalf("log %d: %v", logs[i].Index, err)
					}
				}
			}
			data := make([][]byte, batch)
			for i := 0; i < prefill; i += batch {
				for j := range data {
					data[j] = upsertCommand(b, benchWorkload((i+j)%prefill, meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY), at)
				}
				apply(data)
			}
			// The commands of the measured batches, built beforehand (and
			// again, timer stopped, when creates run out of them).
			const distinct = 64
			cmds := make([][][]byte, distinct)
			build := func(base int) {
				for k := range cmds {
					cmds[k] = make([][]byte, batch)
					for j := range cmds[k] {
						n := (base+k)*batch + j
						health := meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY
						if mode == "update" {
							// Spread over the fleet, another health.
							n = (n * 7919) % prefill
							health = meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
						} else {
							n += prefill
						}
						cmds[k][j] = upsertCommand(b, benchWorkload(n, health), at.Add(time.Minute))
					}
				}
			}
			build(0)
			runtime.GC()
			var before, after, excluded runtime.MemStats
			runtime.ReadMemStats(&before)
			cpu0 := cpuTime()
			var excludedCPU time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			k := 0
			for b.Loop() {
				if mode == "create" && k > 0 && k%distinct == 0 {
					b.StopTimer()
					var m0, m1 runtime.MemStats
					runtime.ReadMemStats(&m0)
					c0 := cpuTime()
					build(k)
					excludedCPU += cpuTime() - c0
					runtime.ReadMemStats(&m1)
					excluded.Mallocs += m1.Mallocs - m0.Mallocs
					excluded.TotalAlloc += m1.TotalAlloc - m0.TotalAlloc
					b.StartTimer()
				}
				apply(cmds[k%distinct])
				k++
			}
			b.StopTimer()
			cpu := cpuTime() - cpu0 - excludedCPU
			runtime.ReadMemStats(&after)
			writes := float64(b.N) * batch
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/writes, "ns/write")
			// CPU time of the whole process, garbage collection included:
			// steadier than ns/write on a busy machine, and what three
			// servers sharing two cores pay.
			b.ReportMetric(float64(cpu.Nanoseconds())/writes, "cpu-ns/write")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs-excluded.Mallocs)/writes, "allocs/write")
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc-excluded.TotalAlloc)/writes, "B/write")
		})
	}
}

// cpuTime is the user and system CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
