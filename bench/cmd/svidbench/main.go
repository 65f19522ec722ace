// Command svidbench measures end-to-end SVID issuance (a CSR sent by a
// workload to a signed certificate received) of a 3-server meshfed cluster
// side by side with step-ca on the same machine: SVIDs per CPU-second of the
// server processes and p50/p99 latency at several concurrency levels, a
// renewal storm from many workloads at once, and how far meshfed's Raft log
// moves while SVIDs are issued. It prints figures and asserts nothing.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

type config struct {
	duration, warmup time.Duration
	runs             int
	levels           []int
	stormWorkloads   int
	stormRenewals    int
	stormRuns        int
	skipStepCA       bool
	skipMeshfed      bool
	skipLevels       bool
	skipStorm        bool
	freshCSR         bool
	meshfedBin       string
	stepCABin        string
	keep             bool
}

// Targets from the spec, printed next to the figures.
const (
	targetPerCPU     = 4000
	targetStormSVIDs = 10000
	targetStormDur   = 5 * time.Second
	targetStormP99   = time.Second
)

func main() {
	var cfg config
	var levels string
	flag.DurationVar(&cfg.duration, "duration", 3*time.Second, "measured time per system, level and run")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured load before each measurement")
	flag.IntVar(&cfg.runs, "runs", 3, "runs per system and level (and storm); medians are printed")
	flag.StringVar(&levels, "levels", "1,16,64", "comma-separated concurrency levels (one workload per concurrent request)")
	flag.IntVar(&cfg.stormWorkloads, "storm-workloads", 500, "workloads (connections) in the renewal storm")
	flag.IntVar(&cfg.stormRenewals, "storm-renewals", 10000, "renewals in one storm, spread evenly over the workloads")
	flag.IntVar(&cfg.stormRuns, "storm-runs", 0, "storm runs per system (default: -runs)")
	flag.BoolVar(&cfg.skipStepCA, "skip-stepca", false, "do not run step-ca")
	flag.BoolVar(&cfg.skipMeshfed, "skip-meshfed", false, "do not run meshfed")
	flag.BoolVar(&cfg.skipLevels, "skip-levels", false, "skip the concurrency levels")
	flag.BoolVar(&cfg.skipStorm, "skip-storm", false, "skip the renewal storm")
	flag.BoolVar(&cfg.freshCSR, "fresh-csr", false, "send a new key's CSR with every request (made before its clock starts) instead of each workload's one CSR")
	flag.StringVar(&cfg.meshfedBin, "meshfed-bin", "../bin/meshfed", "meshfed server binary")
	flag.StringVar(&cfg.stepCABin, "stepca-bin", "../bin/tools/step-ca", "step-ca binary (scripts/bench-deps.sh installs it)")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory (data dirs, configs and logs)")
	flag.Parse()
	for _, f := range strings.Split(levels, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "svidbench: bad -levels entry %q\n", f)
			os.Exit(2)
		}
		cfg.levels = append(cfg.levels, n)
	}
	cfg.runs = max(cfg.runs, 1)
	if cfg.stormRuns < 1 {
		cfg.stormRuns = cfg.runs
	}
	if cfg.stormWorkloads < 1 || cfg.stormRenewals < cfg.stormWorkloads {
		fmt.Fprintln(os.Stderr, "svidbench: need -storm-workloads >= 1 and -storm-renewals >= -storm-workloads")
		os.Exit(2)
	}
	if cfg.skipLevels {
		cfg.levels = nil
	}
	if err := run(cfg); err != nil {
		if errors.Is(err, context.Canceled) {
			err = errors.New("interrupted; servers stopped and temporary files removed")
		}
		fmt.Fprintln(os.Stderr, "svidbench:", err)
		os.Exit(1)
	}
}

// entry is one system under test: set up, or the reason it is not.
type entry struct {
	name    string
	sys     system
	setup   error
	desc    string
	levels  map[int][]result
	lvlErrs map[int][]error
	storm   []result
	stErrs  []error
}

