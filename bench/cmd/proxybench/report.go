package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

// summary is the median of each figure over a target's runs. Times are in
// milliseconds, memory in bytes.
type summary struct {
	Runs     int     `json:"runs"`
	P50      float64 `json:"p50_ms"`
	P90      float64 `json:"p90_ms"`
	P99      float64 `json:"p99_ms"`
	Max      float64 `json:"max_ms"`
	Requests int     `json:"requests"`
	Errors   int     `json:"errors"`
	// Added latency: this target's percentile less direct's in the same
	// run, median over runs. Absent for direct.
	AddedP50 *float64 `json:"added_p50_ms,omitempty"`
	AddedP99 *float64 `json:"added_p99_ms,omitempty"`
	// Maximum throughput, closed loop.
	MaxRuns   int     `json:"max_runs"`
	MaxRPS    float64 `json:"max_rps"`
	MaxErrors int     `json:"max_errors"`
	// CPU time per 1,000 requests of the fixed-rate phase: client side,
	// server side, and both (pairs only).
	CPUClient *float64 `json:"cpu_client_ms_per_1000,omitempty"`
	CPUServer *float64 `json:"cpu_server_ms_per_1000,omitempty"`
	CPUPair   *float64 `json:"cpu_pair_ms_per_1000,omitempty"`
	// CPU per 1,000 requests of a one-process target (the TCP relay).
	CPUProc *float64 `json:"cpu_ms_per_1000,omitempty"`
	// Both proxies' CPU per 1,000 requests in the maximum-throughput phase.
	CPUPairAtMax *float64 `json:"cpu_pair_ms_per_1000_at_max,omitempty"`
	// Resident memory before any load, and the peak under the fixed rate
	// (median over runs): client side, server side.
	IdleRSS []int64 `json:"idle_rss_bytes,omitempty"`
	LoadRSS []int64 `json:"load_rss_bytes,omitempty"`
	// This process (load generator and app) per 1,000 requests, and what
	// every other process on the machine took, in cores, during the
	// fixed-rate phase.
	SelfPer1000 float64 `json:"loadgen_ms_per_1000"`
	Others      float64 `json:"other_processes_cores"`
	// The load generator's lateness in handing requests to its workers.
	SendLagP50 float64 `json:"send_lag_p50_ms"`
	SendLagP99 float64 `json:"send_lag_p99_ms"`
	// CPU time per second of the pair's processes while idle, before any
	// load: client side, server side.
	IdleCPU []float64 `json:"idle_cpu_ms_per_s,omitempty"`
}

type targetJSON struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Skipped     string   `json:"skipped,omitempty"`
	Error       string   `json:"error,omitempty"`
	RunErrors   []string `json:"run_errors,omitempty"`
	Summary     *summary `json:"summary,omitempty"`
}

type manyJSON struct {
	Services   int     `json:"services"`
	Workloads  int     `json:"workloads"`
	Policies   int     `json:"policies"`
	PopulateMS float64 `json:"populate_ms"`
	ReadyMS    float64 `json:"ready_ms"`
	RSS        int64   `json:"rss_bytes"`
	RSSPeak    int64   `json:"rss_peak_bytes"`
	Settled    bool    `json:"settled"`
	PairRSS    []int64 `json:"pair_rss_bytes"`
	// Upstreams the proxy's /status listed with endpoints; -1: not checked.
	Resolved int    `json:"upstreams_with_endpoints"`
	Error    string `json:"error,omitempty"`
}

type goal struct {
	Name   string `json:"name"`
	Figure string `json:"figure"`
	// Met is absent when the figure was not measured.
	Met  *bool  `json:"met,omitempty"`
	Note string `json:"note,omitempty"`
}

type report struct {
	CPUs     int          `json:"cpus"`
	Settings settingsJSON `json:"settings"`
	Targets  []targetJSON `json:"systems"`
	Many     *manyJSON    `json:"idle_with_services,omitempty"`
	Goals    []goal       `json:"targets"`

	cfg config
	sum map[string]*summary
}

