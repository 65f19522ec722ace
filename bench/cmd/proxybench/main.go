// Command proxybench measures the per-pod proxy pair, meshfed-proxy on the
// calling side and on the called side with mutual TLS between them, side by
// side in the same run with an HAProxy pair doing the same hop and with the
// app called directly: latency added at a fixed 1,000 requests/s (open
// loop, so a stall is charged to every request it delays), the highest
// request rate with many clients, CPU time per 1,000 requests and resident
// memory of each proxy, and the resident memory of an idle meshfed-proxy
// that knows 1,000 services. A reference hop, one HAProxy thread relaying
// plain TCP (no TLS, no HTTP), runs under the same load: its CPU per
// request is about the least any proxy hop costs on the machine. Everything
// runs on 127.0.0.1. It prints figures and the targets they are held to,
// and asserts nothing.
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
	"strings"
	"syscall"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

type config struct {
	meshfedBin, proxyBin, haproxyBin string

	rate             int
	duration, warmup time.Duration
	conns            int
	concurrency      int
	maxDuration      time.Duration
	runs             int
	services         int
	skipHAProxy      bool
	skipMeshfed      bool
	output           string
	keep             bool
}

// Targets from the spec, printed next to the figures.
const (
	targetIdleRSS  = 20 << 20 // with targetServices known
	targetServices = 1000
	// targetCPUPer1000 is "the proxy's CPU per 1,000 requests": each
	// proxy of the pair (a sidecar's cost), both printed, the pair too.
	targetCPUPer1000 = 60 * time.Millisecond
)

const (
	notBuiltMessage = "meshfed-proxy not built: skipping"
	// maxPhaseWarmup is the unrecorded start of a maximum-throughput phase.
	maxPhaseWarmup = time.Second
	// idleWindow is how long the idle proxies' CPU time is measured.
	idleWindow = 3 * time.Second
	maxRate    = 100000
)

func main() {
	var cfg config
	flag.StringVar(&cfg.meshfedBin, "meshfed-bin", "../bin/meshfed", "meshfed binary (the dev control plane)")
	flag.StringVar(&cfg.proxyBin, "proxy-bin", "../bin/meshfed-proxy", "meshfed-proxy binary; the meshfed pair is skipped when it does not exist")
	flag.StringVar(&cfg.haproxyBin, "haproxy-bin", "haproxy", "HAProxy binary (scripts/bench-deps.sh installs Debian's)")
	flag.IntVar(&cfg.rate, "rate", 1000, "requests per second in the fixed-rate phase")
	flag.DurationVar(&cfg.duration, "duration", 20*time.Second, "measured time of the fixed-rate phase, per target and run")
	flag.DurationVar(&cfg.warmup, "warmup", 2*time.Second, "unrecorded load at the fixed rate before each measurement")
	flag.IntVar(&cfg.conns, "conns", 16, "kept-alive connections (each with one request at a time) the fixed-rate phase may use")
	flag.IntVar(&cfg.concurrency, "concurrency", 32, "clients, each on its own kept-alive connection, in the maximum-throughput phase")
	flag.DurationVar(&cfg.maxDuration, "max-duration", 10*time.Second, "measured time of the maximum-throughput phase (after 1 s unrecorded)")
	flag.IntVar(&cfg.runs, "runs", 3, "runs of every phase per target, targets taking turns; medians are printed")
	flag.IntVar(&cfg.services, "services", targetServices, "services an idle meshfed-proxy is given as upstreams for the memory figure (0: skip)")
	flag.BoolVar(&cfg.skipHAProxy, "skip-haproxy", false, "do not run the HAProxy pair")
	flag.BoolVar(&cfg.skipMeshfed, "skip-meshfed", false, "do not run the meshfed pair")
	flag.StringVar(&cfg.output, "o", "table", "output: table or json (one JSON document on stdout)")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory (configs, certificates, data dir and logs)")
	flag.Parse()
	switch {
	case cfg.rate < 1 || cfg.rate > maxRate || cfg.conns < 1 || cfg.concurrency < 1 || cfg.runs < 1 || cfg.services < 0:
		fmt.Fprintf(os.Stderr, "proxybench: -rate must be 1-%d, -conns, -concurrency and -runs at least 1, -services at least 0\n", maxRate)
		os.Exit(2)
	case cfg.duration < time.Second || cfg.maxDuration < time.Second || cfg.warmup < 0:
		fmt.Fprintln(os.Stderr, "proxybench: -duration and -max-duration must be at least 1s, -warmup not negative")
		os.Exit(2)
	case cfg.output != "table" && cfg.output != "json":
		fmt.Fprintln(os.Stderr, "proxybench: -o must be table or json")
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		if errors.Is(err, context.Canceled) {
			err = errors.New("interrupted; processes stopped and temporary files removed")
		}
		fmt.Fprintln(os.Stderr, "proxybench:", err)
		os.Exit(1)
	}
}

