package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/testharness"
)

// ackedWrite is a write the cluster acknowledged: the CLI exited 0 and
// printed the stored service.
type ackedWrite struct {
	name      string
	version   uint64
	via       string
	afterKill bool // the write was started after the leader was killed
}

// writer registers services one after the other through every server in
// turn, retrying each on another server until it is acknowledged. It stops
// by itself after maxWrites writes, after budget, or once it has collected
// wantAfterKill acknowledgements of writes started after killed was set.
type writer struct {
	bin     string
	c       *testharness.Cluster
	servers []*testharness.Server

	maxWrites     int
	budget        time.Duration
	wantAfterKill int

	killed atomic.Bool
	acks   atomic.Int64

	mu        sync.Mutex
	acked     []ackedWrite
	unacked   []string // given up on: their outcome is unknown
	failures  int      // failed attempts (retried)
	fatal     []string // failures no election explains
	lastError string
}

func (w *writer) run(ctx context.Context) {
	deadline := time.Now().Add(w.budget)
	afterKill := 0
	for i := 0; i < w.maxWrites && time.Now().Before(deadline) && ctx.Err() == nil; i++ {
		name := fmt.Sprintf("w-%03d", i)
		startedAfterKill := w.killed.Load()
		acked := false
		// One write is retried for up to 20s: longer than an election and
		// the forwarding wait of a follower.
		for attempt, until := 0, time.Now().Add(20*time.Second); time.Now().Before(until) && ctx.Err() == nil; attempt++ {
			s := w.servers[(i+attempt)%len(w.servers)]
			r := runCLI(w.bin, w.c, s, 4*time.Second,
				"services", "register", name, "--namespace", "default", "--port", "8080", "--protocol", "http", "-o", "json")
			if r.Err == nil {
				var svc meshfedv1.Service
				if err := protojson.Unmarshal([]byte(r.Stdout), &svc); err != nil || svc.GetMeta().GetVersion() == 0 {
					w.addFatal(fmt.Sprintf("%s via %s: exit 0 but output %q (%v)", name, s.NodeID, r.Stdout, err))
					break
				}
				w.mu.Lock()
				w.acked = append(w.acked, ackedWrite{name: name, version: svc.GetMeta().GetVersion(), via: s.NodeID, afterKill: startedAfterKill})
				w.mu.Unlock()
				w.acks.Add(1)
				acked = true
				break
			}
			w.mu.Lock()
			w.failures++
			w.lastError = fmt.Sprintf("%s via %s: %s", name, s.NodeID, r)
			w.mu.Unlock()
			// Refusals an election does not explain are test failures.
			for _, code := range []string{"INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED", "FAILED_PRECONDITION", "INTERNAL"} {
				if strings.Contains(r.Stderr, code) {
					w.addFatal(fmt.Sprintf("%s via %s: %s", name, s.NodeID, r))
				}
			}
		}
		if !acked {
			w.mu.Lock()
			w.unacked = append(w.unacked, name)
			w.mu.Unlock()
			continue
		}
		if startedAfterKill {
			afterKill++
			if afterKill >= w.wantAfterKill {
				return
			}
		}
	}
}

func (w *writer) addFatal(msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fatal = append(w.fatal, msg)
}