type settingsJSON struct {
	Rate          int     `json:"rate"`
	DurationS     float64 `json:"duration_s"`
	WarmupS       float64 `json:"warmup_s"`
	Conns         int     `json:"conns"`
	Concurrency   int     `json:"concurrency"`
	MaxDurationS  float64 `json:"max_duration_s"`
	Runs          int     `json:"runs"`
	Services      int     `json:"services"`
	BodyBytes     int     `json:"body_bytes"`
	LoadGenProcs  int     `json:"loadgen_gomaxprocs"`
	TLS13Suite    string  `json:"haproxy_tls13_ciphersuite"`
	RequestTimout float64 `json:"request_timeout_s"`
}

func ptr(f float64) *float64 { return &f }

func msf(d time.Duration) float64 { return harness.MSF(d) }

func summarize(e *entry, direct *entry) *summary {
	if len(e.fixed) == 0 && len(e.max) == 0 {
		return nil
	}
	s := &summary{Runs: len(e.fixed), MaxRuns: len(e.max), IdleRSS: e.idleRSS, IdleCPU: e.idleCPU}
	var p50, p90, p99, mx, self, others, lag50, lag99 []float64
	var addP50, addP99 []float64
	cpu := make([][]float64, len(e.procs))
	var pair []float64
	load := make([][]int64, len(e.procs))
	directRun := map[int]fixedResult{}
	for i, r := range direct.fixed {
		directRun[direct.runOf[i]] = r
	}
	for i, r := range e.fixed {
		p50 = append(p50, msf(r.pct(0.5)))
		p90 = append(p90, msf(r.pct(0.9)))
		p99 = append(p99, msf(r.pct(0.99)))
		mx = append(mx, msf(r.lat[len(r.lat)-1]))
		s.Requests += r.n
		s.Errors += r.errors
		if r.n > 0 {
			self = append(self, msf(r.use.self*1000/time.Duration(r.n)))
		}
		others = append(others, r.use.others.Seconds()/r.use.wall.Seconds())
		lag50 = append(lag50, msf(harness.Percentile(r.sendLag, 0.5)))
		lag99 = append(lag99, msf(harness.Percentile(r.sendLag, 0.99)))
		if e != direct {
			if d, ok := directRun[e.runOf[i]]; ok {
				addP50 = append(addP50, msf(r.pct(0.5)-d.pct(0.5)))
				addP99 = append(addP99, msf(r.pct(0.99)-d.pct(0.99)))
			}
		}
		var sum time.Duration
		for j := range e.procs {
			c := r.cpuPer1000(j)
			cpu[j] = append(cpu[j], msf(c))
			sum += c
			load[j] = append(load[j], r.rssPeak[j])
		}
		pair = append(pair, msf(sum))
	}
	if len(e.fixed) > 0 {
		s.P50, s.P90, s.P99, s.Max = harness.Median(p50), harness.Median(p90), harness.Median(p99), harness.Median(mx)
		s.SelfPer1000, s.Others = harness.Median(self), harness.Median(others)
		s.SendLagP50, s.SendLagP99 = harness.Median(lag50), harness.Median(lag99)
	}
	if len(addP50) > 0 {
		s.AddedP50, s.AddedP99 = ptr(harness.Median(addP50)), ptr(harness.Median(addP99))
	}
	if len(e.procs) == 1 && len(e.fixed) > 0 {
		s.CPUProc = ptr(harness.Median(cpu[0]))
	}
	if len(e.procs) == 2 && len(e.fixed) > 0 {
		s.CPUClient, s.CPUServer, s.CPUPair = ptr(harness.Median(cpu[0])), ptr(harness.Median(cpu[1])), ptr(harness.Median(pair))
		for j := range e.procs {
			s.LoadRSS = append(s.LoadRSS, harness.Median(load[j]))
		}
	}
	var rps, atMax []float64
	for _, r := range e.max {
		rps = append(rps, r.rate())
		s.MaxErrors += r.errors
		var sum time.Duration
		for _, c := range r.use.procs {
			sum += c
		}
		if r.n > 0 {
			atMax = append(atMax, msf(sum*1000/time.Duration(r.n)))
		}
	}
	if len(rps) > 0 {
		s.MaxRPS = harness.Median(rps)
	}
	if len(e.procs) == 2 && len(atMax) > 0 {
		s.CPUPairAtMax = ptr(harness.Median(atMax))
	}
	return s
}

