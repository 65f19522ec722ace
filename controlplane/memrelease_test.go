package controlplane

import (
	"runtime"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestShouldRelease(t *testing.T) {
	const mib = 1 << 20
	idle := heapSample{free: 0, objects: 100 * mib, live: 100 * mib, allocs: 500 * mib}
	for _, tt := range []struct {
		name    string
		cur     heapSample
		applied bool
		want    bool
	}{
		{"idle with much free memory", heapSample{free: 80 * mib, objects: 100 * mib, live: 100 * mib, allocs: 501 * mib}, false, true},
		{"idle with much garbage", heapSample{free: 0, objects: 140 * mib, live: 100 * mib, allocs: 501 * mib}, false, true},
		{"raft applied entries", heapSample{free: 80 * mib, objects: 100 * mib, live: 100 * mib, allocs: 501 * mib}, true, false},
		{"allocating", heapSample{free: 80 * mib, objects: 100 * mib, live: 100 * mib, allocs: 500*mib + idleAllocLimit + 1}, false, false},
		{"little to reclaim", heapSample{free: idleReleaseMinFree / 2, objects: 10*mib + idleReleaseMinFree/4, live: 10 * mib, allocs: 500 * mib}, false, false},
		{"a small part of the live heap", heapSample{free: 20 * mib, objects: 104 * mib, live: 100 * mib, allocs: 500 * mib}, false, false},
	} {
		if got := shouldRelease(idle, tt.cur, tt.applied); got != tt.want {
			t.Errorf("%s: shouldRelease = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestIdleMemoryRelease frees a large heap in a quiet server's process and
// waits for the server to return it to the system.
func TestIdleMemoryRelease(t *testing.T) {
	c := startTestClusterWith(t, 1, func(cfg *Config) { cfg.IdleMemoryRelease = 300 * time.Millisecond })
	srv := c.leader(t).srv
	// 256 MiB of garbage, collected: free memory the runtime keeps mapped
	// (its background scavenger returns some of it meanwhile, slowly).
	var keep [][]byte
	for range 256 {
		keep = append(keep, make([]byte, 1<<20))
	}
	for _, b := range keep {
		b[0] = 1
	}
	keep = nil
	runtime.GC()
	if free := readHeapSample().reclaimable(); free < 2*idleReleaseMinFree {
		t.Fatalf("only %d bytes of free heap after freeing 256 MiB", free)
	}
	releases := func() float64 {
		var m dto.Metric
		if err := srv.metrics.memoryReleases.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	// The test process holds other tests' garbage too, so the server may
	// have released memory before this test's heap was freed, or may be
	// releasing it right now: wait for a release counted after the
	// collection above that leaves little free.
	base := releases()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, free := releases(), readHeapSample().free
		if n > base && free < idleReleaseMinFree {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s: %v releases (%v before), %d bytes of free heap", n, base, free)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
