package e2e

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/testharness"
)

// TestFourthServerRefused: a fourth server cannot join a three-server
// cluster with a wrong join token, with a join token whose one use another
// server spent, or without a join token; each exits non-zero saying why,
// and the cluster keeps its three members.
func TestFourthServerRefused(t *testing.T) {
	skipShort(t)
	c := testharness.StartCluster(t, 2, testharness.ClusterOptions{Name: "east"})

	// The third server joins with a one-use token that this test keeps, so
	// that a later join can try to reuse it.
	var tok meshfedv1.Token
	unmarshalJSON(t, mustCLI(t, c, c.Servers[0], "server", "join-token", "--ttl", "10m", "--uses", "1", "-o", "json"), &tok)
	if tok.GetSecret() == "" || tok.GetMaxUses() != 1 {
		t.Fatalf("join token %v", &tok)
	}
	s3 := testharness.StartServer(t, testharness.ServerOptions{
		NodeID: "s3", Cluster: c.Name, JoinAddrs: []string{c.Servers[0].APIAddr}, JoinToken: tok.GetSecret(), CAFile: c.CAFile,
	})
	c.Servers = append(c.Servers, s3)
	if err := s3.WaitReady(waitTimeout); err != nil {
		t.Fatalf("s3: %v", err)
	}
	c.WaitForMembers(3)
	leader := c.Leader()
	follower := c.Followers()[0]

	cases := []struct {
		name string
		node string
		via  *testharness.Server
		// token is the --join-token flag; empty leaves the flag out.
		token string
		// want are substrings of the server's standard error.
		want []string
	}{
		{"wrong token", "s4", follower, "mfd_thisIsNotAValidJoinTokenAtAll0000000000", []string{"UNAUTHENTICATED", "invalid token"}},
		{"spent token", "s5", leader, tok.GetSecret(), []string{"PERMISSION_DENIED", "no uses left"}},
		{"no token", "s6", leader, "", []string{"--join-token"}},
	}
	servers := make([]*testharness.Server, len(cases))
	for i, tc := range cases {
		servers[i] = testharness.StartServer(t, testharness.ServerOptions{
			NodeID: tc.node, Cluster: c.Name, JoinAddrs: []string{tc.via.APIAddr}, JoinToken: tc.token, CAFile: c.CAFile,
		})
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := servers[i]
			if tc.token == "" && strings.Contains(strings.Join(s.Args, " "), "--join-token") {
				t.Fatalf("args carry a join token: %v", s.Args)
			}
			select {
			case <-s.Exited():
			case <-time.After(waitTimeout):
				t.Fatalf("%s (%s) still running after %s; log:\n%s", tc.node, tc.name, waitTimeout, s.Log())
			}
			var ee *exec.ExitError
			if err := s.ExitErr(); !errors.As(err, &ee) || ee.ExitCode() <= 0 {
				t.Fatalf("%s exited with %v, want a non-zero exit status", tc.node, err)
			}
			// The log also holds the harness's command line: look at what
			// the server printed last, its error.
			log := s.Log()
			lines := strings.Split(strings.TrimSpace(log), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "Error: ") {
				t.Fatalf("%s: last line of stderr %q is not the error; log:\n%s", tc.node, last, log)
			}
			for _, w := range tc.want {
				if !strings.Contains(last, w) {
					t.Errorf("%s: error %q does not mention %q", tc.node, last, w)
				}
			}
			t.Logf("%s: %s", tc.node, last)
			if _, err := s.AdminToken(); err == nil {
				t.Errorf("%s wrote an admin token", tc.node)
			}
		})
	}

	// The refused joins changed nothing: three voters, one leader, and the
	// spent token still counts exactly one use.
	var members meshfedv1.ListMembersResponse
	unmarshalJSON(t, mustCLI(t, c, leader, "members", "-o", "json"), &members)
	var ids []string
	leaders := 0
	for _, m := range members.GetMembers() {
		ids = append(ids, m.GetNodeId())
		if !m.GetVoter() {
			t.Errorf("member %s is not a voter", m.GetNodeId())
		}
		if m.GetLeader() {
			leaders++
		}
	}
	if strings.Join(ids, ",") != "s1,s2,s3" || leaders != 1 {
		t.Errorf("members after the refused joins: %v (%d leaders), want s1,s2,s3 with one leader", ids, leaders)
	}
	var spent meshfedv1.Token
	unmarshalJSON(t, mustCLI(t, c, leader, "tokens", "get", tok.GetMeta().GetName(), "-o", "json"), &spent)
	if spent.GetUses() != 1 || spent.GetSecret() != "" {
		t.Errorf("join token after one join and one refused reuse: uses %d (want 1), secret %q (want none)", spent.GetUses(), spent.GetSecret())
	}
}
