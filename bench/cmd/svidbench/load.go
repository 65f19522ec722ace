package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

// worker is one simulated workload: its own key, CSR and connection.
// A worker is used by one goroutine at a time.
type worker interface {
	// Prepare builds one request (step-ca: with a new one-time token) and
	// queues it for Issue. It runs before the latency clock starts.
	Prepare() error
	// Issue sends the oldest prepared request and returns once the signed
	// certificate is received.
	Issue(ctx context.Context) error
	// Warm makes sure the worker's connection is up, without issuing.
	Warm(ctx context.Context) error
}

// system is one CA under test, set up with its workloads.
type system interface {
	Name() string
	// Procs are the server processes whose CPU time is counted.
	Procs() []*harness.Proc
	// Workers returns the first n workloads.
	Workers(n int) []worker
	// Issued counts every certificate issued through the workers so far.
	Issued() int64
}

type result struct {
	n        int           // certificates received within the window
	errors   int           // failed requests
	firstErr error         //
	wall     time.Duration // length of the window
	cpu      time.Duration // server CPU time within the window
	client   time.Duration // this process's CPU time within the window
	others   time.Duration // CPU time of every other process on the machine
	lat      []time.Duration
}

func (r result) rate() float64 { return float64(r.n) / r.wall.Seconds() }

// perCPU is certificates per CPU-second of the server processes.
func (r result) perCPU() float64 {
	if r.cpu <= 0 {
		return 0
	}
	return float64(r.n) / r.cpu.Seconds()
}

func (r result) pct(p float64) time.Duration { return harness.Percentile(r.lat, p) }

// clientPerReq is the load generator's CPU time per certificate.
func (r result) clientPerReq() time.Duration {
	if r.n == 0 {
		return 0
	}
	return r.client / time.Duration(r.n)
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type sample struct {
	at                   time.Time
	server, own, machine time.Duration
	err                  error
}

func takeSample(procs []*harness.Proc) sample {
	s := sample{at: time.Now()}
	s.server, s.err = harness.CPUTimes(procs...)
	s.own = selfCPU()
	if m, err := harness.MachineBusy(); err == nil {
		s.machine = m
	}
	return s
}

func between(a, b sample) result {
	r := result{wall: b.at.Sub(a.at), cpu: b.server - a.server, client: b.own - a.own}
	if a.machine > 0 && b.machine > 0 {
		r.others = max(0, (b.machine-a.machine)-r.cpu-r.client)
	}
	return r
}

// othersCores is the CPU other processes took, in cores.
func (r result) othersCores() float64 { return r.others.Seconds() / r.wall.Seconds() }

// runLevel keeps every worker issuing back to back (concurrency =
// len(workers)) for warmup+dur. Certificates received within the measured
// window count, and their latencies are kept; the server processes' CPU
// time is read at both ends of the window.
func runLevel(ctx context.Context, s system, ws []worker, warmup, dur time.Duration) (result, error) {
	start := time.Now()
	from := start.Add(warmup)
	end := from.Add(dur)

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		errs     int
		firstErr error
		all      = make([][]time.Duration, len(ws))
		samples  = make(chan sample, 2)
	)
	go func() {
		for _, t := range []time.Time{from, end} {
			select {
			case <-ctx.Done():
				samples <- sample{err: ctx.Err()}
				continue
			case <-time.After(time.Until(t)):
			}
			samples <- takeSample(s.Procs())
		}
	}()
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 1<<12)
			for ctx.Err() == nil {
				if !time.Now().Before(end) {
					break
				}
				err := w.Prepare()
				var t0, t1 time.Time
				if err == nil {
					t0 = time.Now()
					rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					err = w.Issue(rctx)
					cancel()
					t1 = time.Now()
				}
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					mu.Lock()
					errs++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					// Do not spin on a failing system.
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if !t1.Before(from) && !t1.After(end) {
					lat = append(lat, t1.Sub(t0))
				}
			}
			all[i] = lat
		}()
	}
	wg.Wait()
	a, b := <-samples, <-samples
	if err := ctx.Err(); err != nil {
		return result{}, err
	}
	if a.err != nil || b.err != nil {
		return result{}, fmt.Errorf("reading CPU time: %v", firstNonNil(a.err, b.err))
	}
	r := between(a, b)
	r.errors, r.firstErr = errs, firstErr
	for _, l := range all {
		r.lat = append(r.lat, l...)
	}
	slices.Sort(r.lat)
	r.n = len(r.lat)
	return r, nil
}

// runStorm has every worker issue perWorker certificates back to back, all
// workers starting at once, and measures from the start to the last answer.
func runStorm(ctx context.Context, s system, ws []worker, perWorker int) (result, error) {
	// Connections idle since setup may have been closed by the server.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for _, w := range ws {
		g.Go(func() error { return w.Warm(gctx) })
	}
	if err := g.Wait(); err != nil {
		return result{}, fmt.Errorf("connecting the workloads: %w", err)
	}
	// Every request of the storm is prepared before the start (step-ca:
	// its one-time token), so that the storm measures the servers, not the
	// token signing.
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		errs     int
		firstErr error
		all      = make([][]time.Duration, len(ws))
		start    = make(chan struct{})
		prepared sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		errs++
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	for i, w := range ws {
		wg.Add(1)
		prepared.Add(1)
		go func() {
			defer wg.Done()
			for range perWorker {
				if err := w.Prepare(); err != nil {
					fail(err)
					prepared.Done()
					return
				}
			}
			prepared.Done()
			lat := make([]time.Duration, 0, perWorker)
			<-start
			for k := 0; k < perWorker && ctx.Err() == nil; k++ {
				t0 := time.Now()
				rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				err := w.Issue(rctx)
				cancel()
				if err != nil {
					if ctx.Err() == nil {
						fail(err)
					}
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			all[i] = lat
		}()
	}
	prepared.Wait()
	a := takeSample(s.Procs())
	close(start)
	wg.Wait()
	b := takeSample(s.Procs())
	if err := ctx.Err(); err != nil {
		return result{}, err
	}
	if a.err != nil || b.err != nil {
		return result{}, fmt.Errorf("reading CPU time: %v", firstNonNil(a.err, b.err))
	}
	r := between(a, b)
	r.errors, r.firstErr = errs, firstErr
	for _, l := range all {
		r.lat = append(r.lat, l...)
	}
	slices.Sort(r.lat)
	r.n = len(r.lat)
	return r, nil
}

func firstNonNil(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
