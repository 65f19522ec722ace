package testharness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

// ClusterOptions tune StartCluster.
type ClusterOptions struct {
	// Name is the cluster name (default "east").
	Name string
	// TrustDomain defaults to "<name>.mesh".
	TrustDomain string
	// Dev also passes --dev to the bootstrap server; the explicit flags the
	// harness gives still win over the dev defaults.
	Dev bool
	// LogLevel of every server (default "debug").
	LogLevel string
	// ExtraArgs are appended to every server's arguments.
	ExtraArgs []string
	// Env is added to every server's environment.
	Env []string
	// Timeout bounds each wait (default DefaultTimeout).
	Timeout time.Duration
}

// Cluster is a set of server processes forming one meshfed cluster.
type Cluster struct {
	Name    string
	Servers []*Server
	// AdminToken is the bootstrap admin token; CAFile the cluster's bundle
	// (the bootstrap server's ca.pem).
	AdminToken string
	CAFile     string

	t    testing.TB
	opts ClusterOptions
}

// StartCluster starts an n-server cluster: s1 bootstraps; once it is ready
// the harness reads its admin.token and ca.pem, and every further server
// joins s1 with its own token from "meshfed server join-token". It returns
// when the cluster reports n voters and a leader. Everything is stopped when
// the test ends.
func StartCluster(t testing.TB, n int, opts ClusterOptions) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("testharness: StartCluster needs at least one server, got %d", n)
	}
	if opts.Name == "" {
		opts.Name = "east"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	c := &Cluster{Name: opts.Name, t: t, opts: opts}

	s1 := StartServer(t, ServerOptions{
		NodeID:      "s1",
		Cluster:     opts.Name,
		TrustDomain: opts.TrustDomain,
		Bootstrap:   true,
		Dev:         opts.Dev,
		LogLevel:    opts.LogLevel,
		ExtraArgs:   opts.ExtraArgs,
		Env:         opts.Env,
	})
	c.Servers = append(c.Servers, s1)
	if err := s1.WaitReady(opts.Timeout); err != nil {
		t.Fatalf("bootstrap server s1 not ready: %v", err)
	}
	tok, err := s1.AdminToken()
	if err != nil {
		t.Fatalf("reading the admin token of s1: %v", err)
	}
	c.AdminToken, c.CAFile = tok, s1.CAFile

	for i := 2; i <= n; i++ {
		c.AddServer()
	}
	c.WaitForMembers(n)
	return c
}

// AddServer joins one more server (named s<k>) through the first running
// server, waits for it to be ready and returns it. It does not wait for
// the membership to settle (WaitForMembers).
func (c *Cluster) AddServer() *Server {
	c.t.Helper()
	via := c.anyRunning()
	stdout, stderr, err := c.RunCLI(c.t, "server", "join-token", "--ttl", "10m", "--uses", "1")
	if err != nil {
		c.t.Fatalf("meshfed server join-token: %v\n%s", err, stderr)
	}
	token := strings.TrimSpace(stdout)
	s := StartServer(c.t, ServerOptions{
		NodeID:      fmt.Sprintf("s%d", len(c.Servers)+1),
		Cluster:     c.Name,
		TrustDomain: c.opts.TrustDomain,
		JoinAddrs:   []string{via.APIAddr},
		JoinToken:   token,
		CAFile:      c.CAFile,
		LogLevel:    c.opts.LogLevel,
		ExtraArgs:   c.opts.ExtraArgs,
		Env:         c.opts.Env,
	})
	c.Servers = append(c.Servers, s)
	if err := s.WaitReady(c.opts.Timeout); err != nil {
		c.t.Fatalf("server %s not ready: %v", s.NodeID, err)
	}
	return s
}

// WaitForMembers waits until a running server reports exactly n voters, all
// alive, one of them the leader, and returns the members.
func (c *Cluster) WaitForMembers(n int) []*meshfedv1.Member {
	c.t.Helper()
	var members []*meshfedv1.Member
	err := Poll(c.opts.Timeout, func() error {
		s := c.anyRunning()
		resp, err := c.call(s, func(ctx context.Context, cl *client.Client) (any, error) {
			return cl.Cluster.ListMembers(ctx, &meshfedv1.ListMembersRequest{})
		})
		if err != nil {
			return err
		}
		members = resp.(*meshfedv1.ListMembersResponse).GetMembers()
		voters, leaders := 0, 0
		for _, m := range members {
			if m.GetVoter() && m.GetStatus() == "alive" {
				voters++
			}
			if m.GetLeader() {
				leaders++
			}
		}
		if voters != n || leaders != 1 {
			return fmt.Errorf("%d alive voters and %d leaders, want %d and 1: %v", voters, leaders, n, members)
		}
		return nil
	})
	if err != nil {
		c.t.Fatalf("cluster %s did not form: %v", c.Name, err)
	}
	return members
}

