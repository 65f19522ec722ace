package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

// agg is the median of each figure over a system's runs.
type agg struct {
	rate, perCPU, p50, p99, wall, clientUS, others float64
	errs, runs                                     int
}

func aggregate(rs []result) agg {
	var rate, perCPU, p50, p99, wall, client, others []float64
	a := agg{runs: len(rs)}
	for _, r := range rs {
		rate = append(rate, r.rate())
		perCPU = append(perCPU, r.perCPU())
		p50 = append(p50, harness.MSF(r.pct(0.50)))
		p99 = append(p99, harness.MSF(r.pct(0.99)))
		wall = append(wall, r.wall.Seconds())
		client = append(client, float64(r.clientPerReq())/float64(time.Microsecond))
		others = append(others, r.othersCores())
		a.errs += r.errors
	}
	a.rate, a.perCPU, a.p50, a.p99 = harness.Median(rate), harness.Median(perCPU), harness.Median(p50), harness.Median(p99)
	a.wall, a.clientUS, a.others = harness.Median(wall), harness.Median(client), harness.Median(others)
	return a
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func printReport(cfg config, entries []*entry, raft *raftTrack) {
	fmt.Println()
	fmt.Printf("SVID issuance: processes on 127.0.0.1, %d cores, GOMAXPROCS of the load generator %d\n", harness.NProc(), harness.RuntimeProcs())
	fmt.Println("  both: ECDSA P-256 root, intermediate and workload keys; TLS 1.3; one connection per")
	fmt.Println("        workload (concurrency = workloads issuing back to back); CSRs have no subject and one URI SAN, the")
	if cfg.freshCSR {
		fmt.Println("        workload's SPIFFE ID; every request carries a new key's CSR, made by the client before its clock starts;")
	} else {
		fmt.Println("        workload's SPIFFE ID; each workload's key and CSR are made once in setup and sent with every request;")
	}
	fmt.Println("        a response counts once it holds a PEM certificate (each workload's first one is fully verified in setup)")
	fmt.Println("  CPU: utime+stime from /proc/<pid>/stat of the server processes (meshfed: sum of its 3 servers; step-ca: its")
	fmt.Println("       one process), difference over the measured window; SVIDs/CPU-s = SVIDs received in the window / that")
	fmt.Println("       CPU time. For information: client us/SVID is the load generator's own CPU per SVID (getrusage);")
	fmt.Println("       others is the CPU taken meanwhile by every other process on the machine (/proc/stat), in cores")
	for _, e := range entries {
		if e.setup != nil {
			fmt.Printf("  %s: NOT MEASURED: %v\n", e.name, indent(e.setup.Error()))
			continue
		}
		fmt.Printf("  %s\n", e.desc)
	}
	if len(cfg.levels) > 0 {
		fmt.Printf("  %v warm-up, %v measured; median of %d run(s), systems alternating\n\n", cfg.warmup, cfg.duration, cfg.runs)
		const row = "%-16s %5v %9v %12v %8v %8v %7v %14v %7v  %s\n"
		fmt.Printf(row, "system", "conc", "SVIDs/s", "SVIDs/CPU-s", "p50 ms", "p99 ms", "errors", "client us/SVID", "others", "")
		for _, conc := range cfg.levels {
			got := map[string]agg{}
			for _, e := range entries {
				if e.setup != nil {
					continue
				}
				rs := e.levels[conc]
				if len(rs) == 0 {
					fmt.Printf(row, e.name, conc, "-", "-", "-", "-", "-", "-", "-", "failed")
					continue
				}
				a := aggregate(rs)
				got[e.name] = a
				note := ""
				if len(rs) < cfg.runs {
					note = fmt.Sprintf("(%d of %d runs failed)", cfg.runs-len(rs), cfg.runs)
				}
				if e.name == "meshfed" {
					note = strings.TrimSpace(note + fmt.Sprintf(" target >= %d/CPU-s: %s", targetPerCPU, yesNo(a.perCPU >= targetPerCPU)))
					if s, ok := got["step-ca"]; ok {
						note += ", ahead of step-ca: " + yesNo(a.perCPU > s.perCPU)
					}
				}
				fmt.Printf(row, e.name, conc, fmt.Sprintf("%.0f", a.rate), fmt.Sprintf("%.0f", a.perCPU),
					fmt.Sprintf("%.2f", a.p50), fmt.Sprintf("%.2f", a.p99), a.errs, fmt.Sprintf("%.0f", a.clientUS), fmt.Sprintf("%.2f", a.others), note)
			}
			m, okM := got["meshfed"]
			s, okS := got["step-ca"]
			if okM && okS {
				fmt.Printf(row, "meshfed/step-ca", conc, fmt.Sprintf("%.2fx", m.rate/s.rate), fmt.Sprintf("%.2fx", m.perCPU/s.perCPU),
					fmt.Sprintf("%.2fx", m.p50/s.p50), fmt.Sprintf("%.2fx", m.p99/s.p99), "", "", "", "")
			}
		}
		fmt.Println("  (meshfed/step-ca: above 1 for SVIDs/s and SVIDs/CPU-s and below 1 for latency mean meshfed is ahead)")
		printErrors(entries, cfg.levels)
	}

	if !cfg.skipStorm {
		per := cfg.stormRenewals / cfg.stormWorkloads
		fmt.Println()
		fmt.Printf("Renewal storm: %d workloads, each on its own connection (meshfed: mutual TLS with its own SVID), issue %d\n",
			cfg.stormWorkloads, per)
		fmt.Printf("  requests back to back, all starting together: %d SVIDs; connections up and every request prepared\n", per*cfg.stormWorkloads)
		fmt.Printf("  (step-ca: its tokens signed) before the start; median of %d run(s), systems alternating\n\n", cfg.stormRuns)
		const row = "%-10s %9v %9v %12v %8v %8v %7v %14v %7v  %s\n"
		fmt.Printf(row, "system", "total s", "SVIDs/s", "SVIDs/CPU-s", "p50 ms", "p99 ms", "errors", "client us/SVID", "others", "")
		for _, e := range entries {
			if e.setup != nil {
				continue
			}
			if len(e.storm) == 0 {
				fmt.Printf(row, e.name, "-", "-", "-", "-", "-", "-", "-", "-", "failed: "+indent(firstNonNil(e.stErrs...).Error()))
				continue
			}
			a := aggregate(e.storm)
			note := ""
			switch {
			case e.name != "meshfed":
			case per*cfg.stormWorkloads != targetStormSVIDs:
				note = fmt.Sprintf("(the targets are for %d renewals)", targetStormSVIDs)
			default:
				note = fmt.Sprintf("targets: total < %v: %s, p99 < %v: %s", targetStormDur, yesNo(a.wall < targetStormDur.Seconds()),
					targetStormP99, yesNo(a.p99 < harness.MSF(targetStormP99)))
			}
			fmt.Printf(row, e.name, fmt.Sprintf("%.2f", a.wall), fmt.Sprintf("%.0f", a.rate), fmt.Sprintf("%.0f", a.perCPU),
				fmt.Sprintf("%.2f", a.p50), fmt.Sprintf("%.2f", a.p99), a.errs, fmt.Sprintf("%.0f", a.clientUS), fmt.Sprintf("%.2f", a.others), note)
			for _, r := range e.storm {
				if r.errors > 0 {
					fmt.Printf("  %s storm: first error: %v\n", e.name, r.firstErr)
					break
				}
			}
		}
	}

	if raft.formed != nil || raft.setupErr != nil {
		fmt.Println()
		fmt.Println("meshfed Raft last index (each server's own, from ClusterService.GetClusterStatus):")
		if raft.setupErr != nil {
			fmt.Printf("  not read: %v\n", raft.setupErr)
			return
		}
		fmt.Printf("  %-44s %s\n", "cluster formed", fmtIndexes(raft.formed))
		if raft.afterSetup != nil {
			fmt.Printf("  %-44s %s  (%+d on the leader)\n",
				fmt.Sprintf("after setup (%d tokens, attests, renewals)", raft.workloads), fmtIndexes(raft.afterSetup), maxIndex(raft.afterSetup)-maxIndex(raft.formed))
		}
		switch {
		case raft.afterErr != nil:
			fmt.Printf("  after the measured phases: not read: %v\n", raft.afterErr)
		case raft.after != nil:
			n := raft.issuedAfter - raft.issuedSetup
			d := maxIndex(raft.after) - maxIndex(raft.afterSetup)
			fmt.Printf("  %-44s %s  (%+d on the leader while %d SVIDs were issued)\n",
				"after the measured phases", fmtIndexes(raft.after), d, n)
			fmt.Printf("  (target: no Raft write per issued SVID: %s)\n", yesNo(d < n/100+5))
		}
	}
}

func printErrors(entries []*entry, levels []int) {
	for _, e := range entries {
		for _, conc := range levels {
			for _, err := range e.lvlErrs[conc] {
				fmt.Printf("  %s c=%d failed: %s\n", e.name, conc, indent(err.Error()))
				break
			}
			for _, r := range e.levels[conc] {
				if r.errors > 0 {
					fmt.Printf("  %s c=%d: %d requests failed, first: %v\n", e.name, conc, r.errors, r.firstErr)
					break
				}
			}
		}
	}
}

func fmtIndexes(m map[string]uint64) string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var parts []string
	for _, id := range ids {
		parts = append(parts, fmt.Sprintf("%s=%d", id, m[id]))
	}
	return strings.Join(parts, " ")
}

// maxIndex is the highest last index, the leader's.
func maxIndex(m map[string]uint64) int64 {
	var hi uint64
	for _, v := range m {
		hi = max(hi, v)
	}
	return int64(hi)
}

func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n    ") }
