package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

// requestTimeout bounds one request; a request that takes longer counts as
// an error (and its time as its latency is not recorded).
const requestTimeout = 10 * time.Second

// client is the load generator's HTTP/1.1 client of one target: a pool of
// kept-alive connections, at most conns of them.
type client struct {
	url  string
	body []byte
	tr   *http.Transport
	hc   *http.Client
}

func newClient(addr string, conns int) *client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     5 * time.Minute,
		DisableCompression:  true,
	}
	return &client{
		url:  "http://" + addr + "/bench",
		body: bytes.Repeat([]byte("b"), bodySize),
		tr:   tr,
		hc:   &http.Client{Transport: tr, Timeout: requestTimeout},
	}
}

// do sends one POST with a 1 KB body and reads the whole response, which
// must be the app's: status 200 and 1 KB.
func (c *client) do(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(c.body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	if err != nil {
		return fmt.Errorf("reading the response: %w", err)
	}
	if n != bodySize {
		return fmt.Errorf("response body of %d bytes, want %d", n, bodySize)
	}
	return nil
}

// reset closes the pool's idle connections. Each phase starts with new
// connections, so that a connection a proxy timed out between phases is not
// reused (a POST is not retried on a dead connection).
func (c *client) reset() { c.tr.CloseIdleConnections() }

// snapshot is the CPU time of the watched processes, of this process and of
// the whole machine at one instant.
type snapshot struct {
	at      time.Time
	procs   []time.Duration
	self    time.Duration
	machine time.Duration
	err     error
}

func takeSnapshot(procs []*harness.Proc) snapshot {
	s := snapshot{at: time.Now(), self: selfCPU()}
	for _, p := range procs {
		t, err := harness.CPUTime(p.PID())
		if err != nil && s.err == nil {
			s.err = fmt.Errorf("%s: %w", p.Name, err)
		}
		s.procs = append(s.procs, t)
	}
	if m, err := harness.MachineBusy(); err == nil {
		s.machine = m
	}
	return s
}

// usage is what the watched processes, this process and every other
// process on the machine used between two snapshots.
type usage struct {
	wall   time.Duration
	procs  []time.Duration
	self   time.Duration
	others time.Duration
}

func between(a, b snapshot) (usage, error) {
	if a.err != nil {
		return usage{}, a.err
	}
	if b.err != nil {
		return usage{}, b.err
	}
	u := usage{wall: b.at.Sub(a.at), self: b.self - a.self}
	var sum time.Duration
	for i := range a.procs {
		d := b.procs[i] - a.procs[i]
		u.procs = append(u.procs, d)
		sum += d
	}
	if a.machine > 0 && b.machine > 0 {
		u.others = max(0, b.machine-a.machine-sum-u.self)
	}
	return u, nil
}

// selfCPU is this process's user+system CPU time: the load generator and
// the app.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fixedResult is one fixed-rate phase.
type fixedResult struct {
	lat      []time.Duration // sorted; measured requests that succeeded
	n        int             // measured requests, failed ones included
	errors   int
	firstErr error
	use      usage   // over the measured window
	rssPeak  []int64 // per watched process, sampled over the measured window
	// sendLag is how late each measured request was handed to a worker
	// after its due time (sorted): the load generator's own delay, which
	// is part of every latency, whatever the target.
	sendLag []time.Duration
}

func (r fixedResult) pct(p float64) time.Duration { return harness.Percentile(r.lat, p) }

// cpuPer1000 is the CPU time watched process i spent per 1,000 requests.
func (r fixedResult) cpuPer1000(i int) time.Duration {
	if r.n == 0 || i >= len(r.use.procs) {
		return 0
	}
	return r.use.procs[i] * 1000 / time.Duration(r.n)
}

type job struct {
	i  int
	at time.Time
}

// runFixed sends rate requests per second, open loop, for warmup+dur: the
// i-th request is due at start+i/rate whatever happened to the others, and
// its latency runs from that due time, not from when a connection was free
// to send it, so that a stall is charged to every request it delayed
// (no coordinated omission). conns workers, each with at most one request
// in flight, take due requests in order. Requests due in the warm-up are
// sent but not recorded. CPU times are read when the first measured
// request is due and after the last one completed; the resident memory of
// procs is sampled every 100 ms in between and its peak kept.
func runFixed(ctx context.Context, c *client, procs []*harness.Proc, rate, conns int, warmup, dur time.Duration) (fixedResult, error) {
	interval := time.Second / time.Duration(rate)
	nWarm := int(warmup / interval)
	nMeas := int(dur / interval)
	total := nWarm + nMeas
	jobs := make(chan job, min(total, 1<<16))

	var (
		mu       sync.Mutex
		res      = fixedResult{rssPeak: make([]int64, len(procs))}
		first    snapshot
		stopRSS  = make(chan struct{})
		rssDone  = make(chan struct{})
		wg       sync.WaitGroup
		lats     = make([][]time.Duration, conns)
		canceled bool
	)
	sampleRSS := func() {
		defer close(rssDone)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			for i, p := range procs {
				if v, err := harness.VMRSS(p.PID()); err == nil {
					res.rssPeak[i] = max(res.rssPeak[i], v)
				}
			}
			select {
			case <-stopRSS:
				return
			case <-t.C:
			}
		}
	}
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lats[w] = make([]time.Duration, 0, nMeas/conns+1)
			for j := range jobs {
				err := c.do(ctx)
				d := time.Since(j.at)
				if j.i < nWarm {
					continue
				}
				if err != nil {
					mu.Lock()
					res.errors++
					if res.firstErr == nil {
						res.firstErr = err
					}
					mu.Unlock()
					continue
				}
				lats[w] = append(lats[w], d)
			}
		}()
	}

	// The dispatcher sleeps on its own thread, in nanosleep: a Go timer
	// wakes up to a millisecond late (the runtime waits for timers in
	// epoll_wait, whose timeout is in whole milliseconds), which at 1,000
	// requests/s would be most of the latency measured.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := time.Now().Add(5 * time.Millisecond)
	rssStarted := false
	for i := range total {
		at := start.Add(time.Duration(i) * interval)
		sleepPrecise(ctx, at)
		if ctx.Err() != nil {
			canceled = true
			break
		}
		if i == nWarm {
			first = takeSnapshot(procs)
			go sampleRSS()
			rssStarted = true
		}
		if i >= nWarm {
			res.sendLag = append(res.sendLag, time.Since(at))
		}
		jobs <- job{i: i, at: at}
	}
	close(jobs)
	wg.Wait()
	last := takeSnapshot(procs)
	if rssStarted {
		close(stopRSS)
		<-rssDone
	}
	if canceled {
		return res, ctx.Err()
	}
	var err error
	if res.use, err = between(first, last); err != nil {
		return res, err
	}
	for _, l := range lats {
		res.lat = append(res.lat, l...)
	}
	slices.Sort(res.lat)
	slices.Sort(res.sendLag)
	res.n = nMeas
	return res, nil
}

