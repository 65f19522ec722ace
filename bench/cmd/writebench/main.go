// Command writebench measures meshfed's replicated write path side by side
// with etcd on the same machine: write throughput and p50/p99 commit latency
// of 256-byte writes to a 3-server loopback cluster at several concurrency
// levels, and the resident memory one server needs per stored workload.
// It prints figures and asserts nothing.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

const payloadSize = 256

type config struct {
	duration, warmup time.Duration
	runs             int
	levels           []int
	skipEtcd         bool
	skipMeshfed      bool
	skipMemory       bool
	skipWrites       bool
	meshfedBin       string
	etcdBin          string
	workloads        int
	keep             bool
}

func main() {
	var cfg config
	var levels string
	flag.DurationVar(&cfg.duration, "duration", 4*time.Second, "measured time per system, level and run")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured load before each measurement")
	flag.IntVar(&cfg.runs, "runs", 3, "runs per system and level; medians are printed")
	flag.StringVar(&levels, "levels", "1,16,64", "comma-separated concurrency levels")
	flag.BoolVar(&cfg.skipEtcd, "skip-etcd", false, "do not run etcd")
	flag.BoolVar(&cfg.skipMeshfed, "skip-meshfed", false, "do not run meshfed (implies -skip-memory)")
	flag.BoolVar(&cfg.skipMemory, "skip-memory", false, "skip the memory-per-workload measurement")
	flag.BoolVar(&cfg.skipWrites, "skip-writes", false, "skip the write-path comparison (no clusters are started)")
	flag.StringVar(&cfg.meshfedBin, "meshfed-bin", "../bin/meshfed", "meshfed server binary")
	flag.StringVar(&cfg.etcdBin, "etcd-bin", "", "etcd binary (default: Debian's /usr/bin/etcd)")
	flag.IntVar(&cfg.workloads, "workloads", 100000, "workloads stored for the memory measurement")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory (data dirs and logs)")
	flag.Parse()
	for _, f := range strings.Split(levels, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "writebench: bad -levels entry %q\n", f)
			os.Exit(2)
		}
		cfg.levels = append(cfg.levels, n)
	}
	if cfg.runs < 1 {
		cfg.runs = 1
	}
	if err := run(cfg); err != nil {
		if errors.Is(err, context.Canceled) {
			err = errors.New("interrupted; servers stopped and temporary files removed")
		}
		fmt.Fprintln(os.Stderr, "writebench:", err)
		os.Exit(1)
	}
}

