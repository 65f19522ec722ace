package main

import (
	"fmt"
	"io"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

type report struct {
	cfg        config
	version    string
	establish  time.Duration
	endpoints  int
	reconnects []reconnectResult
	idle       idleRate
	prop       runResult
	local      runResult
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// busy is CPU per change with the idle rate over the run's wall time taken
// out.
func busy(used time.Duration, idle float64, wall time.Duration, n int) time.Duration {
	d := used - time.Duration(idle*float64(wall))
	return d / time.Duration(n)
}

func (r *report) print(w io.Writer) {
	c := r.cfg
	fmt.Fprintf(w, "\n== federation: two 3-server meshfed clusters on loopback (%s), west exports to east\n", r.version)
	fmt.Fprintf(w, "   east dials west through a TCP proxy per west server (cut for the reconnects)\n\n")

	p := r.prop.latencies
	p99 := harness.Percentile(p, 0.99)
	fmt.Fprintf(w, "propagation: a write in west (UpdateWorkload on its leader) until a WatchResolve stream on an east follower shows it\n")
	fmt.Fprintf(w, "  %d changes, one at a time:  p50 %s  p90 %s  p99 %s  max %s   target p99 < %v: %s\n",
		len(p), harness.MS(harness.Percentile(p, 0.50)), harness.MS(harness.Percentile(p, 0.90)), harness.MS(p99), harness.MS(p[len(p)-1]),
		targetP99, met(p99 < targetP99))
	l := r.local.latencies
	fmt.Fprintf(w, "  the same write to a service that is not exported (west's write alone):  p50 %s  p99 %s\n\n",
		harness.MS(harness.Percentile(l, 0.50)), harness.MS(harness.Percentile(l, 0.99)))

	fmt.Fprintf(w, "full sync: %d exported services with %d endpoints each (%d endpoints arrived in east)\n", c.services, c.endpoints, r.endpoints)
	fmt.Fprintf(w, "  after establishment (EstablishPeering call until east's peering is synced with every service): %v   target < %v: %s\n",
		r.establish.Round(time.Millisecond), targetFullSync, met(r.establish < targetFullSync))
	var resync, restored []time.Duration
	for _, x := range r.reconnects {
		resync = append(resync, x.resync)
		restored = append(restored, x.restored)
	}
	mr := harness.Median(resync)
	fmt.Fprintf(w, "  after a reconnect (median of %d): %v from the new session's start until synced   target < %v: %s\n",
		len(resync), mr.Round(time.Millisecond), targetFullSync, met(mr < targetFullSync))
	fmt.Fprintf(w, "    from the link's return: %v (adds the dialer's reconnect backoff)\n\n", harness.Median(restored).Round(time.Millisecond))

	n := len(p)
	westProp := busy(r.prop.cpu.west, r.idle.west, r.prop.wall, n)
	eastProp := busy(r.prop.cpu.east, r.idle.east, r.prop.wall, n)
	westLocal := busy(r.local.cpu.west, r.idle.west, r.local.wall, len(l))
	eastLocal := busy(r.local.cpu.east, r.idle.east, r.local.wall, len(l))
	fmt.Fprintf(w, "CPU per change (all server processes, idle rate subtracted: west %.1f ms/s, east %.1f ms/s idle)\n",
		r.idle.west*1000, r.idle.east*1000)
	fmt.Fprintf(w, "  exported change:     west %s  east %s\n", us(westProp), us(eastProp))
	fmt.Fprintf(w, "  not exported:        west %s  east %s\n", us(westLocal), us(eastLocal))
	fmt.Fprintf(w, "  peer stream: west's extra %s (sending) + east %s (receiving, its Raft write and watch) = %s per change\n",
		us(westProp-westLocal), us(eastProp-eastLocal), us(westProp-westLocal+eastProp-eastLocal))
}

func us(d time.Duration) string { return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond)) }
