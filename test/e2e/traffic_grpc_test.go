package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshfed/meshfed/internal/testharness"
)

// grpcTPHoldService is the health service name whose Check calls the
// gRPC test apps hold until their gate is released.
const grpcTPHoldService = "hold"

// grpcTPApp is a gRPC destination app (the gRPC health service) whose
// behaviour the test switches. Every Check answer carries the trailer
// x-app: <name>, so that an answer of an app can be told from one a proxy
// made up. It is a trailer, not a header: grpc-go answers an error returned
// by a unary handler trailers-only only when no header metadata was set,
// and the proxies can see a gRPC status only in a trailers-only answer.
type grpcTPApp struct {
	name string
	port int
	gate *tpGate
	// calls counts the Check calls received; held the held ones among
	// them.
	calls atomic.Int64
	held  atomic.Int64
	// failNext answers the next failNext calls (holds exempt) with
	// UNAVAILABLE, returned by the handler before any message: a
	// trailers-only response.
	failNext atomic.Int64
}

func startGRPCTPApp(t *testing.T, name string, gate *tpGate) *grpcTPApp {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(testharness.FreePort(t))))
	if err != nil {
		t.Fatal(err)
	}
	a := &grpcTPApp{name: name, port: ln.Addr().(*net.TCPAddr).Port, gate: gate}
	hs := health.NewServer()
	hs.SetServingStatus(grpcTPHoldService, healthpb.HealthCheckResponse_SERVING)
	s := grpc.NewServer(grpc.UnaryInterceptor(a.intercept))
	healthpb.RegisterHealthServer(s, hs)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() {
		gate.close()
		s.Stop()
	})
	return a
}

func (a *grpcTPApp) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if info.FullMethod != healthpb.Health_Check_FullMethodName {
		return h(ctx, req)
	}
	a.calls.Add(1)
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-app", a.name))
	if r, ok := req.(*healthpb.HealthCheckRequest); ok && r.GetService() == grpcTPHoldService {
		a.held.Add(1)
		select {
		case <-a.gate.wait():
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
		}
		return h(ctx, req)
	}
	if a.takeFailure() {
		return nil, status.Errorf(codes.Unavailable, "%s fails this call", a.name)
	}
	return h(ctx, req)
}

// takeFailure uses up one of the failNext failures, if any is left.
func (a *grpcTPApp) takeFailure() bool { return takeOne(&a.failNext) }

// grpcTPResp is one Check call's outcome through the client proxy.
type grpcTPResp struct {
	code       codes.Code
	msg        string
	serving    bool   // the answer said SERVING
	app        string // x-app: which app answered ("" when a proxy did)
	fault      string // x-meshfed-fault
	overloaded string // x-meshfed-overloaded
	elapsed    time.Duration
}

func (r grpcTPResp) String() string {
	return fmt.Sprintf("%s %q app=%q fault=%q overloaded=%q serving=%v in %s", r.code, r.msg, r.app, r.fault, r.overloaded,
		r.serving, r.elapsed.Round(time.Millisecond))
}

func (r grpcTPResp) ok() bool { return r.code == codes.OK && r.serving && r.app != "" }

// grpcTPCall calls Health.Check for service through conn. Response
// metadata is read from the headers and the trailers both: in a
// trailers-only response (a proxy's own answers) grpc-go reports all of it
// as trailers.
func grpcTPCall(conn *grpc.ClientConn, service string, timeout time.Duration) grpcTPResp {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var hdr, trl metadata.MD
	start := time.Now()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service}, grpc.Header(&hdr), grpc.Trailer(&trl))
	r := grpcTPResp{elapsed: time.Since(start)}
	st := status.Convert(err)
	r.code, r.msg = st.Code(), st.Message()
	r.serving = err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
	md := metadata.Join(hdr, trl)
	get := func(k string) string { return strings.Join(md.Get(k), ",") }
	r.app, r.fault, r.overloaded = get("x-app"), get("x-meshfed-fault"), get("x-meshfed-overloaded")
	return r
}

