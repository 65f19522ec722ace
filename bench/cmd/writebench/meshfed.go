package main

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
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

type meshfedServer struct {
	id                string
	dir               string
	api, raft, httpAd string
	p                 *proc
}

type meshfedCluster struct {
	bin     string
	servers []*meshfedServer
	token   string
	caPEM   []byte
	version string
}

func newMeshfedServer(id, dir string) (*meshfedServer, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	return &meshfedServer{
		id:     id,
		dir:    dir,
		api:    fmt.Sprintf("127.0.0.1:%d", ports[0]),
		raft:   fmt.Sprintf("127.0.0.1:%d", ports[1]),
		httpAd: fmt.Sprintf("127.0.0.1:%d", ports[2]),
	}, nil
}

func (s *meshfedServer) addrArgs() []string {
	return []string{"--data-dir", s.dir, "--api-addr", s.api, "--raft-addr", s.raft, "--http-addr", s.httpAd}
}

// waitCredentials waits for the admin token and CA bundle a bootstrapped or
// dev server writes into its data dir, then for the API to answer with them.
func (s *meshfedServer) waitCredentials(ctx context.Context) (token string, caPEM []byte, err error) {
	err = waitFor(ctx, s.id+" admin.token and ca.pem", 60*time.Second, []*proc{s.p}, func(context.Context) error {
		t, err := os.ReadFile(filepath.Join(s.dir, "admin.token"))
		if err != nil {
			return err
		}
		ca, err := os.ReadFile(filepath.Join(s.dir, "ca.pem"))
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
	conn, err := dialMeshfed(s.api, caPEM, token)
	if err != nil {
		return "", nil, err
	}
	defer conn.Close()
	err = waitFor(ctx, s.id+" API", 60*time.Second, []*proc{s.p}, func(ctx context.Context) error {
		_, err := meshfedv1.NewClusterServiceClient(conn).GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{})
		return err
	})
	return token, caPEM, err
}

// startMeshfed bootstraps s1, joins s2 and s3 with join tokens, and waits
// for three voters with a leader.
func startMeshfed(ctx context.Context, ps *procs, bin, dir string) (*meshfedCluster, error) {
	c := &meshfedCluster{bin: bin}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("s%d", i)
		s, err := newMeshfedServer(id, filepath.Join(dir, id))
		if err != nil {
			return nil, err
		}
		c.servers = append(c.servers, s)
	}
	s1 := c.servers[0]
	args := append([]string{"server", "--bootstrap", "--node-id", s1.id, "--cluster", "bench"}, s1.addrArgs()...)
	var err error
	if s1.p, err = ps.start("meshfed "+s1.id, filepath.Join(dir, s1.id+".log"), nil, bin, args...); err != nil {
		return nil, err
	}
	if c.token, c.caPEM, err = s1.waitCredentials(ctx); err != nil {
		return nil, err
	}
	caFile := filepath.Join(s1.dir, "ca.pem")
	for _, s := range c.servers[1:] {
		jt, err := c.joinToken(ctx, s1, caFile)
		if err != nil {
			return nil, err
		}
		args := append([]string{"server", "--node-id", s.id, "--cluster", "bench",
			"--join", s1.api, "--join-token", jt, "--ca-file", caFile}, s.addrArgs()...)
		if s.p, err = ps.start("meshfed "+s.id, filepath.Join(dir, s.id+".log"), nil, bin, args...); err != nil {
			return nil, err
		}
	}
	conn, err := dialMeshfed(s1.api, c.caPEM, c.token)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	cl := meshfedv1.NewClusterServiceClient(conn)
	err = waitFor(ctx, "3 meshfed voters and a leader", 90*time.Second, c.procs(), func(ctx context.Context) error {
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

func (c *meshfedCluster) procs() []*proc {
	var ps []*proc
	for _, s := range c.servers {
		if s.p != nil {
			ps = append(ps, s.p)
		}
	}
	return ps
}

// joinToken goes through the CLI, as an operator would.
func (c *meshfedCluster) joinToken(ctx context.Context, s *meshfedServer, caFile string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, c.bin, "server", "join-token")
	cmd.Env = append(os.Environ(), "MESHFED_ADDR="+s.api, "MESHFED_TOKEN="+c.token, "MESHFED_CA_FILE="+caFile)
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

func (c *meshfedCluster) leader(ctx context.Context) (string, error) {
	var last error
	for _, s := range c.servers {
		conn, err := dialMeshfed(s.api, c.caPEM, c.token)
		if err != nil {
			return "", err
		}
		st, err := meshfedv1.NewClusterServiceClient(conn).GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{})
		conn.Close()
		if err != nil {
			last = err
			continue
		}
		c.version = st.GetVersion()
		if st.GetLeaderApiAddr() != "" {
			return st.GetLeaderApiAddr(), nil
		}
		last = fmt.Errorf("%s knows no leader", s.id)
	}
	return "", last
}

type bearer string

func (t bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

// meshfedTLS trusts the cluster's CA bundle and accepts only a meshfed server
// identity. The chain is verified here rather than by hostname because the
// server's identity is its SPIFFE ID; the IP SAN is not part of the contract.
func meshfedTLS(caPEM []byte) (*tls.Config, error) {
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

func dialMeshfed(addr string, caPEM []byte, token string) (*grpc.ClientConn, error) {
	cfg, err := meshfedTLS(caPEM)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithPerRPCCredentials(bearer(token)))
}

// upsertBenchService creates the service the bench workloads belong to, in
// case the server insists on it.
func upsertBenchService(ctx context.Context, addr string, caPEM []byte, token string) error {
	conn, err := dialMeshfed(addr, caPEM, token)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = meshfedv1.NewCatalogServiceClient(conn).UpdateService(ctx, &meshfedv1.UpdateServiceRequest{
		Service: &meshfedv1.Service{
			Meta:     &meshfedv1.Meta{Name: benchService, Namespace: benchNamespace},
			Port:     8080,
			Protocol: meshfedv1.Protocol_PROTOCOL_HTTP,
		},
		AllowMissing: true,
	})
	return err
}

const (
	benchService   = "bench"
	benchNamespace = "default"
)

type meshfedSystem struct{ c *meshfedCluster }

func (meshfedSystem) Name() string { return "meshfed" }

func (s meshfedSystem) Open(ctx context.Context, conns int) ([]Target, error) {
	leader, err := s.c.leader(ctx)
	if err != nil {
		return nil, err
	}
	return openMeshfedTargets(leader, s.c.caPEM, s.c.token, conns)
}

func openMeshfedTargets(addr string, caPEM []byte, token string, conns int) ([]Target, error) {
	var ts []Target
	for range conns {
		conn, err := dialMeshfed(addr, caPEM, token)
		if err != nil {
			closeTargets(ts)
			return nil, err
		}
		// Connect now so that no measured write pays for the handshake.
		conn.Connect()
		ts = append(ts, &meshfedTarget{conn: conn, cat: meshfedv1.NewCatalogServiceClient(conn)})
	}
	return ts, nil
}

type meshfedTarget struct {
	conn *grpc.ClientConn
	cat  meshfedv1.CatalogServiceClient
}

func (t *meshfedTarget) Write(ctx context.Context, key string, value []byte) error {
	_, err := t.cat.UpdateWorkload(ctx, &meshfedv1.UpdateWorkloadRequest{
		Workload:     benchWorkload(key, value),
		AllowMissing: true,
	})
	return err
}

func (t *meshfedTarget) Close() error { return t.conn.Close() }

// padChunk keeps label values within Kubernetes' 63-character limit.
const padChunk = 60

// benchWorkload carries value in labels, split into valid label values, so
// that the stored record has the payload's size and content. The value must
// be label-safe (lower-case letters and digits).
func benchWorkload(key string, value []byte) *meshfedv1.Workload {
	labels := make(map[string]string, len(value)/padChunk+1)
	for i := 0; i*padChunk < len(value); i++ {
		labels[fmt.Sprintf("pad%d", i)] = string(value[i*padChunk : min(len(value), (i+1)*padChunk)])
	}
	return &meshfedv1.Workload{
		Meta:    &meshfedv1.Meta{Name: key, Namespace: benchNamespace, Labels: labels},
		Service: benchService,
		Address: "127.0.0.1",
		Port:    8080,
		Health:  meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY,
	}
}

// meshfedPayload returns the longest prefix of value whose workload, with a
// key of the given length, marshals to at most size bytes.
func meshfedPayload(keyLen, size int, value []byte) []byte {
	key := strings.Repeat("k", keyLen)
	for n := len(value); n > 0; n-- {
		if proto.Size(benchWorkload(key, value[:n])) <= size {
			return value[:n]
		}
	}
	return nil
}

func workloadSize(key string, value []byte) int { return proto.Size(benchWorkload(key, value)) }
