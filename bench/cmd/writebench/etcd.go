package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

type etcdCluster struct {
	endpoints []string
	tls       *tls.Config
	procs     []*harness.Proc
	version   string
}

// startEtcd runs a 3-member etcd cluster on loopback with TLS on client and
// peer ports (peers mutually authenticated, as meshfed's Raft transport is).
// Everything else, including fsync of the WAL, is etcd's default.
func startEtcd(ctx context.Context, ps *harness.Procs, bin, dir string) (*etcdCluster, error) {
	names := []string{"e1", "e2", "e3"}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	pki, err := newEtcdPKI(dir, names)
	if err != nil {
		return nil, fmt.Errorf("etcd certificates: %w", err)
	}
	ports, err := harness.FreePorts(2 * len(names))
	if err != nil {
		return nil, err
	}
	var initial []string
	for i, n := range names {
		initial = append(initial, fmt.Sprintf("%s=https://127.0.0.1:%d", n, ports[2*i+1]))
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pki.caPEM)
	c := &etcdCluster{tls: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}}
	for i, n := range names {
		client := fmt.Sprintf("https://127.0.0.1:%d", ports[2*i])
		peer := fmt.Sprintf("https://127.0.0.1:%d", ports[2*i+1])
		cert := pki.certs[n]
		args := []string{
			"--name", n,
			"--data-dir", filepath.Join(dir, n),
			"--listen-client-urls", client,
			"--advertise-client-urls", client,
			"--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", "writebench",
			"--cert-file", cert[0], "--key-file", cert[1],
			"--peer-cert-file", cert[0], "--peer-key-file", cert[1],
			"--peer-trusted-ca-file", pki.caFile, "--peer-client-cert-auth",
			"--logger", "zap", "--log-level", "warn",
		}
		p, err := ps.Start("etcd "+n, filepath.Join(dir, n+".log"), nil, bin, args...)
		if err != nil {
			return nil, err
		}
		c.endpoints = append(c.endpoints, client)
		c.procs = append(c.procs, p)
	}
	err = harness.WaitFor(ctx, "etcd leader", 60*time.Second, c.procs, func(ctx context.Context) error {
		_, err := c.leader(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (c *etcdCluster) client(endpoints ...string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         c.tls.Clone(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// leader asks every member and returns the leader's client URL once all
// members agree there is one.
func (c *etcdCluster) leader(ctx context.Context) (string, error) {
	cli, err := c.client(c.endpoints...)
	if err != nil {
		return "", err
	}
	defer cli.Close()
	var leaderURL string
	var leaderID uint64
	for _, ep := range c.endpoints {
		st, err := cli.Status(ctx, ep)
		if err != nil {
			return "", fmt.Errorf("status of %s: %w", ep, err)
		}
		if st.Leader == 0 {
			return "", fmt.Errorf("%s has no leader", ep)
		}
		if leaderID != 0 && st.Leader != leaderID {
			return "", errors.New("members disagree on the leader")
		}
		leaderID = st.Leader
		if st.Header.MemberId == st.Leader {
			leaderURL = ep
		}
		c.version = st.Version
	}
	if leaderURL == "" {
		return "", errors.New("leader is not among the members")
	}
	return leaderURL, nil
}

type etcdSystem struct{ c *etcdCluster }

func (etcdSystem) Name() string { return "etcd" }

func (s etcdSystem) Open(ctx context.Context, conns int) ([]Target, error) {
	leader, err := s.c.leader(ctx)
	if err != nil {
		return nil, err
	}
	var ts []Target
	for range conns {
		cli, err := s.c.client(leader)
		if err != nil {
			closeTargets(ts)
			return nil, err
		}
		ts = append(ts, etcdTarget{cli})
	}
	return ts, nil
}

type etcdTarget struct{ c *clientv3.Client }

func (t etcdTarget) Write(ctx context.Context, key string, value []byte) error {
	_, err := t.c.Put(ctx, key, string(value))
	return err
}

func (t etcdTarget) Close() error { return t.c.Close() }

func findEtcd() (string, error) {
	for _, p := range []string{"/usr/bin/etcd", "/usr/local/bin/etcd"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("etcd not found (run scripts/bench-deps.sh)")
}