// TestProcessClusterFailover: a write sent to a follower is forwarded and
// applied; a writer keeps writing through all three servers while the
// leader is SIGKILLed; a new leader takes over, no acknowledged write is
// lost, and the killed server, restarted on its data dir, catches up.
func TestProcessClusterFailover(t *testing.T) {
	skipShort(t)
	bin := testharness.Binary(t, "meshfed")
	c := testharness.StartCluster(t, 3, testharness.ClusterOptions{Name: "east"})
	leader := c.Leader()
	followers := c.Followers()
	if len(followers) != 2 {
		t.Fatalf("want 2 followers, got %d", len(followers))
	}

	// A write sent to a follower (MESHFED_ADDR is the follower's) is
	// forwarded to the leader and applied.
	var via meshfedv1.Service
	unmarshalJSON(t, mustCLI(t, c, followers[0], "services", "register", "via-follower", "--port", "80", "--protocol", "http", "-o", "json"), &via)
	if via.GetMeta().GetVersion() == 0 {
		t.Fatalf("register via follower returned %v", &via)
	}
	var got meshfedv1.Service
	unmarshalJSON(t, mustCLI(t, c, leader, "services", "get", "via-follower", "--consistent", "-o", "json"), &got)
	if got.GetMeta().GetVersion() != via.GetMeta().GetVersion() || got.GetPort() != 80 {
		t.Fatalf("consistent get via leader %s: %v, want version %d port 80", leader.NodeID, &got, via.GetMeta().GetVersion())
	}
	for _, s := range c.Servers {
		err := testharness.Poll(waitTimeout, func() error {
			r := runCLI(bin, c, s, callTimeout, "services", "get", "via-follower", "-o", "json")
			if r.Err != nil {
				return fmt.Errorf("%s", r)
			}
			var local meshfedv1.Service
			if err := protojson.Unmarshal([]byte(r.Stdout), &local); err != nil {
				return err
			}
			if local.GetMeta().GetVersion() != via.GetMeta().GetVersion() {
				return fmt.Errorf("version %d, want %d", local.GetMeta().GetVersion(), via.GetMeta().GetVersion())
			}
			return nil
		})
		if err != nil {
			t.Fatalf("local read of via-follower on %s: %v", s.NodeID, err)
		}
	}

	// The writer runs through every server, the one to be killed included.
	w := &writer{bin: bin, c: c, servers: append([]*testharness.Server(nil), c.Servers...),
		maxWrites: 200, budget: 45 * time.Second, wantAfterKill: 15}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx) }()
	stopWriter := func() { cancel(); <-done }
	t.Cleanup(stopWriter)

	if err := testharness.Poll(waitTimeout, func() error {
		if n := w.acks.Load(); n < 10 {
			return fmt.Errorf("only %d writes acknowledged before the kill", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	killStart := time.Now()
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	w.killed.Store(true)
	t.Logf("killed leader %s after %d acknowledged writes", leader.NodeID, w.acks.Load())

	var newLeader *testharness.Server
	if err := testharness.Poll(waitTimeout, func() error {
		newLeader = c.Leader() // asks running servers only
		if newLeader == leader {
			return fmt.Errorf("the killed server %s still leads", leader.NodeID)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("new leader %s after %s", newLeader.NodeID, time.Since(killStart).Round(time.Millisecond))

	select {
	case <-done:
	case <-time.After(90 * time.Second): // the writer's own budget is 45s
		t.Fatal("the writer did not stop by itself")
	}
	w.mu.Lock()
	acked, unacked, failures, fatal, lastErr := w.acked, w.unacked, w.failures, w.fatal, w.lastError
	w.mu.Unlock()
	t.Logf("writer: %d acknowledged, %d given up, %d failed attempts (last: %s)", len(acked), len(unacked), failures, lastErr)
	for _, f := range fatal {
		t.Errorf("write refused: %s", f)
	}
	afterKill := 0
	for _, a := range acked {
		if a.afterKill {
			afterKill++
		}
	}
	if afterKill < w.wantAfterKill {
		t.Fatalf("only %d writes started after the kill were acknowledged, want %d; given up: %v; last error: %s",
			afterKill, w.wantAfterKill, unacked, lastErr)
	}
	// The writer writes one service at a time: a write starts only after
	// the previous one was acknowledged, so its Raft index is higher.
	for i := 1; i < len(acked); i++ {
		if acked[i].version <= acked[i-1].version {
			t.Errorf("acknowledged %s (via %s) at version %d, not above the earlier %s at %d",
				acked[i].name, acked[i].via, acked[i].version, acked[i-1].name, acked[i-1].version)
		}
	}

	// Every acknowledged write is there with its version or a later one (a
	// retried write may have been applied twice).
	nl := c.Client(t, newLeader)
	lctx, lcancel := context.WithTimeout(context.Background(), callTimeout)
	defer lcancel()
	leaderList, err := listServices(lctx, nl, true)
	if err != nil {
		t.Fatalf("consistent list via new leader %s: %v", newLeader.NodeID, err)
	}
	have := versions(leaderList)
	for _, a := range acked {
		v, ok := have["default/"+a.name]
		switch {
		case !ok:
			t.Errorf("acknowledged write %s (version %d via %s) is lost", a.name, a.version, a.via)
		case v < a.version:
			t.Errorf("acknowledged write %s: version %d, older than the acknowledged %d", a.name, v, a.version)
		}
	}
	if have["default/via-follower"] != via.GetMeta().GetVersion() {
		t.Errorf("via-follower at version %d after failover, want %d", have["default/via-follower"], via.GetMeta().GetVersion())
	}
	if t.Failed() {
		t.FailNow()
	}

	// The killed server restarts with the same flags and data dir and
	// catches up: with existing state, --bootstrap is ignored, and a
	// --join-token (spent: the harness makes one-use tokens) is not needed.
	t.Logf("restarting %s with its original arguments: %s", leader.NodeID, strings.Join(leader.Args, " "))
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	if err := leader.WaitReady(waitTimeout); err != nil {
		t.Fatalf("restarted %s: %v", leader.NodeID, err)
	}
	want := versions(leaderList)
	err = testharness.Poll(waitTimeout, func() error {
		// The leader's list again: nothing writes any more, but compare
		// against the current state rather than assume it.
		var cur, local []*meshfedv1.Service
		err := apiCall(c, newLeader, c.AdminToken, 5*time.Second, func(ctx context.Context, cl *client.Client) error {
			var err error
			cur, err = listServices(ctx, cl, true)
			return err
		})
		if err != nil {
			return fmt.Errorf("consistent list via %s: %w", newLeader.NodeID, err)
		}
		if d := diffVersions(want, versions(cur)); d != "" {
			return fmt.Errorf("the leader's state changed after the writer stopped: %s", d)
		}
		err = apiCall(c, leader, c.AdminToken, 5*time.Second, func(ctx context.Context, cl *client.Client) error {
			var err error
			local, err = listServices(ctx, cl, false)
			return err
		})
		if err != nil {
			return fmt.Errorf("local list on %s: %w", leader.NodeID, err)
		}
		if d := diffVersions(want, versions(local)); d != "" {
			return fmt.Errorf("%s differs from the leader: %s", leader.NodeID, d)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("restarted server did not catch up: %v", err)
	}
	c.WaitForMembers(3)
}
