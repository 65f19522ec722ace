package proxy

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func TestCompileRouteMergesOverDefault(t *testing.T) {
	def := &meshfedv1.TrafficPolicy{
		Timeouts:       &meshfedv1.Timeouts{Request: durationpb.New(3 * time.Second), Connect: durationpb.New(time.Second)},
		Retries:        &meshfedv1.RetryPolicy{Attempts: 5, RetryOn: []string{"5xx"}},
		CircuitBreaker: &meshfedv1.CircuitBreaker{MaxRequests: 10},
		LoadBalancer:   meshfedv1.LoadBalancer_LOAD_BALANCER_RANDOM,
		Fault:          &meshfedv1.FaultInjection{AbortStatus: 503, AbortPercent: 1},
	}
	tp := &meshfedv1.TrafficPolicy{
		Timeouts: &meshfedv1.Timeouts{Request: durationpb.New(7 * time.Second)},
		Retries:  &meshfedv1.RetryPolicy{Attempts: 2, RetryOn: []string{"gateway-error", "unavailable"}, PerTryTimeout: durationpb.New(time.Second)},
		Splits:   []*meshfedv1.TrafficSplit{{Version: "v1", Weight: 90}, {Version: "v2", Weight: 10}},
	}
	r := compileRoute(tp, def)
	if r.requestTimeout != 7*time.Second || r.connectTimeout != time.Second {
		t.Errorf("timeouts: request %s connect %s, want 7s (policy) and 1s (default)", r.requestTimeout, r.connectTimeout)
	}
	if r.attempts != 2 || r.perTry != time.Second || r.retryOn != retryGateway|retryUnavailable {
		t.Errorf("retries: %d attempts, per try %s, on %b; want the policy's", r.attempts, r.perTry, r.retryOn)
	}
	if r.maxRequests != 10 || r.lb != meshfedv1.LoadBalancer_LOAD_BALANCER_RANDOM || r.abortStatus != 503 {
		t.Errorf("defaults not applied: max requests %d, lb %v, abort %d", r.maxRequests, r.lb, r.abortStatus)
	}
	if r.splitWeight != 100 || len(r.splits) != 2 {
		t.Errorf("splits: %+v", r.splits)
	}

	none := compileRoute(nil, nil)
	if none.attempts != defaultAttempts || none.retryOn != retryConnect|retryReset || none.connectTimeout != connectTimeout ||
		none.requestTimeout != 0 || none.hasFault() || none.version() != "" || none.maxEjectPct != 100 {
		t.Errorf("no policy: %+v", none)
	}
	// An abort status outside 200-599 never aborts.
	bad := compileRoute(&meshfedv1.TrafficPolicy{Fault: &meshfedv1.FaultInjection{AbortStatus: 99, AbortPercent: 100}}, nil)
	if abort, _ := bad.fault(); abort != 0 {
		t.Errorf("abort with status 99: %d", abort)
	}
}

func TestRetryConditions(t *testing.T) {
	for _, c := range []struct {
		on         []string
		code, grpc int
		want       bool
	}{
		{[]string{"5xx"}, 500, -1, true},
		{[]string{"5xx"}, 404, -1, false},
		{[]string{"gateway-error"}, 503, -1, true},
		{[]string{"gateway-error"}, 500, -1, false},
		{[]string{"unavailable"}, 200, 14, true},
		{[]string{"unavailable"}, 200, 13, false},
		{[]string{"connect-failure", "reset"}, 503, -1, false},
		{[]string{"Gateway-Error ", "bogus"}, 504, -1, true},
	} {
		if got := parseRetryOn(c.on).retryStatus(c.code, c.grpc); got != c.want {
			t.Errorf("retry_on %q, status %d grpc %d: %v, want %v", c.on, c.code, c.grpc, got, c.want)
		}
	}
	if parseRetryOn([]string{"reset"}).retryTimeout() || !parseRetryOn([]string{"5xx"}).retryTimeout() {
		t.Error("a per-try timeout is retried under 5xx and gateway-error only")
	}
	for n := 1; n < 20; n++ {
		if d := backoff(n); d <= 0 || d > retryBackoffMax {
			t.Fatalf("backoff(%d) = %s", n, d)
		}
	}
}