func run(cfg config) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if !cfg.skipMeshfed {
		if cfg.meshfedBin, err = filepath.Abs(cfg.meshfedBin); err != nil {
			return err
		}
		if _, err := os.Stat(cfg.meshfedBin); err != nil {
			return fmt.Errorf("meshfed binary: %w (build it, pass -meshfed-bin, or -skip-meshfed)", err)
		}
	}
	if cfg.skipWrites {
		cfg.skipEtcd, cfg.levels = true, nil
	}
	if !cfg.skipEtcd && cfg.etcdBin == "" {
		if cfg.etcdBin, err = findEtcd(); err != nil {
			return err
		}
	}

	tmp, err := os.MkdirTemp("", "writebench-")
	if err != nil {
		return err
	}
	ps := &harness.Procs{}
	// Deferred in this order so that servers are gone before their data
	// dirs are removed, on every return path including an interrupt.
	defer func() {
		if cfg.keep {
			fmt.Fprintln(os.Stderr, "writebench: kept", tmp)
			return
		}
		os.RemoveAll(tmp)
	}()
	defer ps.StopAll()

	value := payload(payloadSize)
	mfValue := meshfedPayload(len(workerKeys(0)[0]), payloadSize, value)

	var systems []system
	var etcdC *etcdCluster
	var mfC *harness.MeshfedCluster
	if !cfg.skipEtcd {
		harness.Logf("starting 3-member etcd cluster")
		if etcdC, err = startEtcd(ctx, ps, cfg.etcdBin, filepath.Join(tmp, "etcd")); err != nil {
			return err
		}
		systems = append(systems, etcdSystem{etcdC})
	}
	if !cfg.skipMeshfed && !cfg.skipWrites {
		harness.Logf("starting 3-server meshfed cluster")
		if mfC, err = harness.StartMeshfed(ctx, ps, cfg.meshfedBin, filepath.Join(tmp, "meshfed")); err != nil {
			return err
		}
		leader, err := mfC.Leader(ctx)
		if err != nil {
			return err
		}
		if err := upsertBenchService(ctx, leader, mfC.CAPEM, mfC.Token); err != nil {
			return fmt.Errorf("creating service %q: %w", benchService, err)
		}
		systems = append(systems, meshfedSystem{mfC})
	}

	results := map[string]map[int][]result{}
	for _, s := range systems {
		results[s.Name()] = map[int][]result{}
	}
	for _, conc := range cfg.levels {
		for r := range cfg.runs {
			// Alternate which system goes first so that slow drift of a
			// shared machine does not favour either.
			order := systems
			if r%2 == 1 {
				order = reversed(systems)
			}
			for _, s := range order {
				res, err := measure(ctx, s, conc, cfg, value, mfValue)
				if err != nil {
					return fmt.Errorf("%s at concurrency %d: %w%s", s.Name(), conc, err, ps.Exited())
				}
				results[s.Name()][conc] = append(results[s.Name()][conc], res)
				harness.Logf("%-7s c=%-3d run %d/%d: %8.0f writes/s  p50 %s  p99 %s  errors %d",
					s.Name(), conc, r+1, cfg.runs, res.rate(), harness.MS(res.pct(0.50)), harness.MS(res.pct(0.99)), res.errors)
			}
		}
	}

	etcdVersion, mfVersion := "", ""
	if etcdC != nil {
		etcdVersion = etcdC.version
	}
	if mfC != nil {
		mfVersion = mfC.Version
	}
	// The clusters are stopped before the memory measurement so that their
	// heartbeats and compaction do not take CPU from it.
	ps.StopAll()

	if len(systems) > 0 {
		printWrites(cfg, systems, results, etcdVersion, mfVersion, len(value), workloadSize(workerKeys(0)[0], mfValue))
	}

	if !cfg.skipMeshfed && !cfg.skipMemory {
		harness.Logf("memory: filling one dev server with %d workloads", cfg.workloads)
		m, err := measureMemory(ctx, ps, cfg.meshfedBin, tmp, cfg.workloads, mfValue)
		if err != nil {
			return fmt.Errorf("memory measurement: %w", err)
		}
		printMemory(m, workloadSize(memKey(0), mfValue))
	}
	return nil
}

// measure runs one system at one level on fresh connections to the current
// leader.
func measure(ctx context.Context, s system, conc int, cfg config, value, mfValue []byte) (result, error) {
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	ts, err := openTargets(octx, s, conc)
	cancel()
	if err != nil {
		return result{}, err
	}
	defer closeTargets(ts)
	v := value
	if s.Name() == "meshfed" {
		v = mfValue
	}
	res := runLoad(ctx, ts, conc, cfg.warmup, cfg.duration, v)
	res.system = s.Name()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if res.writes == 0 {
		return res, fmt.Errorf("no write succeeded: %v", res.firstErr)
	}
	if res.errors > 0 {
		harness.Logf("%s c=%d: %d writes failed, first: %v", s.Name(), conc, res.errors, res.firstErr)
	}
	return res, nil
}

