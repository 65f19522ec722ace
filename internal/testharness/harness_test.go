package testharness

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func TestFreePortsAreDistinct(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		p := FreePort(t)
		if seen[p] || p <= 0 {
			t.Fatalf("port %d handed out twice (or invalid)", p)
		}
		seen[p] = true
	}
	if a := FreeAddr(t); !strings.HasPrefix(a, "127.0.0.1:") {
		t.Errorf("FreeAddr = %q", a)
	}
}

func TestPoll(t *testing.T) {
	n := 0
	if err := Poll(5*time.Second, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || n != 3 {
		t.Errorf("Poll = %v after %d calls", err, n)
	}
	errNever := errors.New("never")
	start := time.Now()
	err := Poll(200*time.Millisecond, func() error { return errNever })
	if !errors.Is(err, errNever) || time.Since(start) < 200*time.Millisecond {
		t.Errorf("Poll = %v after %s", err, time.Since(start))
	}
}

func TestModuleRoot(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "meshfed")); err != nil {
		t.Errorf("module root %s has no cmd/meshfed: %v", root, err)
	}
}

// TestThreeServerCluster starts three real servers, checks the membership
// through the CLI, then kills the leader, pauses a follower and restarts
// servers, writing through the CLI after each step.
func TestThreeServerCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real servers")
	}
	c := StartCluster(t, 3, ClusterOptions{Name: "east"})

	stdout, stderr, err := c.RunCLI(t, "members", "-o", "json")
	if err != nil {
		t.Fatalf("members: %v: %s", err, stderr)
	}
	var members meshfedv1.ListMembersResponse
	if err := protojson.Unmarshal([]byte(stdout), &members); err != nil {
		t.Fatal(err)
	}
	voters, leaders := 0, 0
	for _, m := range members.GetMembers() {
		if m.GetVoter() {
			voters++
		}
		if m.GetLeader() {
			leaders++
		}
	}
	if voters != 3 || leaders != 1 {
		t.Fatalf("members %v", members.GetMembers())
	}

	register := func(t *testing.T, via *Server, name string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := c.CLI(ctx, "--addr", via.APIAddr, "services", "register", name, "--port", "80", "--protocol", "http")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("register %s via %s: %v: %s", name, via.NodeID, err, out)
		}
	}

	leader := c.Leader()
	followers := c.Followers()
	if len(followers) != 2 {
		t.Fatalf("followers %v", followers)
	}
	// A write to a follower is forwarded to the leader.
	register(t, followers[0], "via-follower")

	t.Run("leader killed", func(t *testing.T) {
		if err := leader.Kill(); err != nil {
			t.Fatal(err)
		}
		next := c.Leader()
		if next == leader {
			t.Fatal("the killed server is still the leader")
		}
		register(t, next, "after-kill")
		if err := leader.Start(); err != nil {
			t.Fatal(err)
		}
		if err := leader.WaitReady(DefaultTimeout); err != nil {
			t.Fatal(err)
		}
		c.WaitForMembers(3)
	})

	t.Run("follower paused and resumed", func(t *testing.T) {
		f := c.Followers()[0]
		if err := f.Pause(); err != nil {
			t.Fatal(err)
		}
		register(t, c.Leader(), "while-paused")
		if err := f.Resume(); err != nil {
			t.Fatal(err)
		}
		c.WaitForMembers(3)
	})

	t.Run("graceful restart", func(t *testing.T) {
		s := c.Followers()[0]
		if err := s.Restart(); err != nil {
			t.Fatal(err)
		}
		if err := s.WaitReady(DefaultTimeout); err != nil {
			t.Fatal(err)
		}
		c.WaitForMembers(3)
		// Everything written so far is readable from the restarted server.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cl := c.Client(t, s)
		err := Poll(30*time.Second, func() error {
			resp, err := cl.Catalog.ListServices(ctx, &meshfedv1.ListRequest{})
			if err != nil {
				return err
			}
			if n := len(resp.GetServices()); n != 3 {
				return errors.New("not all services replicated yet")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