func TestSplitAndFaultShares(t *testing.T) {
	r := compileRoute(&meshfedv1.TrafficPolicy{
		Splits: []*meshfedv1.TrafficSplit{{Version: "v1", Weight: 75}, {Version: "v2", Weight: 25}, {Version: "v3"}},
		Fault:  &meshfedv1.FaultInjection{AbortStatus: 418, AbortPercent: 10, Delay: durationpb.New(time.Millisecond), DelayPercent: 50},
	}, nil)
	counts := map[string]int{}
	aborts, delays := 0, 0
	const n = 20000
	for range n {
		counts[r.version()]++
		switch abort, delay := r.fault(); {
		case abort == 418:
			aborts++
		case delay == time.Millisecond:
			delays++
		}
	}
	if counts["v3"] != 0 || counts["v1"] < n*70/100 || counts["v1"] > n*80/100 {
		t.Errorf("versions %v, want about 75%% v1, 25%% v2, no v3", counts)
	}
	// Aborted requests are not delayed: 10% abort, 50% of the rest delay.
	if aborts < n*8/100 || aborts > n*12/100 || delays < n*40/100 || delays > n*50/100 {
		t.Errorf("%d aborts and %d delays of %d", aborts, delays, n)
	}
}

func TestTokenBucket(t *testing.T) {
	if newTokenBucket(0, 5) != nil || !(*tokenBucket)(nil).allow(time.Now()) {
		t.Fatal("a zero rate must admit everything")
	}
	b := newTokenBucket(2, 3)
	now := time.Unix(1000, 0)
	got := 0
	for range 10 {
		if b.allow(now) {
			got++
		}
	}
	if got != 3 {
		t.Fatalf("burst of 3: admitted %d of 10", got)
	}
	if b.allow(now.Add(100 * time.Millisecond)) {
		t.Fatal("a token after 100 ms at 2/s")
	}
	if !b.allow(now.Add(600 * time.Millisecond)) {
		t.Fatal("no token after 600 ms at 2/s")
	}
	// Refills stop at the burst.
	later := now.Add(time.Hour)
	got = 0
	for range 10 {
		if b.allow(later) {
			got++
		}
	}
	if got != 3 {
		t.Fatalf("after an hour: admitted %d of 10, want the burst (3)", got)
	}
	// No burst given: the rate, rounded up.
	if b := newTokenBucket(2.5, 0); b.burst != 3 {
		t.Fatalf("default burst %v", b.burst)
	}
}

func TestRateLimitKeptAcrossEqualUpdates(t *testing.T) {
	p := &Proxy{m: newMetrics(), cfg: Config{Namespace: "default", Service: "api"}}
	p.setRateLimit(&meshfedv1.RateLimit{RequestsPerSecond: 1, Burst: 1})
	now := time.Now()
	if !p.rateAllow(now) || p.rateAllow(now) {
		t.Fatal("1/s with a burst of 1 admits exactly one")
	}
	p.setRateLimit(&meshfedv1.RateLimit{RequestsPerSecond: 1, Burst: 1})
	if p.rateAllow(now) {
		t.Fatal("re-applying the same limit refilled the bucket")
	}
	p.setRateLimit(nil)
	for range 100 {
		if !p.rateAllow(now) {
			t.Fatal("no limit refused a request")
		}
	}
}

func TestConnLimiter(t *testing.T) {
	var l connLimiter
	if !l.tryOpen(2) || !l.tryOpen(2) || l.tryOpen(2) {
		t.Fatal("max 2 connections")
	}
	if !l.tryOpen(0) {
		t.Fatal("0 is no limit")
	}
	l.closed()
	// One waiter at most: the second is refused at once.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	woke := make(chan error, 1)
	go func() {
		_, err := l.wait(ctx, 1)
		woke <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.mu.Lock()
		p := l.pending
		l.mu.Unlock()
		if p == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the waiter never registered")
		}
		time.Sleep(time.Millisecond)
	}
	if ok, _ := l.wait(ctx, 1); ok {
		t.Fatal("a second pending request was admitted past max_pending_requests 1")
	}
	l.freed()
	if err := <-woke; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	// A waiter gives up with its context.
	short, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if ok, err := l.wait(short, 0); !ok || err == nil {
		t.Fatalf("wait past the deadline: %v %v", ok, err)
	}
}

