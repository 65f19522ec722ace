package harness

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// MeshfedServer is one meshfed server process and its addresses.
type MeshfedServer struct {
	ID              string
	Dir             string
	API, Raft, HTTP string
	P               *Proc
}

// MeshfedCluster is a set of servers started by StartMeshfed, with the admin
// token and trust bundle of the bootstrapped one.
type MeshfedCluster struct {
	Bin     string
	Servers []*MeshfedServer
	Token   string
	CAPEM   []byte
	Version string
	// TrustDomain as the cluster reports it.
	TrustDomain string
}

// NewMeshfedServer picks free loopback ports for a server with data dir dir.
func NewMeshfedServer(id, dir string) (*MeshfedServer, error) {
	ports, err := FreePorts(3)
	if err != nil {
		return nil, err
	}
	return &MeshfedServer{
		ID:   id,
		Dir:  dir,
		API:  fmt.Sprintf("127.0.0.1:%d", ports[0]),
		Raft: fmt.Sprintf("127.0.0.1:%d", ports[1]),
		HTTP: fmt.Sprintf("127.0.0.1:%d", ports[2]),
	}, nil
}

// AddrArgs are the server flags for its data dir and addresses.
func (s *MeshfedServer) AddrArgs() []string {
	return []string{"--data-dir", s.Dir, "--api-addr", s.API, "--raft-addr", s.Raft, "--http-addr", s.HTTP}
}