// entry is one target the load generator sends to: the app itself, or a
// proxy pair in front of it.
type entry struct {
	name string // direct, haproxy, meshfed
	desc string
	// procs are the pair's processes, client side first; none for direct.
	procs []*harness.Proc
	fixCl *client // pool of the fixed-rate phase
	maxCl *client // pool of the maximum-throughput phase
	// setup is why the target is not measured; skipped says it was not
	// meant to be (not an error).
	setup   error
	skipped string
	idleRSS []int64
	idleCPU []float64 // ms per second, per process
	fixed   []fixedResult
	max     []maxResult
	// runOf[i] is the run fixed[i] came from, to pair it with direct's.
	runOf []int
	errs  []error
}

func (e *entry) live() bool { return e.setup == nil && e.skipped == "" }

func run(cfg config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tmp, err := os.MkdirTemp("", "proxybench-")
	if err != nil {
		return err
	}
	ps := &harness.Procs{}
	defer func() {
		if cfg.keep {
			fmt.Fprintln(os.Stderr, "proxybench: kept", tmp)
			return
		}
		os.RemoveAll(tmp)
	}()
	defer ps.StopAll()

	a, err := startApp()
	if err != nil {
		return err
	}
	defer a.close()
	// The app of the proxies that only call out (client, edge): it answers
	// their health checks and nothing else.
	idle, err := startApp()
	if err != nil {
		return err
	}
	defer idle.close()
	harness.Logf("app on %s (POST, 1 KB in, 1 KB out)", a.addr)

	direct := &entry{name: "direct", desc: "the load generator to the app", fixCl: newClient(a.addr, cfg.conns), maxCl: newClient(a.addr, cfg.concurrency)}
	entries := []*entry{direct}

	hp := &entry{name: "haproxy"}
	entries = append(entries, hp)
	var hap *haproxyPair
	if cfg.skipHAProxy {
		hp.skipped = "-skip-haproxy"
	} else {
		harness.Logf("HAProxy pair: writing an ECDSA P-256 CA and SPIFFE-style certificates, starting two haproxy processes")
		hap, hp.setup = setupHAProxy(ctx, ps, cfg, tmp, a.port)
		if hp.setup != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			harness.Logf("HAProxy pair: %v", hp.setup)
		} else {
			hp.procs = hap.procs()
			hp.fixCl, hp.maxCl = newClient(hap.listen, cfg.conns), newClient(hap.listen, cfg.concurrency)
			hp.desc = fmt.Sprintf("HAProxy %s, two processes (haproxy -db), default thread count (one per CPU: %d): load generator -> %s (plain HTTP/1.1) -> mutual TLS 1.3 -> haproxy-server -> app",
				hap.version, harness.NProc(), hap.listen)
			harness.Logf("HAProxy pair %s ready: client side %s (pid %d), server side pid %d", hap.version, hap.listen, hap.client.PID(), hap.server.PID())
		}
	}

	// The reference hop runs with HAProxy: it needs the same binary.
	relay := &entry{name: "tcp-relay"}
	entries = append(entries, relay)
	if cfg.skipHAProxy {
		relay.skipped = "-skip-haproxy"
	} else {
		var p *harness.Proc
		var listen string
		p, listen, relay.setup = startRelay(ctx, ps, cfg.haproxyBin, filepath.Join(tmp, "tcp-relay"), a.port)
		if relay.setup != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			harness.Logf("TCP relay: %v", relay.setup)
		} else {
			relay.procs = []*harness.Proc{p}
			relay.fixCl, relay.maxCl = newClient(listen, cfg.conns), newClient(listen, cfg.concurrency)
			relay.desc = "reference hop: one HAProxy process, one thread, plain TCP (mode tcp: no TLS, no HTTP parsing): load generator -> " + listen + " -> app"
			harness.Logf("TCP relay ready: %s (pid %d)", listen, p.PID())
		}
	}

	mf := &entry{name: "meshfed"}
	entries = append(entries, mf)
	var cp *controlPlane
	var pair *meshfedPair
	switch {
	case cfg.skipMeshfed:
		mf.skipped = "-skip-meshfed"
	default:
		proxyBin, err := filepath.Abs(cfg.proxyBin)
		if err != nil {
			return err
		}
		if _, err := os.Stat(proxyBin); errors.Is(err, os.ErrNotExist) {
			mf.skipped = notBuiltMessage + " (" + proxyBin + " does not exist)"
			harness.Logf("%s", mf.skipped)
			break
		}
		cp, pair, mf.setup = setupMeshfed(ctx, ps, cfg, proxyBin, tmp, a.port, idle.port)
		if cp != nil {
			defer cp.close()
		}
		if mf.setup != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			harness.Logf("meshfed pair: %v", mf.setup)
			break
		}
		mf.procs = pair.procs()
		mf.fixCl, mf.maxCl = newClient(pair.upstream, cfg.conns), newClient(pair.upstream, cfg.concurrency)
		mf.desc = fmt.Sprintf("meshfed %s: two meshfed-proxy processes (Go; one scheduler thread unless GOMAXPROCS is set, here %q), a dev control plane (trust domain %s): load generator -> %s (plain HTTP/1.1, the client proxy's upstream listener) -> mutual TLS (SVIDs) -> server proxy %s -> app",
			cp.c.Version, os.Getenv("GOMAXPROCS"), cp.td, pair.upstream, pair.server.listen)
		harness.Logf("meshfed pair ready: client proxy pid %d (upstream %s), server proxy pid %d (%s)", pair.client.p.PID(), pair.upstream, pair.server.p.PID(), pair.server.listen)
	}

	var live []*entry
	for _, e := range entries {
		if e.live() {
			live = append(live, e)
		}
	}
	// Idle CPU and memory: after startup and one request each, before any
	// load.
	var watched []*harness.Proc
	for _, e := range live {
		watched = append(watched, e.procs...)
	}
	if len(watched) > 0 {
		harness.Logf("measuring the idle proxies for %v", idleWindow)
		before := takeSnapshot(watched)
		sleepUntil(ctx, time.Now().Add(idleWindow))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		u, err := between(before, takeSnapshot(watched))
		if err != nil {
			return fmt.Errorf("%w%s", err, exitedOf(watched...))
		}
		i := 0
		for _, e := range live {
			for _, p := range e.procs {
				v, err := harness.VMRSS(p.PID())
				if err != nil {
					return fmt.Errorf("%s: %w", p.Name, err)
				}
				e.idleRSS = append(e.idleRSS, v)
				e.idleCPU = append(e.idleCPU, msf(u.procs[i])/u.wall.Seconds())
				i++
			}
		}
	}

	for r := range cfg.runs {
		order := rotate(live, r)
		for _, e := range order {
			e.fixCl.reset()
			res, err := runFixed(ctx, e.fixCl, e.procs, cfg.rate, cfg.conns, cfg.warmup, cfg.duration)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err == nil && len(res.lat) == 0 {
				err = fmt.Errorf("no request succeeded: %v", res.firstErr)
			}
			if err != nil {
				err = fmt.Errorf("%w%s", err, exitedOf(e.procs...))
				e.errs = append(e.errs, err)
				harness.Logf("%-7s run %d/%d fixed %d/s: %v", e.name, r+1, cfg.runs, cfg.rate, err)
				continue
			}
			e.fixed = append(e.fixed, res)
			e.runOf = append(e.runOf, r)
			msg := fmt.Sprintf("%-7s run %d/%d fixed %d/s: p50 %s  p90 %s  p99 %s  max %s  errors %d",
				e.name, r+1, cfg.runs, cfg.rate, harness.MS(res.pct(0.5)), harness.MS(res.pct(0.9)), harness.MS(res.pct(0.99)),
				harness.MS(res.lat[len(res.lat)-1]), res.errors)
			switch len(e.procs) {
			case 1:
				msg += fmt.Sprintf("  CPU/1000 req: %s", harness.MS(res.cpuPer1000(0)))
			case 2:
				msg += fmt.Sprintf("  CPU/1000 req: client %s server %s", harness.MS(res.cpuPer1000(0)), harness.MS(res.cpuPer1000(1)))
			}
			harness.Logf("%s", msg)
			if res.errors > 0 {
				harness.Logf("%s: first error: %v", e.name, res.firstErr)
			}
		}
		for _, e := range order {
			e.maxCl.reset()
			res, err := runMax(ctx, e.maxCl, e.procs, cfg.concurrency, maxPhaseWarmup, cfg.maxDuration)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err == nil && res.n == 0 {
				err = fmt.Errorf("no request succeeded: %v", res.firstErr)
			}
			if err != nil {
				err = fmt.Errorf("%w%s", err, exitedOf(e.procs...))
				e.errs = append(e.errs, err)
				harness.Logf("%-7s run %d/%d max throughput: %v", e.name, r+1, cfg.runs, err)
				continue
			}
			e.max = append(e.max, res)
			harness.Logf("%-7s run %d/%d max throughput, %d clients: %.0f req/s  errors %d", e.name, r+1, cfg.runs, cfg.concurrency, res.rate(), res.errors)
			if res.errors > 0 {
				harness.Logf("%s: first error: %v", e.name, res.firstErr)
			}
		}
	}
	for _, e := range live {
		e.fixCl.reset()
		e.maxCl.reset()
	}

	var many *manyResult
	var manyErr error
	if mf.live() && cfg.services > 0 {
		harness.Logf("meshfed: idle proxy with %d services: declaring them", cfg.services)
		many, manyErr = runManyServices(ctx, ps, cp, pair, cfg.services, idle.port)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if manyErr != nil {
			manyErr = fmt.Errorf("%w%s", manyErr, exitedOf(append(cp.proxies, cp.c.Procs()...)...))
			harness.Logf("meshfed: idle proxy with %d services: %v", cfg.services, manyErr)
		} else {
			harness.Logf("meshfed: idle proxy with %d services: RSS %s (settled: %v, peak %s)", cfg.services, mib(many.rss), many.settled, mib(many.rssPeak))
		}
	}
	// meshfed's proxies first, while the control plane they deregister from
	// is still up.
	if cp != nil {
		cp.stop(ps)
	}
	ps.StopAll()

	rep := buildReport(cfg, entries, many, manyErr)
	if cfg.output == "json" {
		if err := rep.writeJSON(os.Stdout); err != nil {
			return err
		}
	} else {
		rep.print(os.Stdout)
	}
	var failed []string
	for _, e := range entries {
		if e.setup != nil || len(e.errs) > 0 {
			failed = append(failed, e.name)
		}
	}
	if manyErr != nil {
		failed = append(failed, "meshfed idle with many services")
	}
	if len(failed) > 0 {
		return fmt.Errorf("not every measurement ran (%s): see the report above", strings.Join(failed, ", "))
	}
	return nil
}