func TestOutlierEjection(t *testing.T) {
	p := &Proxy{m: newMetrics(), log: slog.New(slog.DiscardHandler)}
	u := newUpstream(p, Upstream{Namespace: "default", Service: "api"})
	set := testSet([]string{"a", "b", "c", "d"})
	rt := compileRoute(&meshfedv1.TrafficPolicy{CircuitBreaker: &meshfedv1.CircuitBreaker{
		ConsecutiveErrors: 2, BaseEjectionTime: durationpb.New(time.Minute), MaxEjectionPercent: 50,
	}}, nil)
	a, b, c := set.all[0], set.all[1], set.all[2]
	u.failed(rt, set, a, false)
	if a.ejectedUntil.Load() != 0 {
		t.Fatal("ejected after one error of two")
	}
	u.succeeded(a)
	u.failed(rt, set, a, false)
	if a.ejectedUntil.Load() != 0 {
		t.Fatal("a success must reset the count")
	}
	u.failed(rt, set, a, false)
	if a.ejectedUntil.Load() <= time.Now().Add(50*time.Second).UnixNano() {
		t.Fatal("two errors in a row must eject for the base ejection time")
	}
	u.failed(rt, set, b, false)
	u.failed(rt, set, b, false)
	if b.ejectedUntil.Load() == 0 {
		t.Fatal("the second of four endpoints is within 50%")
	}
	u.failed(rt, set, c, false)
	u.failed(rt, set, c, false)
	if c.ejectedUntil.Load() != 0 {
		t.Fatal("a third of four endpoints ejected past max_ejection_percent 50")
	}
	// Ejected endpoints are skipped.
	for range 20 {
		if e, _ := u.pick(set, nil, ""); e == a || e == b {
			t.Fatalf("picked ejected %s", e.addr)
		}
	}
	// Without outlier ejection only connection failures eject, briefly.
	plain := compileRoute(nil, nil)
	d := set.all[3]
	u.failed(plain, set, d, false)
	if d.ejectedUntil.Load() != 0 {
		t.Fatal("a 5xx ejected without consecutive_errors")
	}
	u.failed(plain, set, d, true)
	if until := d.ejectedUntil.Load(); until == 0 || until > time.Now().Add(ejectFor).UnixNano() {
		t.Fatal("a connection failure must eject for ejectFor")
	}
}

func TestPickByVersion(t *testing.T) {
	u := newUpstream(&Proxy{}, Upstream{Namespace: "default", Service: "api"})
	set := testSet([]string{"l1", "l2"}, []string{"r1"})
	set.all[0].version, set.all[1].version, set.all[2].version = "v1", "v2", "v2"
	for range 20 {
		if e, _ := u.pick(set, nil, "v2"); e.addr != "l2" {
			t.Fatalf("v2 went to %s, want the local v2 endpoint", e.addr)
		}
	}
	set.all[1].ejectedUntil.Store(time.Now().Add(time.Minute).UnixNano())
	if e, _ := u.pick(set, nil, "v2"); e.addr != "r1" {
		t.Fatalf("v2 with the local one ejected went to %s, want the remote v2", e.addr)
	}
	// A version nobody runs falls back to any endpoint.
	if e, err := u.pick(set, nil, "v9"); err != nil || e.addr != "l1" {
		t.Fatalf("v9: %v %v", e, err)
	}
}

func TestReplayBody(t *testing.T) {
	b := &replayBody{ReadCloser: io.NopCloser(strings.NewReader("hello"))}
	if _, err := b.replay(); err == nil {
		t.Fatal("replayable before it was read")
	}
	if got, _ := io.ReadAll(b); string(got) != "hello" {
		t.Fatalf("read %q", got)
	}
	for range 2 {
		r, err := b.replay()
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := io.ReadAll(r); string(got) != "hello" {
			t.Fatalf("replayed %q", got)
		}
	}
	big := &replayBody{ReadCloser: io.NopCloser(strings.NewReader(strings.Repeat("x", maxReplayBody+1)))}
	if n, _ := io.Copy(io.Discard, big); n != maxReplayBody+1 {
		t.Fatalf("read %d", n)
	}
	if _, err := big.replay(); err == nil {
		t.Fatal("a body over maxReplayBody is replayable")
	}
}

func TestTrafficCounts(t *testing.T) {
	p := &Proxy{}
	u := newUpstream(p, Upstream{Namespace: "shop", Service: "api"})
	set := testSet([]string{"l1", "l2"}, []string{"r1"})
	set.all[2].remote = "west"
	u.set.Store(set)
	p.upstreams = []*upstream{u, newUpstream(p, Upstream{Namespace: "shop", Service: "idle"})}
	set.all[0].count(200)
	set.all[1].count(503)
	set.all[1].count(0)
	set.all[2].count(200)
	got := p.takeTrafficCounts()
	if len(got) != 2 || got[0].GetCluster() != "" || got[0].GetRequests() != 3 || got[0].GetErrors() != 2 ||
		got[1].GetCluster() != "west" || got[1].GetRequests() != 1 || got[1].GetErrors() != 0 || got[0].GetService() != "api" {
		t.Fatalf("counts %v", got)
	}
	if again := p.takeTrafficCounts(); len(again) != 0 {
		t.Fatalf("counted twice: %v", again)
	}
	// A heartbeat that failed gives its counts back.
	p.putBackTrafficCounts(got)
	if back := p.takeTrafficCounts(); len(back) != 2 || back[0].GetRequests() != 3 || back[1].GetRequests() != 1 {
		t.Fatalf("after putting back: %v", back)
	}
}