// WaitCredentials waits for the admin token and CA bundle a bootstrapped or
// dev server writes into its data dir, then for the API to answer with them.
func (s *MeshfedServer) WaitCredentials(ctx context.Context) (token string, caPEM []byte, err error) {
	err = WaitFor(ctx, s.ID+" admin.token and ca.pem", 60*time.Second, []*Proc{s.P}, func(context.Context) error {
		t, err := os.ReadFile(filepath.Join(s.Dir, "admin.token"))
		if err != nil {
			return err
		}
		ca, err := os.ReadFile(filepath.Join(s.Dir, "ca.pem"))
		if err != nil {
			return err
		}
		if len(strings.TrimSpace(string(t))) == 0 || len(ca) == 0 {
			return errors.New("empty")
		}
		token, caPEM = strings.TrimSpace(string(t)), ca
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	conn, err := DialMeshfed(s.API, caPEM, token)
	if err != nil {
		return "", nil, err
	}
	defer conn.Close()
	err = WaitFor(ctx, s.ID+" API", 60*time.Second, []*Proc{s.P}, func(ctx context.Context) error {
		_, err := meshfedv1.NewClusterServiceClient(conn).GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{})
		return err
	})
	return token, caPEM, err
}

// StartMeshfed bootstraps s1, joins s2 and s3 with join tokens, and waits
// for three voters with a leader. Data dirs and logs go under dir.
func StartMeshfed(ctx context.Context, ps *Procs, bin, dir string) (*MeshfedCluster, error) {
	return StartMeshfedCluster(ctx, ps, bin, dir, ClusterOptions{})
}

// ClusterOptions tune StartMeshfedCluster.
type ClusterOptions struct {
	// Name of the cluster (default "bench"); its trust domain is
	// "<name>.mesh".
	Name string
	// Args, when set, returns extra flags for one server (after its
	// addresses are chosen).
	Args func(s *MeshfedServer) []string
}

// StartMeshfedCluster is StartMeshfed with options.
func StartMeshfedCluster(ctx context.Context, ps *Procs, bin, dir string, o ClusterOptions) (*MeshfedCluster, error) {
	if o.Name == "" {
		o.Name = "bench"
	}
	extra := func(s *MeshfedServer) []string {
		if o.Args == nil {
			return nil
		}
		return o.Args(s)
	}
	c := &MeshfedCluster{Bin: bin}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("s%d", i)
		s, err := NewMeshfedServer(id, filepath.Join(dir, id))
		if err != nil {
			return nil, err
		}
		c.Servers = append(c.Servers, s)
	}
	s1 := c.Servers[0]
	args := append([]string{"server", "--bootstrap", "--node-id", s1.ID, "--cluster", o.Name}, s1.AddrArgs()...)
	args = append(args, extra(s1)...)
	var err error
	if s1.P, err = ps.Start(o.Name+" "+s1.ID, filepath.Join(dir, s1.ID+".log"), nil, bin, args...); err != nil {
		return nil, err
	}
	if c.Token, c.CAPEM, err = s1.WaitCredentials(ctx); err != nil {
		return nil, err
	}
	caFile := filepath.Join(s1.Dir, "ca.pem")
	for _, s := range c.Servers[1:] {
		jt, err := c.joinToken(ctx, s1, caFile)
		if err != nil {
			return nil, err
		}
		args := append([]string{"server", "--node-id", s.ID, "--cluster", o.Name,
			"--join", s1.API, "--join-token", jt, "--ca-file", caFile}, s.AddrArgs()...)
		args = append(args, extra(s)...)
		if s.P, err = ps.Start(o.Name+" "+s.ID, filepath.Join(dir, s.ID+".log"), nil, bin, args...); err != nil {
			return nil, err
		}
	}
	conn, err := DialMeshfed(s1.API, c.CAPEM, c.Token)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	cl := meshfedv1.NewClusterServiceClient(conn)
	err = WaitFor(ctx, "3 meshfed voters and a leader", 90*time.Second, c.Procs(), func(ctx context.Context) error {
		r, err := cl.ListMembers(ctx, &meshfedv1.ListMembersRequest{})
		if err != nil {
			return err
		}
		voters, leaders := 0, 0
		for _, m := range r.GetMembers() {
			if m.GetVoter() {
				voters++
			}
			if m.GetLeader() {
				leaders++
			}
		}
		if voters != 3 || leaders != 1 {
			return fmt.Errorf("%d voters, %d leaders", voters, leaders)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Procs returns the server processes started so far.
func (c *MeshfedCluster) Procs() []*Proc {
	var ps []*Proc
	for _, s := range c.Servers {
		if s.P != nil {
			ps = append(ps, s.P)
		}
	}
	return ps
}

// joinToken goes through the CLI, as an operator would.
func (c *MeshfedCluster) joinToken(ctx context.Context, s *MeshfedServer, caFile string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, c.Bin, "server", "join-token")
	cmd.Env = append(os.Environ(), "MESHFED_ADDR="+s.API, "MESHFED_TOKEN="+c.Token, "MESHFED_CA_FILE="+caFile)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("meshfed server join-token: %w: %s", err, stderr.String())
	}
	t := strings.TrimSpace(string(out))
	if t == "" || strings.ContainsAny(t, " \n") {
		return "", fmt.Errorf("meshfed server join-token printed %q, want only the token", out)
	}
	return t, nil
}

// Leader returns the API address of the current leader, and records the
// cluster's version and trust domain.
func (c *MeshfedCluster) Leader(ctx context.Context) (string, error) {
	var last error
	for _, s := range c.Servers {
		conn, err := DialMeshfed(s.API, c.CAPEM, c.Token)
		if err != nil {
			return "", err
		}
		st, err := meshfedv1.NewClusterServiceClient(conn).GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{})
		conn.Close()
		if err != nil {
			last = err
			continue
		}
		c.Version = st.GetVersion()
		c.TrustDomain = st.GetTrustDomain()
		if st.GetLeaderApiAddr() != "" {
			return st.GetLeaderApiAddr(), nil
		}
		last = fmt.Errorf("%s knows no leader", s.ID)
	}
	return "", last
}

// Bearer sends an API token with every call.
type Bearer string

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t Bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (Bearer) RequireTransportSecurity() bool { return true }

// MeshfedTLS trusts the cluster's CA bundle and accepts only a meshfed server
// identity. The chain is verified here rather than by hostname because the
// server's identity is its SPIFFE ID; the IP SAN is not part of the contract.
func MeshfedTLS(caPEM []byte) (*tls.Config, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no certificate in the CA bundle")
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{
				Roots: roots, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}); err != nil {
				return err
			}
			for _, u := range leaf.URIs {
				if u.Scheme == "spiffe" && strings.HasPrefix(u.Path, "/meshfed/server/") {
					return nil
				}
			}
			return errors.New("server certificate carries no meshfed server SPIFFE ID")
		},
	}, nil
}

// DialMeshfed opens a client connection that sends token (if not empty) as
// a bearer token.
func DialMeshfed(addr string, caPEM []byte, token string) (*grpc.ClientConn, error) {
	cfg, err := MeshfedTLS(caPEM)
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(Bearer(token)))
	}
	return grpc.NewClient(addr, opts...)
}

// RaftIndexes returns each server's Raft last index as the server itself
// reports it (GetClusterStatus), keyed by node ID. The member list is not
// used: it reports followers' indexes as of the last autopilot poll.
func (c *MeshfedCluster) RaftIndexes(ctx context.Context) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, s := range c.Servers {
		conn, err := DialMeshfed(s.API, c.CAPEM, c.Token)
		if err != nil {
			return nil, err
		}
		st, err := meshfedv1.NewClusterServiceClient(conn).GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{})
		conn.Close()
		if err != nil {
			return nil, fmt.Errorf("GetClusterStatus of %s: %w", s.ID, err)
		}
		out[s.ID] = st.GetLastIndex()
	}
	return out, nil
}