// Leader returns the server that reports itself leader, polling until one
// does. A paused or stopped server is not asked.
func (c *Cluster) Leader() *Server {
	c.t.Helper()
	var leader *Server
	err := Poll(c.opts.Timeout, func() error {
		var best uint64
		leader = nil
		var errs []error
		for _, s := range c.Servers {
			if !s.Running() || s.Paused() {
				continue
			}
			resp, err := c.call(s, func(ctx context.Context, cl *client.Client) (any, error) {
				return cl.Cluster.GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{})
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", s.NodeID, err))
				continue
			}
			st := resp.(*meshfedv1.ClusterStatus)
			// A deposed leader cut off from the others may still believe it
			// leads; the highest term wins.
			if st.GetRaftState() == "Leader" && st.GetLeaderId() == s.NodeID && st.GetTerm() >= best {
				leader, best = s, st.GetTerm()
			}
		}
		if leader == nil {
			return fmt.Errorf("no server reports itself leader: %v", errors.Join(errs...))
		}
		return nil
	})
	if err != nil {
		c.t.Fatalf("cluster %s: %v", c.Name, err)
	}
	return leader
}

// Followers returns every running, unpaused server except the leader.
func (c *Cluster) Followers() []*Server {
	c.t.Helper()
	leader := c.Leader()
	var out []*Server
	for _, s := range c.Servers {
		if s != leader && s.Running() && !s.Paused() {
			out = append(out, s)
		}
	}
	return out
}

// Server returns the server with the node ID, or nil.
func (c *Cluster) Server(nodeID string) *Server {
	for _, s := range c.Servers {
		if s.NodeID == nodeID {
			return s
		}
	}
	return nil
}

// Client returns an API client for s with the admin token; it is closed
// when the test ends.
func (c *Cluster) Client(t testing.TB, s *Server) *client.Client {
	t.Helper()
	cl, err := c.newClient(s, c.AdminToken)
	if err != nil {
		t.Fatalf("client for %s: %v", s.NodeID, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// ClientWithToken is Client with another token.
func (c *Cluster) ClientWithToken(t testing.TB, s *Server, token string) *client.Client {
	t.Helper()
	cl, err := c.newClient(s, token)
	if err != nil {
		t.Fatalf("client for %s: %v", s.NodeID, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func (c *Cluster) newClient(s *Server, token string) (*client.Client, error) {
	return client.New(client.Config{Addr: s.APIAddr, Token: token, CAFile: c.CAFile})
}

// call makes one short API call to s with the admin token.
func (c *Cluster) call(s *Server, fn func(context.Context, *client.Client) (any, error)) (any, error) {
	cl, err := c.newClient(s, c.AdminToken)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return fn(ctx, cl)
}

// anyRunning returns the first running, unpaused server.
func (c *Cluster) anyRunning() *Server {
	c.t.Helper()
	for _, s := range c.Servers {
		if s.Running() && !s.Paused() {
			return s
		}
	}
	c.t.Fatalf("cluster %s has no running server", c.Name)
	return nil
}

// Env returns the MESHFED_* variables that point the CLI at s as admin.
func (c *Cluster) Env(s *Server) []string {
	return []string{
		client.EnvAddr + "=" + s.APIAddr,
		client.EnvToken + "=" + c.AdminToken,
		client.EnvCAFile + "=" + c.CAFile,
	}
}

// CLI prepares the meshfed binary with args and the MESHFED_* environment of
// the first running server; set Stdin and run it yourself.
func (c *Cluster) CLI(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, Binary(c.t, "meshfed"), args...)
	cmd.Env = append(cleanEnv(), c.Env(c.anyRunning())...)
	return cmd
}

// RunCLI runs the meshfed binary with args against the first running server
// as admin (flags such as --token or --addr override that) and returns what
// it printed. err is non-nil when it exits non-zero (an *exec.ExitError;
// see ExitCode) or does not finish within the cluster's timeout.
func (c *Cluster) RunCLI(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
	defer cancel()
	cmd := c.CLI(ctx, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("meshfed %s: %w", strings.Join(args, " "), ctx.Err())
	}
	return out.String(), errb.String(), err
}

// ExitCode returns the exit code carried by an error of RunCLI, 0 for nil
// and -1 when the process did not exit normally.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}