func buildReport(cfg config, entries []*entry, many *manyResult, manyErr error) *report {
	r := &report{
		CPUs: harness.NProc(),
		Settings: settingsJSON{
			Rate: cfg.rate, DurationS: cfg.duration.Seconds(), WarmupS: cfg.warmup.Seconds(), Conns: cfg.conns,
			Concurrency: cfg.concurrency, MaxDurationS: cfg.maxDuration.Seconds(), Runs: cfg.runs, Services: cfg.services,
			BodyBytes: bodySize, LoadGenProcs: harness.RuntimeProcs(), TLS13Suite: tls13Suite, RequestTimout: requestTimeout.Seconds(),
		},
		cfg: cfg,
		sum: map[string]*summary{},
	}
	direct := entries[0]
	for _, e := range entries {
		t := targetJSON{Name: e.name, Description: e.desc, Skipped: e.skipped}
		if e.setup != nil {
			t.Error = e.setup.Error()
		}
		for _, err := range e.errs {
			t.RunErrors = append(t.RunErrors, err.Error())
		}
		if e.live() {
			t.Summary = summarize(e, direct)
			r.sum[e.name] = t.Summary
		}
		r.Targets = append(r.Targets, t)
	}
	switch {
	case many != nil:
		r.Many = &manyJSON{Services: many.services, Workloads: many.workloads, Policies: many.policies,
			PopulateMS: msf(many.populate), ReadyMS: msf(many.ready), RSS: many.rss, RSSPeak: many.rssPeak,
			Settled: many.settled, PairRSS: many.pairRSS, Resolved: many.resolved}
	case manyErr != nil:
		r.Many = &manyJSON{Services: cfg.services, Error: manyErr.Error()}
	}
	r.Goals = r.goals()
	return r
}

func met(b bool) *bool { return &b }

func (r *report) goals() []goal {
	m, h := r.sum["meshfed"], r.sum["haproxy"]
	var gs []goal
	for _, q := range []struct {
		name string
		get  func(*summary) *float64
	}{
		{"added latency p50 <= HAProxy's", func(s *summary) *float64 { return s.AddedP50 }},
		{"added latency p99 <= HAProxy's", func(s *summary) *float64 { return s.AddedP99 }},
	} {
		g := goal{Name: q.name, Figure: "not measured"}
		if m != nil && h != nil && q.get(m) != nil && q.get(h) != nil {
			mv, hv := *q.get(m), *q.get(h)
			g.Figure = fmt.Sprintf("meshfed %+.3f ms, HAProxy %+.3f ms", mv, hv)
			g.Met = met(mv <= hv)
		}
		gs = append(gs, g)
	}
	g := goal{Name: fmt.Sprintf("idle RSS with %d services <= %d MiB", targetServices, targetIdleRSS>>20), Figure: "not measured"}
	if r.Many != nil && r.Many.Error == "" {
		g.Figure = fmt.Sprintf("%s with %d services", mib(r.Many.RSS), r.Many.Services)
		g.Met = met(r.Many.RSS <= targetIdleRSS)
		if r.Many.Services != targetServices {
			g.Note = fmt.Sprintf("the target is for %d services", targetServices)
		}
		if !r.Many.Settled {
			g.Note = strings.TrimPrefix(g.Note+"; RSS had not settled", "; ")
		}
	}
	gs = append(gs, g)
	g = goal{Name: fmt.Sprintf("CPU per 1,000 requests, each proxy <= %.0f ms", msf(targetCPUPer1000)), Figure: "not measured"}
	if m != nil && m.CPUPair != nil {
		g.Figure = fmt.Sprintf("client proxy %.1f ms, server proxy %.1f ms (pair %.1f ms)", *m.CPUClient, *m.CPUServer, *m.CPUPair)
		g.Met = met(*m.CPUClient <= msf(targetCPUPer1000) && *m.CPUServer <= msf(targetCPUPer1000))
		var notes []string
		if h != nil && h.CPUPair != nil {
			notes = append(notes, fmt.Sprintf("HAProxy: client %.1f ms, server %.1f ms", *h.CPUClient, *h.CPUServer))
		}
		if t := r.sum["tcp-relay"]; t != nil && t.CPUProc != nil {
			notes = append(notes, fmt.Sprintf("a bare TCP relay hop: %.1f ms", *t.CPUProc))
		}
		g.Note = strings.Join(notes, "; ")
	}
	return append(gs, g)
}

