package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/testharness"
)

// tpApplyTimeout bounds the wait for a traffic policy change to show in
// the proxies' behaviour (they apply one within about a second).
const tpApplyTimeout = 5 * time.Second

// tpGate holds the apps' /hold requests until it is released.
type tpGate struct {
	mu     sync.Mutex
	ch     chan struct{}
	closed bool // for good: every hold returns at once
}

func (g *tpGate) wait() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch == nil {
		g.ch = make(chan struct{})
		if g.closed {
			close(g.ch)
		}
	}
	return g.ch
}

// release lets every request held so far go; later ones are held again.
func (g *tpGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch != nil && !g.closed {
		close(g.ch)
	}
	g.ch = nil
}

// close releases every request, now and later.
func (g *tpGate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.release()
}

// tpApp is a destination app whose behaviour the test switches. Every
// answer carries X-App: <name>, so that an answer of the app can be told
// from one a proxy made up.
type tpApp struct {
	name string
	port int
	gate *tpGate
	// hits counts the requests received (health checks aside); held the
	// /hold requests among them.
	hits atomic.Int64
	held atomic.Int64
	// failNext answers the next failNext requests with 503; failAll, when
	// not 0, answers every request with that status. /hold is exempt.
	failNext atomic.Int64
	failAll  atomic.Int64
}

func startTPApp(t *testing.T, name string, gate *tpGate) *tpApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &tpApp{name: name, port: ln.Addr().(*net.TCPAddr).Port, gate: gate}
	srv := &http.Server{Handler: http.HandlerFunc(a.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		gate.close()
		srv.Close()
	})
	return a
}

func (a *tpApp) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		return
	}
	a.hits.Add(1)
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("X-App", a.name)
	if r.URL.Path == "/hold" {
		a.held.Add(1)
		select {
		case <-a.gate.wait():
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		fmt.Fprint(w, a.name)
		return
	}
	if s := a.failAll.Load(); s != 0 {
		w.WriteHeader(int(s))
		fmt.Fprintf(w, "%s fails every request", a.name)
		return
	}
	if a.takeFailure() {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "%s fails this request", a.name)
		return
	}
	fmt.Fprint(w, a.name)
}

// takeFailure uses up one of the failNext failures, if any is left.
func (a *tpApp) takeFailure() bool { return takeOne(&a.failNext) }

// takeOne decrements n if it is above zero and reports whether it did.
func takeOne(n *atomic.Int64) bool {
	for {
		v := n.Load()
		if v <= 0 {
			return false
		}
		if n.CompareAndSwap(v, v-1) {
			return true
		}
	}
}

// tpResp is one answer through the client proxy.
type tpResp struct {
	code       int
	app        string // X-App: which app answered ("" when a proxy did)
	fault      string // X-Meshfed-Fault
	overloaded string // X-Meshfed-Overloaded
	body       string
	elapsed    time.Duration
	err        error
}

func (r tpResp) String() string {
	if r.err != nil {
		return fmt.Sprintf("error %v after %s", r.err, r.elapsed.Round(time.Millisecond))
	}
	return fmt.Sprintf("%d app=%q fault=%q overloaded=%q body=%q in %s", r.code, r.app, r.fault, r.overloaded,
		strings.TrimSpace(r.body), r.elapsed.Round(time.Millisecond))
}