func setupHAProxy(ctx context.Context, ps *harness.Procs, cfg config, tmp string, appPort int) (*haproxyPair, error) {
	dir := filepath.Join(tmp, "haproxy")
	pki, err := writePKI(dir)
	if err != nil {
		return nil, err
	}
	return startHAProxy(ctx, ps, cfg.haproxyBin, dir, pki, appPort)
}

func setupMeshfed(ctx context.Context, ps *harness.Procs, cfg config, proxyBin, tmp string, appPort, idlePort int) (*controlPlane, *meshfedPair, error) {
	bin, err := filepath.Abs(cfg.meshfedBin)
	if err != nil {
		return nil, nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, nil, fmt.Errorf("meshfed binary: %w (run make build, pass -meshfed-bin, or -skip-meshfed)", err)
	}
	harness.Logf("meshfed pair: starting a dev control plane")
	cp, err := startControlPlane(ctx, ps, bin, proxyBin, filepath.Join(tmp, "meshfed"))
	if err != nil {
		return nil, nil, err
	}
	pair, err := startMeshfedPair(ctx, ps, cp, appPort, idlePort)
	if err != nil {
		// Nothing of it is measured: it should take no CPU from the rest.
		cp.stop(ps)
		return cp, nil, err
	}
	return cp, pair, nil
}

// rotate changes which target goes first from run to run, so that slow
// drift of a shared machine does not favour one.
func rotate(es []*entry, r int) []*entry {
	if len(es) == 0 {
		return nil
	}
	k := r % len(es)
	return slices.Concat(es[k:], es[:k])
}

// exitedOf explains a failure by the processes of list that have died.
func exitedOf(list ...*harness.Proc) string {
	var b strings.Builder
	for _, p := range list {
		if err := p.ExitErr(); err != nil {
			b.WriteString("\n" + err.Error())
		}
	}
	return b.String()
}