func run(cfg config) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tmp, err := os.MkdirTemp("", "svidbench-")
	if err != nil {
		return err
	}
	ps := &harness.Procs{}
	defer func() {
		if cfg.keep {
			fmt.Fprintln(os.Stderr, "svidbench: kept", tmp)
			return
		}
		os.RemoveAll(tmp)
	}()
	defer ps.StopAll()

	nw := 0
	if len(cfg.levels) > 0 {
		nw = slices.Max(cfg.levels)
	}
	if !cfg.skipStorm {
		nw = max(nw, cfg.stormWorkloads)
	}
	harness.Logf("generating %d workload keys and CSRs (ECDSA P-256)", nw)
	keys, err := newWorkloadKeys(nw)
	if err != nil {
		return err
	}

	var entries []*entry
	var sc *stepCA
	if !cfg.skipStepCA {
		e := &entry{name: "step-ca"}
		entries = append(entries, e)
		sc, e.setup = setupStepCA(ctx, ps, cfg, tmp, keys)
		if e.setup != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			harness.Logf("step-ca: %v", e.setup)
		} else {
			e.sys = sc
			defer sc.close()
			e.desc = fmt.Sprintf("step-ca %s: one process at https://%s; POST /1.0/sign over %s, JWK provisioner, one-time token (ES256; kid, iss, aud, sub, sans, nbf/iat/exp, unique jti) built by the client per request before its clock starts; \"db\": null; certificates valid %v (NotBefore backdated by step-ca)",
				sc.version, sc.addr, sc.proto, sc.lifetime)
		}
	}
	var mf *meshfedSys
	var raft raftTrack
	if !cfg.skipMeshfed {
		e := &entry{name: "meshfed"}
		entries = append(entries, e)
		mf, e.setup = setupMeshfed(ctx, ps, cfg, tmp, keys, &raft)
		if e.setup != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			harness.Logf("meshfed: %v", e.setup)
		} else {
			e.sys = mf
			defer mf.close()
			var addrs []string
			for _, s := range mf.c.Servers {
				addrs = append(addrs, s.ID+" "+s.API)
			}
			e.desc = fmt.Sprintf("meshfed %s: 3 servers (API %s; trust domain %s); WorkloadIdentityService.Renew over mutual TLS, the workload's SVID as client certificate, no bearer token; workload i on server i mod 3; SVIDs valid %v",
				mf.c.Version, strings.Join(addrs, ", "), mf.td, mf.lifetime)
		}
	}
	var live []*entry
	for _, e := range entries {
		e.levels, e.lvlErrs = map[int][]result{}, map[int][]error{}
		if e.setup == nil {
			live = append(live, e)
		}
	}

	for _, conc := range cfg.levels {
		for r := range cfg.runs {
			// Alternate which system goes first so that slow drift of a
			// shared machine does not favour either.
			for _, e := range alternate(live, r) {
				res, err := runLevel(ctx, e.sys, e.sys.Workers(conc), cfg.warmup, cfg.duration)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err == nil && res.n == 0 {
					err = fmt.Errorf("no SVID issued: %v", res.firstErr)
				}
				if err != nil {
					err = fmt.Errorf("%w%s", err, ps.Exited())
					e.lvlErrs[conc] = append(e.lvlErrs[conc], err)
					harness.Logf("%-7s c=%-3d run %d/%d: %v", e.name, conc, r+1, cfg.runs, err)
					continue
				}
				e.levels[conc] = append(e.levels[conc], res)
				harness.Logf("%-7s c=%-3d run %d/%d: %6.0f SVIDs/s  %6.0f per CPU-s  p50 %s  p99 %s  errors %d",
					e.name, conc, r+1, cfg.runs, res.rate(), res.perCPU(), harness.MS(res.pct(0.50)), harness.MS(res.pct(0.99)), res.errors)
				if res.errors > 0 {
					harness.Logf("%s c=%d: first error: %v", e.name, conc, res.firstErr)
				}
			}
		}
	}
	if !cfg.skipStorm {
		per := cfg.stormRenewals / cfg.stormWorkloads
		for r := range cfg.stormRuns {
			for _, e := range alternate(live, r) {
				res, err := runStorm(ctx, e.sys, e.sys.Workers(cfg.stormWorkloads), per)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err == nil && res.n == 0 {
					err = fmt.Errorf("no SVID issued: %v", res.firstErr)
				}
				if err != nil {
					err = fmt.Errorf("%w%s", err, ps.Exited())
					e.stErrs = append(e.stErrs, err)
					harness.Logf("%-7s storm run %d/%d: %v", e.name, r+1, cfg.stormRuns, err)
					continue
				}
				e.storm = append(e.storm, res)
				harness.Logf("%-7s storm run %d/%d: %d SVIDs in %v  p50 %s  p99 %s  %6.0f per CPU-s  errors %d",
					e.name, r+1, cfg.stormRuns, res.n, res.wall.Round(time.Millisecond),
					harness.MS(res.pct(0.50)), harness.MS(res.pct(0.99)), res.perCPU(), res.errors)
				if res.errors > 0 {
					harness.Logf("%s storm: first error: %v", e.name, res.firstErr)
				}
			}
		}
	}
	if mf != nil && raft.setupErr == nil && raft.afterSetup != nil {
		raft.after, raft.afterErr = mf.c.RaftIndexes(ctx)
		raft.issuedAfter = mf.Issued()
	}
	// Clients go first: step-ca waits for open connections on shutdown.
	if sc != nil {
		sc.close()
	}
	if mf != nil {
		mf.close()
	}
	ps.StopAll()

	printReport(cfg, entries, &raft)
	var failed []string
	for _, e := range entries {
		if e.setup != nil || len(e.lvlErrs) > 0 || len(e.stErrs) > 0 {
			failed = append(failed, e.name)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("not every measurement ran (%s): see the report above", strings.Join(failed, ", "))
	}
	return nil
}

