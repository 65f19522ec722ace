// Command fedbench measures federation between two 3-server meshfed
// clusters on loopback, west exporting to east: how long a change written in
// west takes to reach a watcher in east (p50/p99 over many changes), how
// long a full sync of many exported services takes after the peering is
// established and after the link comes back, and the CPU the peer stream
// spends per change. East reaches west through a TCP proxy the benchmark can
// cut (west's servers advertise the proxy with --api-advertise-addr). It
// prints figures and asserts nothing.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

type config struct {
	bin        string
	services   int
	endpoints  int
	changes    int
	reconnects int
	keep       bool
}

// Targets from the spec, printed next to the figures.
const (
	targetP99      = 100 * time.Millisecond
	targetFullSync = 2 * time.Second
)

func main() {
	var cfg config
	flag.StringVar(&cfg.bin, "meshfed-bin", "../bin/meshfed", "meshfed server binary")
	flag.IntVar(&cfg.services, "services", 1000, "exported services in the full sync")
	flag.IntVar(&cfg.endpoints, "endpoints", 10, "healthy endpoints per exported service")
	flag.IntVar(&cfg.changes, "changes", 1000, "single changes timed from west to a watcher in east")
	flag.IntVar(&cfg.reconnects, "reconnects", 3, "link cuts, each followed by a timed resync; the median is printed")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory (data dirs and logs)")
	flag.Parse()
	if cfg.services < 1 || cfg.endpoints < 1 || cfg.changes < 1 || cfg.reconnects < 1 {
		fmt.Fprintln(os.Stderr, "fedbench: -services, -endpoints, -changes and -reconnects must be at least 1")
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		if errors.Is(err, context.Canceled) {
			err = errors.New("interrupted; servers stopped and temporary files removed")
		}
		fmt.Fprintln(os.Stderr, "fedbench:", err)
		os.Exit(1)
	}
}

func run(cfg config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tmp, err := os.MkdirTemp("", "fedbench-")
	if err != nil {
		return err
	}
	ps := &harness.Procs{}
	defer func() {
		if cfg.keep {
			fmt.Fprintln(os.Stderr, "fedbench: kept", tmp)
			return
		}
		os.RemoveAll(tmp)
	}()
	defer ps.StopAll()
	bin, err := filepath.Abs(cfg.bin)
	if err != nil {
		return err
	}

	f, err := setup(ctx, ps, bin, tmp)
	if err != nil {
		return fmt.Errorf("%w%s", err, ps.Exited())
	}
	defer f.close()
	rep := &report{cfg: cfg, version: f.west.Version}

	harness.Logf("west: creating %d services with %d endpoints each, exported to east", cfg.services, cfg.endpoints)
	if err := f.populate(ctx, cfg.services, cfg.endpoints); err != nil {
		return fmt.Errorf("populating west: %w%s", err, ps.Exited())
	}
	harness.Logf("east: establishing the peering with west")
	if rep.establish, err = f.establish(ctx, cfg.services+1); err != nil {
		return fmt.Errorf("establishing: %w%s", err, ps.Exited())
	}
	if rep.endpoints, err = f.importedEndpoints(ctx); err != nil {
		return err
	}
	harness.Logf("full sync after establishment: %v (%d endpoints in east)", rep.establish.Round(time.Millisecond), rep.endpoints)

	for i := range cfg.reconnects {
		r, err := f.reconnect(ctx, cfg.services+1)
		if err != nil {
			return fmt.Errorf("reconnect %d: %w%s", i+1, err, ps.Exited())
		}
		rep.reconnects = append(rep.reconnects, r)
		harness.Logf("reconnect %d/%d: resync %v after the new session started, %v after the link came back",
			i+1, cfg.reconnects, r.resync.Round(time.Millisecond), r.restored.Round(time.Millisecond))
	}

	harness.Logf("measuring idle CPU of the six servers")
	if rep.idle, err = f.idleCPU(ctx, 3*time.Second); err != nil {
		return err
	}
	harness.Logf("propagation: %d changes to an exported service, each awaited by a watcher in east", cfg.changes)
	if rep.prop, err = f.propagate(ctx, cfg.changes); err != nil {
		return fmt.Errorf("propagation: %w%s", err, ps.Exited())
	}
	harness.Logf("baseline: %d changes to a service that is not exported", cfg.changes)
	if rep.local, err = f.localChanges(ctx, cfg.changes); err != nil {
		return fmt.Errorf("baseline: %w%s", err, ps.Exited())
	}
	rep.print(os.Stdout)
	return nil
}
