package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/testharness"
)

// TestPausedFollowerIsolated: a follower frozen with SIGSTOP answers
// nothing (a write and a consistent read sent to it both fail within their
// 3s deadline) while the other two servers keep accepting writes and
// consistent reads; continued with SIGCONT it catches up and serves the
// majority's writes.
func TestPausedFollowerIsolated(t *testing.T) {
	skipShort(t)
	bin := testharness.Binary(t, "meshfed")
	c := testharness.StartCluster(t, 3, testharness.ClusterOptions{Name: "east"})
	leader := c.Leader()
	followers := c.Followers()
	paused, other := followers[0], followers[1]

	mustCLI(t, c, leader, "services", "register", "before-pause", "--port", "80", "--protocol", "http")
	if err := testharness.Poll(waitTimeout, func() error {
		r := runCLI(bin, c, paused, callTimeout, "services", "get", "before-pause")
		if r.Err != nil {
			return fmt.Errorf("%s", r)
		}
		return nil
	}); err != nil {
		t.Fatalf("%s never applied the first write: %v", paused.NodeID, err)
	}

	if err := paused.Pause(); err != nil {
		t.Fatal(err)
	}
	// Never leave a stopped process behind, whatever happens below. (The
	// harness's Stop also sends SIGCONT; this makes the intent explicit.)
	t.Cleanup(func() {
		if paused.Paused() && paused.Running() {
			if err := paused.Resume(); err != nil {
				t.Errorf("resuming %s: %v", paused.NodeID, err)
			}
		}
	})

	// Four calls to the paused follower at once, each with a 3s deadline:
	// a write and a consistent read through the CLI (killed at the
	// deadline) and through the API client (a fresh connection each).
	const deadline = 3 * time.Second
	type outcome struct {
		what string
		err  error
		took time.Duration
	}
	var (
		mu       sync.Mutex
		outcomes []outcome
		wg       sync.WaitGroup
	)
	call := func(what string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			err := fn()
			mu.Lock()
			defer mu.Unlock()
			outcomes = append(outcomes, outcome{what, err, time.Since(start)})
		}()
	}
	call("CLI services register", func() error {
		return runCLI(bin, c, paused, deadline, "services", "register", "during-pause", "--port", "81", "--protocol", "http").Err
	})
	call("CLI services get --consistent", func() error {
		return runCLI(bin, c, paused, deadline, "services", "get", "before-pause", "--consistent").Err
	})
	call("API CreateService", func() error {
		return apiCall(c, paused, c.AdminToken, deadline, func(ctx context.Context, cl *client.Client) error {
			_, err := cl.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: &meshfedv1.Service{
				Meta: &meshfedv1.Meta{Name: "during-pause-api", Namespace: "default"}, Port: 82, Protocol: meshfedv1.Protocol_PROTOCOL_TCP}})
			return err
		})
	})
	call("API GetService consistent", func() error {
		return apiCall(c, paused, c.AdminToken, deadline, func(ctx context.Context, cl *client.Client) error {
			_, err := cl.Catalog.GetService(ctx, &meshfedv1.GetRequest{Namespace: "default", Name: "before-pause", Read: &meshfedv1.ReadOptions{Consistent: true}})
			return err
		})
	})

	// Meanwhile the majority keeps working: writes through the leader and
	// through the other follower (forwarded), consistent reads on both.
	for i, s := range []*testharness.Server{leader, other, leader, other} {
		name := fmt.Sprintf("majority-%d", i)
		var svc meshfedv1.Service
		unmarshalJSON(t, mustCLI(t, c, s, "services", "register", name, "--port", "8080", "--protocol", "grpc", "-o", "json"), &svc)
		for _, r := range []*testharness.Server{leader, other} {
			var got meshfedv1.Service
			unmarshalJSON(t, mustCLI(t, c, r, "services", "get", name, "--consistent", "-o", "json"), &got)
			if got.GetMeta().GetVersion() != svc.GetMeta().GetVersion() {
				t.Fatalf("consistent read of %s via %s: version %d, want %d", name, r.NodeID, got.GetMeta().GetVersion(), svc.GetMeta().GetVersion())
			}
		}
	}
	wg.Wait()
	// Each call failed because its deadline passed with no answer, not
	// with a quick refusal: the CLI was killed at the deadline, the API
	// calls report DEADLINE_EXCEEDED.
	for _, o := range outcomes {
		switch {
		case o.err == nil:
			t.Errorf("%s on the paused follower succeeded", o.what)
		case o.took < deadline-100*time.Millisecond:
			t.Errorf("%s on the paused follower failed after %s, before its %s deadline: %v", o.what, o.took, deadline, o.err)
		case strings.HasPrefix(o.what, "API") && statusCode(o.err) != codes.DeadlineExceeded:
			t.Errorf("%s on the paused follower: %v, want DeadlineExceeded", o.what, o.err)
		case strings.HasPrefix(o.what, "CLI") && !strings.Contains(o.err.Error(), "killed after"):
			t.Errorf("%s on the paused follower: %v, want it still waiting at the deadline", o.what, o.err)
		default:
			t.Logf("%s on the paused follower: no answer after %s: %v", o.what, o.took.Round(time.Millisecond), o.err)
		}
	}
	if !paused.Paused() || !paused.Running() {
		t.Fatalf("%s is no longer a paused process", paused.NodeID)
	}

	if err := paused.Resume(); err != nil {
		t.Fatal(err)
	}
	// The follower catches up: the majority's writes are visible through it
	// with a consistent read and, which shows its own state, a local one.
	var last meshfedv1.Service
	unmarshalJSON(t, mustCLI(t, c, leader, "services", "get", "majority-3", "--consistent", "-o", "json"), &last)
	for _, consistent := range []bool{true, false} {
		args := []string{"services", "get", "majority-3", "-o", "json"}
		if consistent {
			args = append(args, "--consistent")
		}
		err := testharness.Poll(waitTimeout, func() error {
			r := runCLI(bin, c, paused, 5*time.Second, args...)
			if r.Err != nil {
				return fmt.Errorf("%s", r)
			}
			var got meshfedv1.Service
			if err := protojson.Unmarshal([]byte(r.Stdout), &got); err != nil {
				return err
			}
			if got.GetMeta().GetVersion() != last.GetMeta().GetVersion() {
				return fmt.Errorf("version %d, want %d", got.GetMeta().GetVersion(), last.GetMeta().GetVersion())
			}
			return nil
		})
		if err != nil {
			t.Fatalf("resumed %s, consistent=%v read of majority-3: %v", paused.NodeID, consistent, err)
		}
	}
	// Its whole local state equals the leader's, and the cluster is whole.
	err := testharness.Poll(waitTimeout, func() error {
		var want, got []*meshfedv1.Service
		if err := apiCall(c, leader, c.AdminToken, 5*time.Second, func(ctx context.Context, cl *client.Client) (err error) {
			want, err = listServices(ctx, cl, true)
			return err
		}); err != nil {
			return err
		}
		if err := apiCall(c, paused, c.AdminToken, 5*time.Second, func(ctx context.Context, cl *client.Client) (err error) {
			got, err = listServices(ctx, cl, false)
			return err
		}); err != nil {
			return err
		}
		if d := diffVersions(versions(want), versions(got)); d != "" {
			return fmt.Errorf("%s differs from the leader: %s", paused.NodeID, d)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A connection that never completed its TLS handshake carried no
	// request: the writes sent to the paused follower were not applied.
	for _, name := range []string{"during-pause", "during-pause-api"} {
		r := runCLI(bin, c, leader, callTimeout, "services", "get", name, "--consistent")
		if testharness.ExitCode(r.Err) != 1 || !strings.Contains(r.Stderr, "NOT_FOUND") {
			t.Errorf("get %s after the pause: %s, want NOT_FOUND", name, r)
		}
	}
	c.WaitForMembers(3)
}
