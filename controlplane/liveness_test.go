package controlplane

import (
	"slices"
	"testing"
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// TestProxyLivenessGrace drives the leader's heartbeat memory with a fake
// clock: after a leader change every proxy gets one TTL to report, each
// heartbeat buys another, and only proxy endpoints not already unknown are
// ever returned for marking.
func TestProxyLivenessGrace(t *testing.T) {
	const ttl = 6 * time.Second
	wl := func(name string, proxy bool, h meshfedv1.HealthStatus) *meshfedv1.Workload {
		return &meshfedv1.Workload{Meta: &meshfedv1.Meta{Namespace: "default", Name: name}, Proxy: proxy, Health: h}
	}
	ws := slices.Values([]*meshfedv1.Workload{
		wl("a", true, meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY),
		wl("b", true, meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY),
		wl("c", true, meshfedv1.HealthStatus_HEALTH_STATUS_UNKNOWN),
		wl("static", false, meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY),
	})
	names := func(out []*meshfedv1.Workload) []string {
		var n []string
		for _, w := range out {
			n = append(n, w.GetMeta().GetName())
		}
		return n
	}
	t0 := time.Unix(1000, 0)
	var l proxyLiveness
	l.saw(workloadKey{"default", "a"}, t0.Add(-time.Hour)) // heard by an earlier term
	l.reset(t0)

	if got := names(l.silent(ws, t0.Add(ttl), ttl)); got != nil {
		t.Fatalf("within the grace after a leader change: %v marked", got)
	}
	l.saw(workloadKey{"default", "a"}, t0.Add(ttl-time.Second))
	if got := names(l.silent(ws, t0.Add(ttl+time.Millisecond), ttl)); len(got) != 1 || got[0] != "b" {
		t.Fatalf("after the grace: %v, want only b, which never reported", got)
	}
	if got := names(l.silent(ws, t0.Add(2*ttl-time.Second), ttl)); len(got) != 1 || got[0] != "b" {
		t.Fatalf("a TTL after a's heartbeat: %v, want only b", got)
	}
	if got := names(l.silent(ws, t0.Add(2*ttl), ttl)); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("past a's TTL: %v, want a and b", got)
	}
	// a's heartbeat was forgotten with its TTL; a new one counts again.
	if len(l.seen) != 0 {
		t.Fatalf("expired heartbeats kept: %v", l.seen)
	}
	l.saw(workloadKey{"default", "a"}, t0.Add(2*ttl))
	if got := names(l.silent(ws, t0.Add(2*ttl+time.Second), ttl)); len(got) != 1 || got[0] != "b" {
		t.Fatalf("after a came back: %v, want only b", got)
	}
	l.forget(workloadKey{"default", "a"})
	if got := names(l.silent(ws, t0.Add(2*ttl+time.Second), ttl)); len(got) != 2 {
		t.Fatalf("after a deregistered: %v", got)
	}
}

func TestProxyHeartbeatConfig(t *testing.T) {
	for _, tc := range []struct {
		interval, ttl         time.Duration
		wantInterval, wantTTL time.Duration
		invalid               bool
	}{
		{0, 0, 2 * time.Second, 6 * time.Second, false},
		{time.Second, 0, time.Second, 6 * time.Second, false},
		{5 * time.Second, 0, 5 * time.Second, 15 * time.Second, false},
		{0, 3 * time.Second, time.Second, 3 * time.Second, false},
		{0, 30 * time.Second, 2 * time.Second, 30 * time.Second, false},
		{100 * time.Millisecond, 600 * time.Millisecond, 100 * time.Millisecond, 600 * time.Millisecond, false},
		{time.Second, time.Second, 0, 0, true},
		{-time.Second, 0, 0, 0, true},
	} {
		cfg := Config{NodeID: "s1", Cluster: "c", DataDir: "d", APIAddr: "127.0.0.1:1", RaftAddr: "127.0.0.1:2", HTTPAddr: "127.0.0.1:3",
			ProxyHeartbeatInterval: tc.interval, ProxyHeartbeatTTL: tc.ttl}
		err := cfg.Validate()
		if (err != nil) != tc.invalid {
			t.Errorf("interval %v, ttl %v: Validate = %v", tc.interval, tc.ttl, err)
			continue
		}
		if tc.invalid {
			continue
		}
		if i, l := cfg.proxyHeartbeats(); i != tc.wantInterval || l != tc.wantTTL {
			t.Errorf("interval %v, ttl %v: got %v, %v; want %v, %v", tc.interval, tc.ttl, i, l, tc.wantInterval, tc.wantTTL)
		}
	}
}