// maxResult is one closed-loop phase.
type maxResult struct {
	n        int // requests that succeeded within the window
	errors   int
	firstErr error
	use      usage
}

func (r maxResult) rate() float64 {
	if r.use.wall <= 0 {
		return 0
	}
	return float64(r.n) / r.use.wall.Seconds()
}

// runMax keeps conc clients sending back to back, each on its own kept-alive
// connection, for warmup+dur; requests completed within the last dur count.
func runMax(ctx context.Context, c *client, procs []*harness.Proc, conc int, warmup, dur time.Duration) (maxResult, error) {
	start := time.Now()
	from, end := start.Add(warmup), start.Add(warmup+dur)
	var (
		mu  sync.Mutex
		res maxResult
		wg  sync.WaitGroup
	)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, errs := 0, 0
			var firstErr error
			for ctx.Err() == nil {
				if !time.Now().Before(end) {
					break
				}
				err := c.do(ctx)
				now := time.Now()
				if now.Before(from) || now.After(end) {
					continue
				}
				if err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				n++
			}
			mu.Lock()
			res.n += n
			res.errors += errs
			if res.firstErr == nil {
				res.firstErr = firstErr
			}
			mu.Unlock()
		}()
	}
	sleepUntil(ctx, from)
	a := takeSnapshot(procs)
	sleepUntil(ctx, end)
	b := takeSnapshot(procs)
	wg.Wait()
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	var err error
	res.use, err = between(a, b)
	return res, err
}

// sleepPrecise blocks the calling thread until t, in steps of at most
// 10 ms so that a cancelled ctx is noticed.
func sleepPrecise(ctx context.Context, t time.Time) {
	for ctx.Err() == nil {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		ts := syscall.NsecToTimespec(min(d, 10*time.Millisecond).Nanoseconds())
		// EINTR (the runtime preempting this thread) only shortens the
		// sleep; the loop goes on.
		_ = syscall.Nanosleep(&ts, nil)
	}
}

func sleepUntil(ctx context.Context, t time.Time) {
	select {
	case <-ctx.Done():
	case <-time.After(time.Until(t)):
	}
}
