package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Target is one connection to a system under test. Write must be safe for
// concurrent use: several workers share a connection, as real clients do.
type Target interface {
	Write(ctx context.Context, key string, value []byte) error
	Close() error
}

// system opens connections to the current leader of one cluster.
type system interface {
	Name() string
	Open(ctx context.Context, conns int) ([]Target, error)
}

type result struct {
	system   string
	conc     int
	writes   int
	errors   int
	firstErr error
	dur      time.Duration
	lat      []time.Duration // sorted
}

func (r result) rate() float64 { return float64(r.writes) / r.dur.Seconds() }

func (r result) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[int(p*float64(len(r.lat)-1)+0.5)]
}

func connsFor(conc int) int { return min(conc, 8) }

// keySpace is how many distinct keys each worker cycles through: large
// enough that writes are spread over a realistic table, small enough that a
// run does not grow either store without bound.
const keySpace = 1000

func workerKeys(worker int) []string {
	keys := make([]string, keySpace)
	for i := range keys {
		keys[i] = fmt.Sprintf("w%02d-%06d", worker, i)
	}
	return keys
}

// runLoad keeps conc writes in flight for warmup+dur and measures the writes
// that start after the warm-up and finish before the end. Writes still in
// flight at the end are not counted, so the rate is slightly conservative.
func runLoad(ctx context.Context, targets []Target, conc int, warmup, dur time.Duration, value []byte) result {
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(dur)

	var (
		wg       sync.WaitGroup
		errs     atomic.Int64
		mu       sync.Mutex
		firstErr error
		all      = make([][]time.Duration, conc)
	)
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := targets[w%len(targets)]
			keys := workerKeys(w)
			lat := make([]time.Duration, 0, 1<<14)
			v := append([]byte(nil), value...)
			for i := 0; ; i++ {
				t0 := time.Now()
				if !t0.Before(end) || ctx.Err() != nil {
					break
				}
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				stamp(v)
				err := t.Write(wctx, keys[i%keySpace], v)
				cancel()
				t1 := time.Now()
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					errs.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				if !t0.Before(measureFrom) && !t1.After(end) {
					lat = append(lat, t1.Sub(t0))
				}
			}
			all[w] = lat
		}()
	}
	wg.Wait()
	var lat []time.Duration
	for _, l := range all {
		lat = append(lat, l...)
	}
	slices.Sort(lat)
	return result{conc: conc, writes: len(lat), errors: int(errs.Load()), firstErr: firstErr, dur: dur, lat: lat}
}

func openTargets(ctx context.Context, s system, conc int) ([]Target, error) {
	return s.Open(ctx, connsFor(conc))
}

func closeTargets(ts []Target) {
	for _, t := range ts {
		t.Close()
	}
}

// writeSeq numbers every write of the run.
var writeSeq atomic.Uint64

// stamp writes a run-unique sequence number into the start of v, so that
// no write repeats the value already stored under its key: both systems do
// a real update every time (meshfed skips writes that change nothing, etcd
// does not), and the bytes stay label-safe (base 36, lower case).
func stamp(v []byte) {
	s := strconv.FormatUint(writeSeq.Add(1), 36)
	n := min(len(v), 12)
	for i := range n {
		v[i] = '0'
	}
	if len(s) > n {
		s = s[len(s)-n:]
	}
	copy(v[n-len(s):n], s)
}
