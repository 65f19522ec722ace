package controlplane

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Returning memory to the system when idle.
//
// Go's runtime keeps the heap memory a collection frees mapped, up to about
// the heap goal (twice the live heap by default), so that the next
// allocations reuse it without page faults. A server holding a large
// catalog thus keeps up to its catalog's size again resident after a burst
// of writes (a bulk registration, a restore), for as long as it stays
// quiet. Once the server has been idle for a whole interval (it applied no
// Raft entry and allocated little) and what a collection would give back
// (free memory still mapped, and garbage) is more than a quarter of the
// live heap, it collects and returns what is free (debug.FreeOSMemory). A
// busy server never does: it would only fault the memory back in.
const (
	defaultIdleRelease = 30 * time.Second
	// idleReleaseMinFree is the least reclaimable memory worth a
	// collection.
	idleReleaseMinFree = 16 << 20
	// idleAllocLimit is the most a server may allocate in an interval and
	// still count as idle.
	idleAllocLimit = 8 << 20
)

// heapSample is what releaseIdleMemory reads of the runtime.
type heapSample struct {
	free    uint64 // free heap memory not returned to the system
	objects uint64 // memory of objects not yet found dead by a collection
	live    uint64 // memory of the objects the last collection found live
	allocs  uint64 // bytes allocated since the process started
}

var heapSampleNames = []string{
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/objects:bytes",
	"/gc/heap/live:bytes",
	"/gc/heap/allocs:bytes",
}

// readHeapSample reads runtime/metrics, which, unlike ReadMemStats, does
// not stop the world.
func readHeapSample() heapSample {
	ms := make([]metrics.Sample, len(heapSampleNames))
	for i, n := range heapSampleNames {
		ms[i].Name = n
	}
	metrics.Read(ms)
	v := func(i int) uint64 {
		if ms[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return ms[i].Value.Uint64()
	}
	return heapSample{free: v(0), objects: v(1), live: v(2), allocs: v(3)}
}

// reclaimable is about what a collection and a release would give back:
// the free memory, and the objects allocated since the last collection
// (mostly garbage in an idle server).
func (h heapSample) reclaimable() uint64 {
	return h.free + h.objects - min(h.live, h.objects)
}

// shouldRelease decides from two samples an interval apart, and whether
// Raft applied anything in between, whether to return free memory.
func shouldRelease(prev, cur heapSample, applied bool) bool {
	if applied || cur.allocs-prev.allocs > idleAllocLimit {
		return false
	}
	r := cur.reclaimable()
	return r >= idleReleaseMinFree && r > cur.live/4
}

// releaseIdleMemory returns free heap memory to the system each time the
// server has been idle for an interval with much of its heap free, until
// ctx ends.
func (s *Server) releaseIdleMemory(ctx context.Context) {
	if s.cfg.IdleMemoryRelease < 0 {
		return
	}
	t := time.NewTicker(orDefault(s.cfg.IdleMemoryRelease, defaultIdleRelease))
	defer t.Stop()
	prev, prevApplied := readHeapSample(), s.raft.AppliedIndex()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur, applied := readHeapSample(), s.raft.AppliedIndex()
		if shouldRelease(prev, cur, applied != prevApplied) {
			start := time.Now()
			debug.FreeOSMemory()
			after := readHeapSample()
			s.metrics.memoryReleases.Inc()
			s.log.Debug("idle: returned free heap memory to the system",
				"free_before", cur.free, "free_after", after.free, "took", time.Since(start))
			cur = after
		}
		prev, prevApplied = cur, applied
	}
}