// tpDo sends GET path to addr (a client proxy's upstream listener) with
// plain HTTP/1.1.
func tpDo(hc *http.Client, addr, path string) tpResp {
	start := time.Now()
	resp, err := hc.Get("http://" + addr + path)
	if err != nil {
		return tpResp{err: err, elapsed: time.Since(start)}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return tpResp{
		code: resp.StatusCode, app: resp.Header.Get("X-App"),
		fault: resp.Header.Get("X-Meshfed-Fault"), overloaded: resp.Header.Get("X-Meshfed-Overloaded"),
		body: string(b), elapsed: time.Since(start), err: err,
	}
}

// applyTP applies the traffic policy of api whose body (YAML, without meta
// and destination) is rules, and returns when the CLI has.
func applyTP(t *testing.T, m *meshFixture, rules string) time.Time {
	t.Helper()
	doc := "meta: {name: api}\ndestination: api\n" + rules
	f := filepath.Join(t.TempDir(), "traffic.yaml")
	if err := os.WriteFile(f, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := m.c.RunCLI(t, "policy", "traffic", "apply", "-f", f)
	if err != nil {
		t.Fatalf("meshfed policy traffic apply of\n%s: %v\n%s%s", doc, err, out, errOut)
	}
	return time.Now()
}

// waitApplied polls cond until the behaviour of a newly applied policy
// shows, at most tpApplyTimeout from applied.
func waitApplied(t *testing.T, applied time.Time, what string, cond func() error) {
	t.Helper()
	if err := testharness.Poll(tpApplyTimeout, cond); err != nil {
		t.Fatalf("the policy change did not show (%s): %v", what, err)
	}
	t.Logf("%s: in force %s after the CLI applied it", what, time.Since(applied).Round(time.Millisecond))
}

// tpHold sends GET /hold through addr and returns once an app holds it;
// the result arrives on the channel after gate.release. It fails when the
// request comes back without being held, or is not held within 5 s.
func tpHold(hc *http.Client, addr string, gate *tpGate, apps ...*tpApp) (<-chan tpResp, error) {
	return holdOne(gate, func() (n int64) {
		for _, a := range apps {
			n += a.held.Load()
		}
		return n
	}, func() tpResp { return tpDo(hc, addr, "/hold") }, "the request to /hold")
}

// startTPProxies declares the service "api" (protocol proto) with an
// endpoint of version v1 and one of v2 in front of the apps on ports v1
// and v2, and a client allowed to call it; it returns the client's proxy,
// whose upstream "api" the test calls.
func startTPProxies(t *testing.T, m *meshFixture, proto string, v1, v2 int) *testharness.Proxy {
	t.Helper()
	clientApp := startHTTPApp(t, "client")
	m.service("api", proto, v1)
	m.service("client", "http", clientApp.port)
	m.policy(fmt.Sprintf("meta: {name: allow-client}\ndestination: api\naction: allow\nrules:\n- principals: [%q]\n", m.id("client")))
	m.proxy("api", v1, nil, "--version", "v1")
	m.proxy("api", v2, nil, "--version", "v2")
	return m.proxy("client", clientApp.port, []string{"api"})
}

// holdOne starts call and returns once held (the apps' count of held
// requests) has grown; what names the call in errors.
func holdOne[R fmt.Stringer](gate *tpGate, held func() int64, call func() R, what string) (<-chan R, error) {
	before := held()
	ch := make(chan R, 1)
	go func() { ch <- call() }()
	deadline := time.Now().Add(5 * time.Second)
	for held() == before {
		select {
		case r := <-ch:
			return nil, fmt.Errorf("%s came back without being held: %s", what, r)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			gate.release()
			return nil, fmt.Errorf("%s reached no app within 5s (then: %s)", what, <-ch)
		}
	}
	return ch, nil
}

// tpReleased releases the gate and returns the held request's answer.
func tpReleased(gate *tpGate, ch <-chan tpResp) tpResp {
	return released(gate, ch, tpResp{err: fmt.Errorf("the held request did not come back within 15s of its release")})
}

// released releases the gate and returns what the held call returns, or
// late if that takes over 15 s.
func released[R any](gate *tpGate, ch <-chan R, late R) R {
	gate.release()
	select {
	case r := <-ch:
		return r
	case <-time.After(15 * time.Second):
		return late
	}
}

// TestProxyTrafficPolicy applies traffic policies to an HTTP service "api"
// with two endpoints (proxies started with --version v1 and v2) and calls
// it through a client proxy: weighted splits, fault injection (abort and
// delay, by the caller's proxy), retries (on another endpoint, bounded by
// attempts), rate limiting (by the destination's proxies), circuit
// breaking and outlier ejection. Each
// policy replaces the one before; each sub-test first waits (at most 5 s)
// until a behaviour that the previous policy cannot show appears, so the
// sub-tests run in order and a failed one may fail the next.
func TestProxyTrafficPolicy(t *testing.T) {
	skipShort(t)
	begin := time.Now()
	m := newMeshFixture(t, "east")
	gate := &tpGate{}
	v1 := startTPApp(t, "v1", gate)
	v2 := startTPApp(t, "v2", gate)
	apps := []*tpApp{v1, v2}
	cl := startTPProxies(t, m, "http", v1.port, v2.port)
	// Registered after the proxies', so it runs first: no request is still
	// held when they drain.
	t.Cleanup(gate.close)
	addr := cl.Upstream("api")
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	t.Cleanup(hc.CloseIdleConnections)

	hits := func() (n int64) {
		for _, a := range apps {
			n += a.hits.Load()
		}
		return n
	}
	resetApps := func() {
		for _, a := range apps {
			a.failNext.Store(0)
			a.failAll.Store(0)
		}
	}

	// Without a traffic policy both endpoints serve (round robin).
	seen := map[string]bool{}
	if err := testharness.Poll(waitTimeout, func() error {
		r := tpDo(hc, addr, "/req")
		if r.err == nil && r.code == http.StatusOK {
			seen[r.app] = true
		}
		if !seen["v1"] || !seen["v2"] {
			return fmt.Errorf("answered so far by %v; last answer %s", seen, r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("set-up done after %s", time.Since(begin).Round(time.Millisecond))

	t.Run("splits-0-100", func(t *testing.T) {
		applied := applyTP(t, m, "splits: [{version: v1, weight: 0}, {version: v2, weight: 100}]\n")
		// Round robin cannot answer 20 times in a row from v2.
		waitApplied(t, applied, "20 answers in a row from v2", func() error {
			for i := range 20 {
				if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusOK || r.app != "v2" {
					return fmt.Errorf("answer %d: %s", i+1, r)
				}
			}
			return nil
		})
		before := v1.hits.Load()
		for i := range 50 {
			if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusOK || r.app != "v2" {
				t.Fatalf("with v1 at weight 0 and v2 at 100, request %d: %s", i+1, r)
			}
		}
		if n := v1.hits.Load() - before; n != 0 {
			t.Fatalf("v1 (weight 0) received %d requests", n)
		}
	})

	t.Run("splits-80-20", func(t *testing.T) {
		applied := applyTP(t, m, "splits: [{version: v1, weight: 80}, {version: v2, weight: 20}]\n")
		waitApplied(t, applied, "an answer from v1", func() error {
			for range 20 {
				r := tpDo(hc, addr, "/req")
				if r.err == nil && r.code == http.StatusOK && r.app == "v1" {
					return nil
				}
			}
			return fmt.Errorf("20 requests, none answered by v1")
		})
		count := map[string]int{}
		const n = 200
		for i := range n {
			r := tpDo(hc, addr, "/req")
			if r.err != nil || r.code != http.StatusOK || (r.app != "v1" && r.app != "v2") {
				t.Fatalf("request %d: %s", i+1, r)
			}
			count[r.app]++
		}
		share := float64(count["v2"]) / n * 100
		t.Logf("v1 answered %d, v2 %d of %d requests (v2: %.1f%%)", count["v1"], count["v2"], n, share)
		if share < 8 || share > 35 {
			t.Fatalf("v2 (weight 20) answered %.1f%% of %d requests (v1 %d, v2 %d); want 8%% to 35%%", share, n, count["v1"], count["v2"])
		}
	})

	t.Run("fault-abort", func(t *testing.T) {
		applied := applyTP(t, m, "fault: {abort_status: 418, abort_percent: 100}\n")
		waitApplied(t, applied, "a 418", func() error {
			if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusTeapot {
				return fmt.Errorf("got %s", r)
			}
			return nil
		})
		before := hits()
		for i := range 10 {
			r := tpDo(hc, addr, "/req")
			if r.err != nil || r.code != http.StatusTeapot || r.fault != "abort" || r.app != "" {
				t.Fatalf("request %d with abort_percent 100: %s; want 418 from the client proxy with X-Meshfed-Fault: abort", i+1, r)
			}
		}
		if n := hits() - before; n != 0 {
			t.Fatalf("the apps received %d of the 10 aborted requests", n)
		}
	})

	t.Run("fault-delay", func(t *testing.T) {
		applied := applyTP(t, m, "fault: {delay: 0.3s, delay_percent: 100}\n")
		waitApplied(t, applied, "no more 418", func() error {
			if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusOK {
				return fmt.Errorf("got %s", r)
			}
			return nil
		})
		before := hits()
		for i := range 3 {
			r := tpDo(hc, addr, "/req")
			if r.err != nil || r.code != http.StatusOK || r.app == "" {
				t.Fatalf("request %d with a delay fault: %s", i+1, r)
			}
			if r.elapsed < 300*time.Millisecond {
				t.Fatalf("request %d with delay 0.3s at 100%% took %s", i+1, r.elapsed)
			}
		}
		if n := hits() - before; n != 3 {
			t.Fatalf("the apps received %d of the 3 delayed requests", n)
		}
	})

	t.Run("fault-removed", func(t *testing.T) {
		applied := applyTP(t, m, "")
		waitApplied(t, applied, "an answer within 300ms", func() error {
			if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusOK || r.elapsed >= 300*time.Millisecond {
				return fmt.Errorf("got %s", r)
			}
			return nil
		})
		for i := range 5 {
			if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusOK || r.app == "" || r.fault != "" || r.elapsed >= 300*time.Millisecond {
				t.Fatalf("request %d without a fault: %s", i+1, r)
			}
		}
	})

	t.Run("retries-3", func(t *testing.T) {
		t.Cleanup(resetApps)
		applied := applyTP(t, m, "retries: {attempts: 3, retry_on: [gateway-error]}\n")
		// Both apps answer their next request with 503: only retries (on
		// the other endpoint, then on either) get a 200.
		waitApplied(t, applied, "a 200 despite one 503 from each app", func() error {
			v1.failNext.Store(1)
			v2.failNext.Store(1)
			if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusOK {
				return fmt.Errorf("got %s", r)
			}
			return nil
		})
		resetApps()
		for i := range 5 {
			v1.failNext.Store(1)
			v2.failNext.Store(1)
			before := hits()
			r := tpDo(hc, addr, "/req")
			left1, left2 := v1.failNext.Load(), v2.failNext.Load()
			resetApps()
			if r.err != nil || r.code != http.StatusOK || r.app == "" {
				t.Fatalf("round %d: both apps fail their next request once, attempts 3: %s; want 200 from an app", i+1, r)
			}
			if left1 != 0 || left2 != 0 {
				t.Fatalf("round %d: the proxy retried on the endpoint that had failed rather than on the other one (failures left: v1 %d, v2 %d)", i+1, left1, left2)
			}
			if n := hits() - before; n != 3 {
				t.Fatalf("round %d: the apps received %d requests; want 3 (two 503s and the success)", i+1, n)
			}
			// Two backoffs of at most 250 ms each.
			if r.elapsed > time.Second {
				t.Fatalf("round %d: the request with two retries took %s; want under 1s", i+1, r.elapsed)
			}
		}
		// v1 answers every request with 503: every call is retried on v2.
		v1.failAll.Store(http.StatusServiceUnavailable)
		before := v1.hits.Load()
		for i := range 20 {
			if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusOK || r.app != "v2" {
				t.Fatalf("request %d with v1 failing every request: %s; want 200 from v2", i+1, r)
			}
		}
		t.Logf("with v1 answering 503 to everything, 20 requests got 200 from v2; v1 was tried %d times", v1.hits.Load()-before)
	})

	// bothFailNext makes both apps fail their next request, three times
	// over: the caller gets an app's 503 after exactly attempts requests.
	bothFailNext := func(t *testing.T, attempts int64) {
		t.Helper()
		resetApps()
		for i := range 3 {
			v1.failNext.Store(1)
			v2.failNext.Store(1)
			before := hits()
			r := tpDo(hc, addr, "/req")
			resetApps()
			if r.err != nil || r.code != http.StatusServiceUnavailable || r.app == "" {
				t.Fatalf("round %d: both apps fail their next request, attempts %d: %s; want an app's 503", i+1, attempts, r)
			}
			if n := hits() - before; n != attempts {
				t.Fatalf("round %d: the apps received %d requests; want %d (attempts %d)", i+1, n, attempts, attempts)
			}
		}
	}

	t.Run("retries-1", func(t *testing.T) {
		t.Cleanup(resetApps)
		applied := applyTP(t, m, "retries: {attempts: 1}\n")
		waitApplied(t, applied, "an app's 503 reaching the client", func() error {
			v1.failNext.Store(1)
			v2.failNext.Store(1)
			if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusServiceUnavailable || r.app == "" {
				return fmt.Errorf("got %s", r)
			}
			return nil
		})
		bothFailNext(t, 1)
	})

	// retry_on alone does not retry past attempts.
	t.Run("retries-2", func(t *testing.T) {
		t.Cleanup(resetApps)
		applied := applyTP(t, m, "retries: {attempts: 2, retry_on: [gateway-error]}\n")
		// v1 answers every request with 503: with one retry (on v2) every
		// request gets 200, which attempts 1 cannot give.
		v1.failAll.Store(http.StatusServiceUnavailable)
		waitApplied(t, applied, "10 answers in a row from v2 while v1 fails", func() error {
			for i := range 10 {
				if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusOK || r.app != "v2" {
					return fmt.Errorf("answer %d: %s", i+1, r)
				}
			}
			return nil
		})
		bothFailNext(t, 2)
	})

	t.Run("rate-limit", func(t *testing.T) {
		applied := applyTP(t, m, "retries: {attempts: 1}\nrate_limit: {requests_per_second: 2, burst: 2}\n")
		var codes map[int]int
		var proxy429, appGot, ok200 int64
		waitApplied(t, applied, "a 429 in a burst of 20", func() error {
			codes = map[int]int{}
			proxy429, ok200 = 0, 0
			before := hits()
			var last tpResp
			for range 20 {
				r := tpDo(hc, addr, "/req")
				if r.err != nil {
					return fmt.Errorf("request failed: %s", r)
				}
				codes[r.code]++
				switch {
				case r.code == http.StatusTooManyRequests && r.app == "":
					proxy429++
				case r.code == http.StatusOK && r.app != "":
					ok200++
				}
				last = r
			}
			appGot = hits() - before
			if codes[http.StatusTooManyRequests] == 0 {
				return fmt.Errorf("status counts %v; last %s", codes, last)
			}
			return nil
		})
		t.Logf("burst of 20: status counts %v, the apps received %d", codes, appGot)
		if ok200 == 0 {
			t.Errorf("no request of the burst got 200 from an app (status counts %v); the burst of 2 per endpoint should pass", codes)
		}
		if proxy429 != int64(codes[http.StatusTooManyRequests]) {
			t.Errorf("%d of the %d 429 answers came from an app; want all from the destination's proxies", int64(codes[http.StatusTooManyRequests])-proxy429, codes[http.StatusTooManyRequests])
		}
		if ok200+proxy429 != 20 {
			t.Errorf("status counts %v; want only 200s from the apps and 429s from the proxies", codes)
		}
		if appGot != ok200 {
			t.Errorf("the apps received %d requests of the burst and %d got 200; the limited ones must not reach an app", appGot, ok200)
		}
		// The buckets refill at 2 per second.
		if err := testharness.Poll(tpApplyTimeout, func() error {
			if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusOK {
				return fmt.Errorf("got %s", r)
			}
			return nil
		}); err != nil {
			t.Fatalf("no request passed again after the burst: %v", err)
		}
	})

	t.Run("rate-limit-removed", func(t *testing.T) {
		applied := applyTP(t, m, "retries: {attempts: 1}\n")
		waitApplied(t, applied, "a burst of 20 without a 429", func() error {
			for i := range 20 {
				if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusOK {
					return fmt.Errorf("request %d of the burst: %s", i+1, r)
				}
			}
			return nil
		})
	})

	t.Run("per-try-timeout", func(t *testing.T) {
		// Both apps hold /hold: each attempt runs out of its per-try
		// timeout, the retry goes to the other endpoint, and the client
		// gets a 504 from its proxy.
		t.Cleanup(gate.release)
		applied := applyTP(t, m, "retries: {attempts: 2, per_try_timeout: 300ms, retry_on: [gateway-error]}\n")
		short := &http.Client{Timeout: 3 * time.Second, Transport: hc.Transport}
		waitApplied(t, applied, "a 504 for a held request", func() error {
			defer gate.release()
			if r := tpDo(short, addr, "/hold"); r.err != nil || r.code != http.StatusGatewayTimeout {
				return fmt.Errorf("GET /hold: %s", r)
			}
			return nil
		})
		gate.release()
		before := []int64{v1.held.Load(), v2.held.Load()}
		r := tpDo(short, addr, "/hold")
		if r.err != nil || r.code != http.StatusGatewayTimeout || r.app != "" {
			t.Fatalf("GET /hold with both apps holding, 2 attempts of 300ms: %s; want 504 from the client proxy", r)
		}
		if r.elapsed < 600*time.Millisecond || r.elapsed > 2*time.Second {
			t.Fatalf("the 504 came after %s; want two attempts of 300ms and a backoff of at most 250ms", r.elapsed)
		}
		if d1, d2 := v1.held.Load()-before[0], v2.held.Load()-before[1]; d1 != 1 || d2 != 1 {
			t.Fatalf("held requests: v1 %d, v2 %d; want one attempt on each endpoint", d1, d2)
		}
		gate.release()

		applyTP(t, m, "retries: {attempts: 1, per_try_timeout: 300ms, retry_on: [gateway-error]}\n")
		waitApplied(t, time.Now(), "a single attempt", func() error {
			defer gate.release()
			b := v1.held.Load() + v2.held.Load()
			r := tpDo(short, addr, "/hold")
			if n := v1.held.Load() + v2.held.Load() - b; r.code != http.StatusGatewayTimeout || n != 1 {
				return fmt.Errorf("GET /hold: %s after %d attempts", r, n)
			}
			if r.elapsed > time.Second {
				return fmt.Errorf("the 504 took %s", r.elapsed)
			}
			return nil
		})
	})

	t.Run("circuit-breaker", func(t *testing.T) {
		applied := applyTP(t, m, "retries: {attempts: 1}\ncircuit_breaker: {max_requests: 1}\n")
		short := &http.Client{Timeout: 3 * time.Second, Transport: hc.Transport}
		waitApplied(t, applied, "a 503 overloaded while a request is in flight", func() error {
			held, err := tpHold(hc, addr, gate, apps...)
			if err != nil {
				return err
			}
			r := tpDo(short, addr, "/req")
			if hr := tpReleased(gate, held); hr.err != nil || hr.code != http.StatusOK {
				return fmt.Errorf("the held request: %s", hr)
			}
			if r.err != nil || r.code != http.StatusServiceUnavailable || r.overloaded != "true" {
				return fmt.Errorf("second request while one is in flight: %s", r)
			}
			return nil
		})
		held, err := tpHold(hc, addr, gate, apps...)
		if err != nil {
			t.Fatal(err)
		}
		before := hits()
		r := tpDo(short, addr, "/req")
		got := hits() - before
		hr := tpReleased(gate, held)
		if r.err != nil || r.code != http.StatusServiceUnavailable || r.overloaded != "true" || r.app != "" {
			t.Fatalf("second request while one is in flight, max_requests 1: %s; want 503 with X-Meshfed-Overloaded: true from the client proxy", r)
		}
		if r.elapsed > time.Second {
			t.Fatalf("the overloaded answer took %s; want it at once (under 1s)", r.elapsed)
		}
		if got != 0 {
			t.Fatalf("the apps received %d requests while the circuit was full", got)
		}
		if hr.err != nil || hr.code != http.StatusOK || hr.app == "" {
			t.Fatalf("the held request after its release: %s", hr)
		}
		// With nothing in flight, requests pass again.
		for i := range 5 {
			if r := tpDo(hc, addr, "/req"); r.err != nil || r.code != http.StatusOK || r.app == "" {
				t.Fatalf("request %d with nothing else in flight: %s", i+1, r)
			}
		}
	})

	t.Run("outlier-ejection", func(t *testing.T) {
		t.Cleanup(resetApps)
		applied := applyTP(t, m, "retries: {attempts: 1}\ncircuit_breaker: {consecutive_errors: 2, base_ejection_time: 30s}\n")
		// The policy no longer limits requests in flight.
		short := &http.Client{Timeout: 3 * time.Second, Transport: hc.Transport}
		waitApplied(t, applied, "two requests in flight at once", func() error {
			held, err := tpHold(hc, addr, gate, apps...)
			if err != nil {
				return err
			}
			r := tpDo(short, addr, "/req")
			if hr := tpReleased(gate, held); hr.err != nil || hr.code != http.StatusOK {
				return fmt.Errorf("the held request: %s", hr)
			}
			if r.err != nil || r.code != http.StatusOK {
				return fmt.Errorf("second request while one is in flight: %s", r)
			}
			return nil
		})
		v1.failAll.Store(http.StatusInternalServerError)
		// At most 20 requests until v1 is ejected; then 20 in a row from v2.
		var answers []string
		lastBad, v1Errors := -1, 0
		for i := 0; i-1-lastBad < 20; i++ { // requests lastBad+1 .. i-1 were answered by v2
			if lastBad >= 20 || i >= 40 {
				t.Fatalf("v1 answers 500 to everything, consecutive_errors 2: want every request after at most 20 answered by v2, got:\n%s", strings.Join(answers, "\n"))
			}
			r := tpDo(hc, addr, "/req")
			answers = append(answers, fmt.Sprintf("%2d: %s", i+1, r))
			switch {
			case r.err == nil && r.code == http.StatusOK && r.app == "v2":
			case r.err == nil && r.code == http.StatusInternalServerError && r.app == "v1":
				lastBad = i
				v1Errors++
			default:
				t.Fatalf("request %d: %s; want 200 from v2 or v1's 500. Answers:\n%s", i+1, r, strings.Join(answers, "\n"))
			}
		}
		t.Logf("v1 was ejected after %d of its 500s reached the client; then 20 requests in a row were answered by v2", v1Errors)
		if v1Errors < 2 {
			t.Fatalf("only %d of v1's 500s reached the client before it stopped getting requests; with consecutive_errors 2 and no retries want 2:\n%s", v1Errors, strings.Join(answers, "\n"))
		}
	})

	t.Run("topology", func(t *testing.T) {
		// Every request above went from client to api: the proxies'
		// heartbeats carry the counts to the leader.
		sent := hits()
		err := testharness.Poll(waitTimeout, func() error {
			out, errOut, err := m.c.RunCLI(t, "topology", "-o", "json")
			if err != nil {
				return fmt.Errorf("meshfed topology: %v: %s", err, errOut)
			}
			var topo struct {
				Edges []struct {
					SourceNamespace, SourceService, DestinationNamespace, DestinationService, DestinationCluster string
					Requests, Errors                                                                             string
				}
			}
			if err := json.Unmarshal([]byte(out), &topo); err != nil {
				return fmt.Errorf("meshfed topology -o json: %v:\n%s", err, out)
			}
			for _, e := range topo.Edges {
				if e.SourceService != "client" || e.DestinationService != "api" {
					return fmt.Errorf("unexpected edge %+v", e)
				}
				n, _ := strconv.ParseInt(e.Requests, 10, 64)
				fails, _ := strconv.ParseInt(e.Errors, 10, 64)
				if e.SourceNamespace != "default" || e.DestinationNamespace != "default" || e.DestinationCluster != "" {
					return fmt.Errorf("edge %+v", e)
				}
				// Requests the apps saw, less retried ones, at least; and
				// some failed (the 500s and 503s above).
				if n < sent/2 || fails == 0 || fails > n {
					return fmt.Errorf("edge client -> api: %d requests, %d errors; the apps received %d", n, fails, sent)
				}
				return nil
			}
			return fmt.Errorf("no edge yet:\n%s", out)
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("TestProxyTrafficPolicy took %s", time.Since(begin).Round(time.Millisecond))
}