// grpcTPHold starts a held Check call and returns once an app holds it;
// the outcome arrives on the channel after gate.release. It fails when the
// call comes back without being held, or is not held within 5 s.
func grpcTPHold(conn *grpc.ClientConn, gate *tpGate, apps ...*grpcTPApp) (<-chan grpcTPResp, error) {
	return holdOne(gate, func() (n int64) {
		for _, a := range apps {
			n += a.held.Load()
		}
		return n
	}, func() grpcTPResp { return grpcTPCall(conn, grpcTPHoldService, 20*time.Second) }, "the held call")
}

// grpcTPReleased releases the gate and returns the held call's outcome.
func grpcTPReleased(gate *tpGate, ch <-chan grpcTPResp) grpcTPResp {
	return released(gate, ch, grpcTPResp{code: codes.Unknown, msg: "the held call did not come back within 15s of its release"})
}

// TestProxyTrafficPolicyGRPC applies traffic policies to a gRPC service
// "api" with two endpoints (proxies started with --version v1 and v2, each
// in front of its own gRPC server) and calls it through a client proxy's
// upstream listener with h2c: fault abort (with the gRPC status gRPC maps
// the abort status to), retries on UNAVAILABLE (bounded by attempts),
// weighted splits, the circuit breaker's max_requests and the rate limit
// (by the destination's proxies). Each policy replaces the one before;
// each sub-test first waits (at most 5 s) until a behaviour the previous
// policy cannot show appears, so the sub-tests run in order.
func TestProxyTrafficPolicyGRPC(t *testing.T) {
	skipShort(t)
	begin := time.Now()
	m := newMeshFixture(t, "east")
	gate := &tpGate{}
	v1 := startGRPCTPApp(t, "v1", gate)
	v2 := startGRPCTPApp(t, "v2", gate)
	apps := []*grpcTPApp{v1, v2}
	cl := startTPProxies(t, m, "grpc", v1.port, v2.port)
	// Registered after the proxies', so it runs first: no call is still
	// held when they drain.
	t.Cleanup(gate.close)
	conn, err := grpc.NewClient(cl.Upstream("api"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	const callT = 5 * time.Second
	call := func() grpcTPResp { return grpcTPCall(conn, "", callT) }
	calls := func() (n int64) {
		for _, a := range apps {
			n += a.calls.Load()
		}
		return n
	}
	resetApps := func() {
		for _, a := range apps {
			a.failNext.Store(0)
		}
	}

	// Without a traffic policy both endpoints serve (round robin).
	seen := map[string]bool{}
	if err := testharness.Poll(waitTimeout, func() error {
		r := call()
		if r.ok() {
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

	t.Run("fault-abort", func(t *testing.T) {
		for _, c := range []struct {
			status int
			want   codes.Code
		}{{503, codes.Unavailable}, {403, codes.PermissionDenied}} {
			applied := applyTP(t, m, fmt.Sprintf("fault: {abort_status: %d, abort_percent: 100}\n", c.status))
			waitApplied(t, applied, fmt.Sprintf("an abort with %s", c.want), func() error {
				if r := call(); r.code != c.want || r.fault != "abort" {
					return fmt.Errorf("got %s", r)
				}
				return nil
			})
			before := calls()
			for i := range 10 {
				r := call()
				if r.code != c.want || r.fault != "abort" || r.app != "" {
					t.Fatalf("call %d with abort_status %d at 100%%: %s; want %s from the client proxy with x-meshfed-fault: abort", i+1, c.status, r, c.want)
				}
			}
			if n := calls() - before; n != 0 {
				t.Fatalf("the apps received %d of the 10 calls aborted with %d", n, c.status)
			}
		}
	})

	t.Run("fault-removed", func(t *testing.T) {
		applied := applyTP(t, m, "")
		waitApplied(t, applied, "a call answered by an app", func() error {
			if r := call(); !r.ok() {
				return fmt.Errorf("got %s", r)
			}
			return nil
		})
		for i := range 5 {
			if r := call(); !r.ok() || r.fault != "" {
				t.Fatalf("call %d without a fault: %s", i+1, r)
			}
		}
	})

	t.Run("retries-unavailable-3", func(t *testing.T) {
		t.Cleanup(resetApps)
		applied := applyTP(t, m, "retries: {attempts: 3, retry_on: [unavailable]}\n")
		// Both apps answer their next call with UNAVAILABLE: only retries
		// (on the other endpoint, then on either) get an answer.
		waitApplied(t, applied, "a success despite one UNAVAILABLE from each app", func() error {
			v1.failNext.Store(1)
			v2.failNext.Store(1)
			r := call()
			resetApps()
			if !r.ok() {
				return fmt.Errorf("got %s", r)
			}
			return nil
		})
		for i := range 5 {
			v1.failNext.Store(1)
			v2.failNext.Store(1)
			before := calls()
			r := call()
			left1, left2 := v1.failNext.Load(), v2.failNext.Load()
			resetApps()
			if !r.ok() {
				t.Fatalf("round %d: both apps fail their next call once with UNAVAILABLE, attempts 3 on unavailable: %s; want SERVING from an app", i+1, r)
			}
			if left1 != 0 || left2 != 0 {
				t.Fatalf("round %d: the proxy retried on the endpoint that had failed rather than on the other one (failures left: v1 %d, v2 %d)", i+1, left1, left2)
			}
			if n := calls() - before; n != 3 {
				t.Fatalf("round %d: the apps received %d calls; want 3 (two UNAVAILABLE and the success)", i+1, n)
			}
			if r.elapsed > time.Second {
				t.Fatalf("round %d: the call with two retries took %s; want under 1s", i+1, r.elapsed)
			}
		}
	})

	t.Run("retries-unavailable-1", func(t *testing.T) {
		t.Cleanup(resetApps)
		applied := applyTP(t, m, "retries: {attempts: 1, retry_on: [unavailable]}\n")
		waitApplied(t, applied, "an app's UNAVAILABLE reaching the client", func() error {
			v1.failNext.Store(1)
			v2.failNext.Store(1)
			r := call()
			resetApps()
			if r.code != codes.Unavailable || r.app == "" {
				return fmt.Errorf("got %s", r)
			}
			return nil
		})
		for i := range 3 {
			v1.failNext.Store(1)
			v2.failNext.Store(1)
			before := calls()
			r := call()
			resetApps()
			if r.code != codes.Unavailable || r.app == "" || !strings.Contains(r.msg, "fails this call") {
				t.Fatalf("round %d: both apps fail their next call, attempts 1: %s; want the app's UNAVAILABLE", i+1, r)
			}
			if n := calls() - before; n != 1 {
				t.Fatalf("round %d: the apps received %d calls; want 1 (no retry)", i+1, n)
			}
		}
	})

	t.Run("splits-v2", func(t *testing.T) {
		applied := applyTP(t, m, "splits: [{version: v2, weight: 100}]\n")
		// Round robin cannot answer 20 times in a row from v2.
		waitApplied(t, applied, "20 answers in a row from v2", func() error {
			for i := range 20 {
				if r := call(); !r.ok() || r.app != "v2" {
					return fmt.Errorf("answer %d: %s", i+1, r)
				}
			}
			return nil
		})
		before1, before2 := v1.calls.Load(), v2.calls.Load()
		for i := range 30 {
			if r := call(); !r.ok() || r.app != "v2" {
				t.Fatalf("with v2 at weight 100, call %d: %s", i+1, r)
			}
		}
		if n := v1.calls.Load() - before1; n != 0 {
			t.Fatalf("v1 (not in the splits) received %d calls", n)
		}
		if n := v2.calls.Load() - before2; n != 30 {
			t.Fatalf("v2 received %d of the 30 calls", n)
		}
	})

	t.Run("circuit-breaker", func(t *testing.T) {
		applied := applyTP(t, m, "circuit_breaker: {max_requests: 1}\n")
		const shortT = 3 * time.Second
		waitApplied(t, applied, "UNAVAILABLE overloaded while a call is in flight", func() error {
			held, err := grpcTPHold(conn, gate, apps...)
			if err != nil {
				return err
			}
			r := grpcTPCall(conn, "", shortT)
			if hr := grpcTPReleased(gate, held); !hr.ok() {
				return fmt.Errorf("the held call: %s", hr)
			}
			if r.code != codes.Unavailable || r.overloaded != "true" {
				return fmt.Errorf("second call while one is in flight: %s", r)
			}
			return nil
		})
		held, err := grpcTPHold(conn, gate, apps...)
		if err != nil {
			t.Fatal(err)
		}
		before := calls()
		r := grpcTPCall(conn, "", shortT)
		got := calls() - before
		hr := grpcTPReleased(gate, held)
		if r.code != codes.Unavailable || r.overloaded != "true" || r.app != "" {
			t.Fatalf("second call while one is in flight, max_requests 1: %s; want UNAVAILABLE with x-meshfed-overloaded: true from the client proxy", r)
		}
		if r.elapsed > time.Second {
			t.Fatalf("the overloaded answer took %s; want it at once (under 1s)", r.elapsed)
		}
		if got != 0 {
			t.Fatalf("the apps received %d calls while the circuit was full", got)
		}
		if !hr.ok() {
			t.Fatalf("the held call after its release: %s", hr)
		}
		// With nothing in flight, calls pass again.
		for i := range 5 {
			if r := call(); !r.ok() {
				t.Fatalf("call %d with nothing else in flight: %s", i+1, r)
			}
		}
	})

	t.Run("rate-limit", func(t *testing.T) {
		applied := applyTP(t, m, "rate_limit: {requests_per_second: 2, burst: 2}\n")
		var byCode map[codes.Code]int
		var limited, ok, other int
		var appGot int64
		var others []string
		waitApplied(t, applied, "RESOURCE_EXHAUSTED in a burst of 20", func() error {
			byCode = map[codes.Code]int{}
			limited, ok, other, others = 0, 0, 0, nil
			before := calls()
			var last grpcTPResp
			for range 20 {
				r := call()
				byCode[r.code]++
				switch {
				case r.code == codes.ResourceExhausted && r.app == "":
					limited++
				case r.ok():
					ok++
				default:
					other++
					others = append(others, r.String())
				}
				last = r
			}
			appGot = calls() - before
			if byCode[codes.ResourceExhausted] == 0 {
				return fmt.Errorf("codes %v; last %s", byCode, last)
			}
			return nil
		})
		t.Logf("burst of 20: codes %v, the apps received %d", byCode, appGot)
		if ok == 0 {
			t.Errorf("no call of the burst was answered by an app (codes %v); the burst of 2 per endpoint should pass", byCode)
		}
		if limited != byCode[codes.ResourceExhausted] {
			t.Errorf("%d of the %d RESOURCE_EXHAUSTED answers came from an app; want all from the destination's proxies", byCode[codes.ResourceExhausted]-limited, byCode[codes.ResourceExhausted])
		}
		if other != 0 {
			t.Errorf("codes %v; want only answers from the apps and RESOURCE_EXHAUSTED from the proxies; others:\n%s", byCode, strings.Join(others, "\n"))
		}
		if appGot != int64(ok) {
			t.Errorf("the apps received %d calls of the burst and %d succeeded; the limited ones must not reach an app", appGot, ok)
		}
		// The buckets refill at 2 per second.
		if err := testharness.Poll(tpApplyTimeout, func() error {
			if r := call(); !r.ok() {
				return fmt.Errorf("got %s", r)
			}
			return nil
		}); err != nil {
			t.Fatalf("no call passed again after the burst: %v", err)
		}
	})
	t.Logf("TestProxyTrafficPolicyGRPC took %s", time.Since(begin).Round(time.Millisecond))
}