func setupStepCA(ctx context.Context, ps *harness.Procs, cfg config, tmp string, keys []workloadKey) (*stepCA, error) {
	bin, err := filepath.Abs(cfg.stepCABin)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("step-ca binary: %w (run scripts/bench-deps.sh, pass -stepca-bin, or -skip-stepca)", err)
	}
	harness.Logf("starting step-ca")
	sc, err := startStepCA(ctx, ps, bin, filepath.Join(tmp, "stepca"))
	if err != nil {
		return nil, err
	}
	sc.freshCSR = cfg.freshCSR
	harness.Logf("step-ca %s on https://%s; %d workloads get a first certificate", sc.version, sc.addr, len(keys))
	if err := sc.setup(ctx, keys); err != nil {
		sc.close()
		ps.Stop(sc.p)
		return nil, fmt.Errorf("setup: %w%s", err, exitedOf(sc.p))
	}
	return sc, nil
}

// raftTrack follows meshfed's Raft last index across the run.
type raftTrack struct {
	formed, afterSetup, after map[string]uint64
	setupErr, afterErr        error
	workloads                 int
	issuedSetup, issuedAfter  int64
}

func setupMeshfed(ctx context.Context, ps *harness.Procs, cfg config, tmp string, keys []workloadKey, raft *raftTrack) (*meshfedSys, error) {
	bin, err := filepath.Abs(cfg.meshfedBin)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("meshfed binary: %w (run make build, pass -meshfed-bin, or -skip-meshfed)", err)
	}
	harness.Logf("starting 3-server meshfed cluster")
	c, err := harness.StartMeshfed(ctx, ps, bin, filepath.Join(tmp, "meshfed"))
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	m := &meshfedSys{c: c, freshCSR: cfg.freshCSR}
	if _, err := c.Leader(ctx); err != nil {
		ps.Stop(c.Procs()...)
		return nil, err
	}
	raft.formed, raft.setupErr = c.RaftIndexes(ctx)
	for _, s := range c.Servers {
		harness.Logf("meshfed %s: API %s, Raft %s, HTTP %s", s.ID, s.API, s.Raft, s.HTTP)
	}
	harness.Logf("meshfed: %d workloads get a workload-join token, attest, and renew once over mTLS", len(keys))
	if err := m.setup(ctx, keys); err != nil {
		m.close()
		ps.Stop(c.Procs()...)
		return nil, fmt.Errorf("setup: %w%s", err, exitedOf(c.Procs()...))
	}
	raft.workloads = len(keys)
	raft.issuedSetup = m.Issued()
	if raft.setupErr == nil {
		raft.afterSetup, raft.setupErr = c.RaftIndexes(ctx)
	}
	return m, nil
}

func exitedOf(list ...*harness.Proc) string {
	var b strings.Builder
	for _, p := range list {
		if err := p.ExitErr(); err != nil {
			b.WriteString("\n" + err.Error())
		}
	}
	return b.String()
}

func alternate(es []*entry, r int) []*entry {
	if r%2 == 0 {
		return es
	}
	out := slices.Clone(es)
	slices.Reverse(out)
	return out
}