func (r *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func (r *report) print(w io.Writer) {
	c := r.cfg
	fmt.Fprintf(w, "\n== proxy pair: processes on 127.0.0.1, %d CPUs (shared with the load generator and the app)\n", r.CPUs)
	fmt.Fprintf(w, "   app: an HTTP/1.1 server in the bench process, POST /bench, %d B in, %d B out\n", bodySize, bodySize)
	fmt.Fprintf(w, "   fixed rate: %d req/s open loop (latency from each request's due time), %v warm-up + %v measured, up to %d kept-alive connections\n",
		c.rate, c.warmup, c.duration, c.conns)
	fmt.Fprintf(w, "   max throughput: %d clients back to back, each on its own kept-alive connection, %v after %v unrecorded\n",
		c.concurrency, c.maxDuration, maxPhaseWarmup)
	fmt.Fprintf(w, "   %d run(s), targets taking turns to go first; medians over runs; added = target less direct in the same run\n", c.runs)
	fmt.Fprintf(w, "   both pairs: TLS 1.3, ECDSA P-256 certificates, client certificate required and verified, keep-alive on both hops;\n")
	fmt.Fprintf(w, "   HAProxy: cipher suite %s, the caller authorized by its certificate's CN; HAProxy threads: its default, one per CPU\n", tls13Suite)
	for _, t := range r.Targets {
		switch {
		case t.Skipped != "":
			fmt.Fprintf(w, "   %s: NOT RUN: %s\n", t.Name, t.Skipped)
		case t.Error != "":
			fmt.Fprintf(w, "   %s: NOT MEASURED: %s\n", t.Name, indent(t.Error))
		default:
			fmt.Fprintf(w, "   %s: %s\n", t.Name, t.Description)
		}
	}
	fmt.Fprintln(w)

	d, h, m := r.sum["direct"], r.sum["haproxy"], r.sum["meshfed"]
	const row = "%-44s %14s %14s %14s %15s\n"
	fmt.Fprintf(w, row, "", "direct", "HAProxy pair", "meshfed pair", "meshfed/HAProxy")
	type cell func(*summary) (string, float64, bool)
	line := func(name string, f cell, ratio bool) {
		vals := make([]string, 3)
		var hv, mv float64
		var hok, mok bool
		for i, s := range []*summary{d, h, m} {
			if s == nil {
				vals[i] = "-"
				continue
			}
			str, v, ok := f(s)
			if !ok {
				vals[i] = "-"
				continue
			}
			vals[i] = str
			switch i {
			case 1:
				hv, hok = v, true
			case 2:
				mv, mok = v, true
			}
		}
		rs := ""
		if ratio && hok && mok && hv > 0 && mv >= 0 {
			rs = fmt.Sprintf("%.2fx", mv/hv)
		}
		fmt.Fprintf(w, row, name, vals[0], vals[1], vals[2], rs)
	}
	ms := func(get func(*summary) float64) cell {
		return func(s *summary) (string, float64, bool) {
			if s.Runs == 0 {
				return "", 0, false
			}
			v := get(s)
			return fmt.Sprintf("%.3f", v), v, true
		}
	}
	opt := func(get func(*summary) *float64, format string) cell {
		return func(s *summary) (string, float64, bool) {
			p := get(s)
			if p == nil {
				return "", 0, false
			}
			return fmt.Sprintf(format, *p), *p, true
		}
	}
	mem := func(get func(*summary) []int64, i int) cell {
		return func(s *summary) (string, float64, bool) {
			v := get(s)
			if i >= len(v) {
				return "", 0, false
			}
			return mib(v[i]), float64(v[i]), true
		}
	}
	fmt.Fprintf(w, "fixed rate %d req/s\n", c.rate)
	line("  latency p50 ms", ms(func(s *summary) float64 { return s.P50 }), true)
	line("  latency p90 ms", ms(func(s *summary) float64 { return s.P90 }), true)
	line("  latency p99 ms", ms(func(s *summary) float64 { return s.P99 }), true)
	line("  latency max ms", ms(func(s *summary) float64 { return s.Max }), true)
	line("  added p50 ms (vs direct)", opt(func(s *summary) *float64 { return s.AddedP50 }, "%+.3f"), true)
	line("  added p99 ms (vs direct)", opt(func(s *summary) *float64 { return s.AddedP99 }, "%+.3f"), true)
	line("  failed requests (all runs)", func(s *summary) (string, float64, bool) {
		return fmt.Sprintf("%d/%d", s.Errors, s.Requests), 0, s.Runs > 0
	}, false)
	line("  CPU ms per 1,000 req: client side", opt(func(s *summary) *float64 { return s.CPUClient }, "%.1f"), true)
	line("  CPU ms per 1,000 req: server side", opt(func(s *summary) *float64 { return s.CPUServer }, "%.1f"), true)
	line("  CPU ms per 1,000 req: pair", opt(func(s *summary) *float64 { return s.CPUPair }, "%.1f"), true)
	line("  RSS idle: client side", mem(func(s *summary) []int64 { return s.IdleRSS }, 0), true)
	line("  RSS idle: server side", mem(func(s *summary) []int64 { return s.IdleRSS }, 1), true)
	line("  CPU ms per s, idle: client side", func(s *summary) (string, float64, bool) {
		if len(s.IdleCPU) < 1 {
			return "", 0, false
		}
		return fmt.Sprintf("%.1f", s.IdleCPU[0]), s.IdleCPU[0], true
	}, true)
	line("  CPU ms per s, idle: server side", func(s *summary) (string, float64, bool) {
		if len(s.IdleCPU) < 2 {
			return "", 0, false
		}
		return fmt.Sprintf("%.1f", s.IdleCPU[1]), s.IdleCPU[1], true
	}, true)
	line("  RSS under load (peak): client side", mem(func(s *summary) []int64 { return s.LoadRSS }, 0), true)
	line("  RSS under load (peak): server side", mem(func(s *summary) []int64 { return s.LoadRSS }, 1), true)
	line("  load generator + app CPU ms per 1,000", ms(func(s *summary) float64 { return s.SelfPer1000 }), false)
	line("  load generator send lag p50 ms", ms(func(s *summary) float64 { return s.SendLagP50 }), false)
	line("  load generator send lag p99 ms", ms(func(s *summary) float64 { return s.SendLagP99 }), false)
	line("  other processes on the machine (cores)", ms(func(s *summary) float64 { return s.Others }), false)
	fmt.Fprintf(w, "max throughput, %d clients\n", c.concurrency)
	line("  requests/s", func(s *summary) (string, float64, bool) {
		return fmt.Sprintf("%.0f", s.MaxRPS), s.MaxRPS, s.MaxRuns > 0
	}, true)
	line("  failed requests (all runs)", func(s *summary) (string, float64, bool) {
		return fmt.Sprintf("%d", s.MaxErrors), 0, s.MaxRuns > 0
	}, false)
	line("  CPU ms per 1,000 req: pair", opt(func(s *summary) *float64 { return s.CPUPairAtMax }, "%.1f"), true)
	fmt.Fprintln(w, "  (meshfed/HAProxy below 1 means meshfed is ahead, except for requests/s)")

	if t := r.sum["tcp-relay"]; t != nil && t.Runs > 0 {
		fmt.Fprintf(w, "reference hop (tcp-relay: one HAProxy thread, plain TCP, no TLS, no HTTP), same load\n")
		if t.AddedP50 != nil {
			fmt.Fprintf(w, "  added p50 / p99 ms (vs direct)              %+.3f / %+.3f\n", *t.AddedP50, *t.AddedP99)
		}
		if t.CPUProc != nil {
			fmt.Fprintf(w, "  CPU ms per 1,000 req                        %.1f\n", *t.CPUProc)
		}
		fmt.Fprintf(w, "  max throughput requests/s                   %.0f\n", t.MaxRPS)
		fmt.Fprintf(w, "  failed requests (all runs)                  %d/%d, %d at max throughput\n", t.Errors, t.Requests, t.MaxErrors)
	}

	for _, t := range r.Targets {
		for _, e := range t.RunErrors {
			fmt.Fprintf(w, "  %s: a run failed: %s\n", t.Name, indent(e))
		}
	}

	if r.Many != nil {
		fmt.Fprintln(w)
		if r.Many.Error != "" {
			fmt.Fprintf(w, "idle meshfed-proxy with %d services: NOT MEASURED: %s\n", r.Many.Services, indent(r.Many.Error))
		} else {
			mn := r.Many
			fmt.Fprintf(w, "idle meshfed-proxy with %d services known: %d services (%d static workloads, one ALLOW policy each) in the catalog,\n",
				mn.Services, mn.Services, mn.Workloads)
			fmt.Fprintf(w, "  all of them upstreams of a third proxy (%d --upstream flags), ready %v after it started\n",
				mn.Services, time.Duration(mn.ReadyMS*float64(time.Millisecond)).Round(time.Millisecond))
			if mn.Resolved >= 0 {
				fmt.Fprintf(w, "  its /status listed endpoints for %d of %d upstreams before memory was read\n", mn.Resolved, mn.Services)
			} else {
				fmt.Fprintf(w, "  (its /status was not usable: whether it had every upstream's endpoints was not checked)\n")
			}
			settled := "settled (6 samples over 3 s within 1%)"
			if !mn.Settled {
				settled = "NOT settled within 60 s"
			}
			fmt.Fprintf(w, "  RSS %s, %s; peak while settling %s\n", mib(mn.RSS), settled, mib(mn.RSSPeak))
			if len(mn.PairRSS) == 2 {
				fmt.Fprintf(w, "  meanwhile the pair's proxies (the services are in the catalog, not their upstreams): client %s, server %s\n",
					mib(mn.PairRSS[0]), mib(mn.PairRSS[1]))
			}
		}
	}

	fmt.Fprintln(w)
	fmt.Fprintln(w, "targets")
	for _, g := range r.Goals {
		state, figure := "not measured", g.Figure
		if g.Met == nil {
			figure = ""
		} else {
			state = "NOT met"
			if *g.Met {
				state = "met"
			}
		}
		note := ""
		if g.Note != "" {
			note = " (" + g.Note + ")"
		}
		fmt.Fprintf(w, "  %-48s %-12s %s%s\n", g.Name+":", state, figure, note)
	}
}

func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n    ") }