func printWrites(cfg config, systems []system, results map[string]map[int][]result, etcdVersion, mfVersion string, etcdValue, mfSize int) {
	fmt.Println()
	fmt.Printf("Write path: 3 servers as processes on 127.0.0.1, %d cores, GOMAXPROCS of the load generator %d\n", harness.NProc(), harness.RuntimeProcs())
	fmt.Println("  both: TLS on every port (client TLS 1.3; peers mutual TLS), log fsync'd before a write is acknowledged,")
	fmt.Printf("        writes sent to the leader over min(concurrency, 8) connections, each worker on its own %d keys\n", keySpace)
	fmt.Println("        every write stores a new value (a run-wide sequence number in the first bytes), so none is a no-op")
	if etcdVersion != "" {
		fmt.Printf("  etcd %s: Put, %d-byte key + %d-byte value, default settings\n", etcdVersion, len(workerKeys(0)[0]), etcdValue)
	}
	if mfVersion != "" || !cfg.skipMeshfed {
		fmt.Printf("  meshfed %s: CatalogService.UpdateWorkload(allow_missing), Workload of %d bytes marshaled\n", mfVersion, mfSize)
	}
	fmt.Printf("  %v warm-up, %v measured; median of %d run(s), systems alternating\n\n", cfg.warmup, cfg.duration, cfg.runs)

	const row = "%-13s %11v %10v %9v %9v %7v\n"
	fmt.Printf(row, "system", "concurrency", "writes/s", "p50 ms", "p99 ms", "errors")
	type agg struct{ rate, p50, p99 float64 }
	for _, conc := range cfg.levels {
		got := map[string]agg{}
		for _, s := range systems {
			rs := results[s.Name()][conc]
			var rates, p50s, p99s []float64
			errs := 0
			for _, r := range rs {
				rates = append(rates, r.rate())
				p50s = append(p50s, harness.MSF(r.pct(0.50)))
				p99s = append(p99s, harness.MSF(r.pct(0.99)))
				errs += r.errors
			}
			a := agg{harness.Median(rates), harness.Median(p50s), harness.Median(p99s)}
			got[s.Name()] = a
			fmt.Printf(row, s.Name(), conc, fmt.Sprintf("%.0f", a.rate), fmt.Sprintf("%.2f", a.p50), fmt.Sprintf("%.2f", a.p99), errs)
		}
		e, okE := got["etcd"]
		m, okM := got["meshfed"]
		if okE && okM {
			fmt.Printf(row, "meshfed/etcd", conc, fmt.Sprintf("%.2fx", m.rate/e.rate),
				fmt.Sprintf("%.2fx", m.p50/e.p50), fmt.Sprintf("%.2fx", m.p99/e.p99), "")
		}
	}
	if _, ok := results["etcd"]; ok {
		if _, ok := results["meshfed"]; ok {
			fmt.Println("  (meshfed/etcd: above 1 for writes/s and below 1 for latency mean meshfed is ahead)")
		}
	}
}

func printMemory(m *memResult, size int) {
	fmt.Println()
	fmt.Printf("Memory: one server (--dev), %d workloads of %d bytes upserted at concurrency 64 in %v (%.0f/s), %d errors\n",
		m.n, size, m.loadTime.Round(time.Millisecond), float64(m.n)/m.loadTime.Seconds(), m.errors)
	if m.firstErr != nil {
		fmt.Printf("  first error: %v\n", m.firstErr)
	}
	const row = "%-30s %10s %10s %13s\n"
	fmt.Printf(row, "", "empty", "full", "per workload")
	fmt.Printf(row, "VmRSS (settled median)", mibs(m.rssBefore), mibs(m.rssAfter),
		fmt.Sprintf("%.0f B", float64(m.rssAfter-m.rssBefore)/float64(m.n)))
	if m.heapBefore >= 0 && m.heapAfter >= 0 {
		fmt.Printf(row, "go_memstats_heap_inuse_bytes", mibs(m.heapBefore), mibs(m.heapAfter),
			fmt.Sprintf("%.0f B", float64(m.heapAfter-m.heapBefore)/float64(m.n)))
	} else {
		fmt.Printf(row, "go_memstats_heap_inuse_bytes", "n/a", "n/a", "(no /metrics)")
	}
	if m.rssSteady > 0 {
		fmt.Printf("  after the idle server returned its free memory (%s later; its steady state):\n", m.releaseWait.Round(time.Second))
		fmt.Printf(row, "VmRSS (settled median)", mibs(m.rssBefore), mibs(m.rssSteady),
			fmt.Sprintf("%.0f B", float64(m.rssSteady-m.rssBefore)/float64(m.n)))
		if m.heapSteady >= 0 && m.heapBefore >= 0 {
			fmt.Printf(row, "go_memstats_heap_inuse_bytes", mibs(m.heapBefore), mibs(m.heapSteady),
				fmt.Sprintf("%.0f B", float64(m.heapSteady-m.heapBefore)/float64(m.n)))
		}
	} else {
		fmt.Println("  (no idle memory release within 150 s after the fill: steady state not measured)")
	}
	fmt.Println("  (target: under 1024 B per workload above an empty server)")
}

// payload is label-safe (lower-case letters and digits) so that meshfed can
// carry the same bytes as etcd does.
func payload(n int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	return b
}

func reversed(s []system) []system {
	out := make([]system, len(s))
	for i, x := range s {
		out[len(s)-1-i] = x
	}
	return out
}

func mibs(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
