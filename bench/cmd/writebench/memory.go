package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

type memResult struct {
	n                     int
	rssBefore, rssAfter   int64
	heapBefore, heapAfter int64 // -1 when /metrics is not readable
	// After the server, idle once the fill is over, collected and returned
	// its free memory to the system (within a minute, see
	// controlplane/memrelease.go): the steady state of an idle server,
	// without the garbage the fill itself left. Zero when not measured.
	rssSteady, heapSteady int64
	releaseWait           time.Duration
	loadTime              time.Duration
	errors                int
	firstErr              error
}

// measureMemory fills one fresh dev server with n workloads and reports how
// much its resident memory grew. RSS cannot be taken after a forced GC from
// outside, so each reading is the median of several samples taken once the
// figure has stopped moving.
func measureMemory(ctx context.Context, ps *harness.Procs, bin, dir string, n int, value []byte) (*memResult, error) {
	s, err := harness.NewMeshfedServer("mem", filepath.Join(dir, "mem"))
	if err != nil {
		return nil, err
	}
	args := append([]string{"server", "--dev"}, s.AddrArgs()...)
	if s.P, err = ps.Start("meshfed dev", filepath.Join(dir, "mem.log"), nil, bin, args...); err != nil {
		return nil, err
	}
	defer ps.Stop(s.P)
	token, caPEM, err := s.WaitCredentials(ctx)
	if err != nil {
		return nil, err
	}
	if err := upsertBenchService(ctx, s.API, caPEM, token); err != nil {
		return nil, fmt.Errorf("creating service %q: %w", benchService, err)
	}
	r := &memResult{n: n}
	if r.rssBefore, err = settledRSS(ctx, s.P); err != nil {
		return nil, err
	}
	r.heapBefore = heapInuse(ctx, s.HTTP, caPEM, token)

	targets, err := openMeshfedTargets(s.API, caPEM, token, 8)
	if err != nil {
		return nil, err
	}
	defer closeTargets(targets)
	const conc = 64
	var (
		next     atomic.Int64
		errs     atomic.Int64
		mu       sync.Mutex
		wg       sync.WaitGroup
		firstErr error
	)
	start := time.Now()
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := targets[w%len(targets)]
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := t.Write(wctx, memKey(int(i)), value)
				cancel()
				if err != nil && ctx.Err() == nil {
					errs.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	r.loadTime = time.Since(start)
	r.errors, r.firstErr = int(errs.Load()), firstErr
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.P.ExitErr(); err != nil {
		return nil, err
	}
	if r.rssAfter, err = settledRSS(ctx, s.P); err != nil {
		return nil, err
	}
	r.heapAfter = heapInuse(ctx, s.HTTP, caPEM, token)

	waitStart := time.Now()
	if waitIdleRelease(ctx, s.HTTP, caPEM, token, 150*time.Second) {
		r.releaseWait = time.Since(waitStart)
		if r.rssSteady, err = settledRSS(ctx, s.P); err != nil {
			return nil, err
		}
		r.heapSteady = heapInuse(ctx, s.HTTP, caPEM, token)
	}
	return r, nil
}

// waitIdleRelease polls meshfed_memory_idle_releases_total until it moves
// (the server, idle, collected and returned its free memory to the
// system), and reports whether it did before timeout.
func waitIdleRelease(ctx context.Context, addr string, caPEM []byte, token string, timeout time.Duration) bool {
	const metric = "meshfed_memory_idle_releases_total"
	first := metricValue(ctx, addr, caPEM, token, metric)
	if first < 0 {
		return false
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(3 * time.Second):
		}
		// Polled sparingly: each poll is a TLS handshake and a scrape,
		// which the server counts against its idleness.
		if v := metricValue(ctx, addr, caPEM, token, metric); v > first {
			return true
		}
	}
	return false
}

// settledRSS samples every 500 ms until the last five samples lie within 1%
// of each other (or 30 s pass) and returns their median.
func settledRSS(ctx context.Context, p *harness.Proc) (int64, error) {
	const window = 5
	var samples []int64
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := p.ExitErr(); err != nil {
			return 0, err
		}
		v, err := harness.VMRSS(p.PID())
		if err != nil {
			return 0, err
		}
		samples = append(samples, v)
		if len(samples) >= window {
			last := samples[len(samples)-window:]
			lo, hi := int64(math.MaxInt64), int64(0)
			for _, x := range last {
				lo, hi = min(lo, x), max(hi, x)
			}
			if float64(hi-lo) <= 0.01*float64(hi) || time.Now().After(deadline) {
				return harness.Median(last), nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// heapInuse reads go_memstats_heap_inuse_bytes from the server's /metrics,
// over TLS if the HTTP port speaks it; -1 if the figure is not to be had.
func heapInuse(ctx context.Context, addr string, caPEM []byte, token string) int64 {
	return metricValue(ctx, addr, caPEM, token, "go_memstats_heap_inuse_bytes")
}

// metricValue reads one gauge from the server's /metrics; -1 if it cannot.
func metricValue(ctx context.Context, addr string, caPEM []byte, token, name string) int64 {
	cfg, err := harness.MeshfedTLS(caPEM)
	if err != nil {
		return -1
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	defer hc.CloseIdleConnections()
	for _, scheme := range []string{"https", "http"} {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+"/metrics", nil)
		if err != nil {
			return -1
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			continue
		}
		v := parseMetric(resp.Body, name)
		resp.Body.Close()
		if v >= 0 {
			return v
		}
	}
	return -1
}

func parseMetric(r io.Reader, name string) int64 {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, name)), 64)
		if err != nil {
			return -1
		}
		return int64(f)
	}
	return -1
}

// memKey has the length of the write bench's keys, so that the stored
// workloads have the same size.
func memKey(i int) string { return fmt.Sprintf("mem-%06d", i) }
