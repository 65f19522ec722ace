package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

// tls13Suite is the one TLS 1.3 cipher suite HAProxy is allowed, the one a
// Go client (meshfed-proxy) picks on a CPU with AES instructions, so that
// both pairs encrypt with the same AEAD.
const tls13Suite = "TLS_AES_128_GCM_SHA256"

// haproxyGlobal is shared by both HAProxy configurations. nbthread is not
// set: HAProxy runs one thread per CPU it may use, as a Go program runs
// GOMAXPROCS = CPUs. Timeouts are long so that the load generator's pooled
// connections are not closed under it between phases.
const haproxyGlobal = `global
    maxconn 8192
    ssl-server-verify required

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    timeout http-keep-alive 10m
    timeout http-request 30s
`

// haproxyClientCfg is the caller's side: plain HTTP in from the load
// generator, mutual TLS out to the server side with its client certificate,
// the server's chain verified against the CA, connections to it kept and
// shared between requests (http-reuse always).
const haproxyClientCfg = haproxyGlobal + `
frontend in
    bind 127.0.0.1:%[1]d
    default_backend mesh

backend mesh
    http-reuse always
    server s1 127.0.0.1:%[2]d ssl crt %[3]s ca-file %[4]s verify required ssl-min-ver TLSv1.3 ciphersuites ` + tls13Suite + `
`

// haproxyServerCfg is the callee's side: mutual TLS in (a client
// certificate is required and verified), the caller authorized by its
// certificate's subject, plain HTTP to the app on kept connections.
const haproxyServerCfg = haproxyGlobal + `
frontend in
    bind 127.0.0.1:%[1]d ssl crt %[2]s ca-file %[3]s verify required ssl-min-ver TLSv1.3 ciphersuites ` + tls13Suite + `
    http-request deny unless { ssl_c_s_dn(CN) -m str client }
    default_backend app

backend app
    http-reuse always
    server app 127.0.0.1:%[4]d
`

// haproxyPair is the two HAProxy processes and the address the load
// generator sends to.
type haproxyPair struct {
	client, server *harness.Proc
	listen         string // the client side's plain HTTP frontend
	version        string
}

func startHAProxy(ctx context.Context, ps *harness.Procs, bin, dir string, pki *pkiFiles, appPort int) (*haproxyPair, error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("haproxy binary: %w (run scripts/bench-deps.sh, pass -haproxy-bin, or -skip-haproxy)", err)
	}
	h := &haproxyPair{version: haproxyVersion(ctx, path)}
	ports, err := harness.FreePorts(2)
	if err != nil {
		return nil, err
	}
	front, mtls := ports[0], ports[1]
	h.listen = fmt.Sprintf("127.0.0.1:%d", front)
	cfgs := []struct {
		name, text string
		p          **harness.Proc
	}{
		{"haproxy-server", fmt.Sprintf(haproxyServerCfg, mtls, pki.server, pki.ca, appPort), &h.server},
		{"haproxy-client", fmt.Sprintf(haproxyClientCfg, front, mtls, pki.client, pki.ca), &h.client},
	}
	for _, c := range cfgs {
		file := filepath.Join(dir, c.name+".cfg")
		if err := os.WriteFile(file, []byte(c.text), 0o600); err != nil {
			return nil, err
		}
		// -db: foreground, no master process: the PID is the one process
		// that does the work.
		if *c.p, err = ps.Start(c.name, filepath.Join(dir, c.name+".log"), nil, path, "-db", "-f", file); err != nil {
			if h.server != nil {
				ps.Stop(h.server)
			}
			return nil, err
		}
	}
	cl := newClient(h.listen, 1)
	defer cl.reset()
	err = harness.WaitFor(ctx, "a request through the HAProxy pair", 30*time.Second, h.procs(), cl.do)
	if err != nil {
		ps.Stop(h.procs()...)
		return nil, err
	}
	return h, nil
}

// haproxyRelayCfg is the reference hop: one HAProxy thread relaying plain
// TCP from the load generator to the app, with no TLS and no HTTP parsing.
// What it costs per request is about the least any proxy hop costs on the
// machine: system calls, the kernel's TCP work and wake-ups.
const haproxyRelayCfg = `global
    maxconn 8192
    nbthread 1

defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m

frontend in
    bind 127.0.0.1:%[1]d
    default_backend app

backend app
    server app 127.0.0.1:%[2]d
`

// startRelay starts the reference TCP relay in front of the app and returns
// it with the address the load generator sends to.
func startRelay(ctx context.Context, ps *harness.Procs, bin, dir string, appPort int) (*harness.Proc, string, error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, "", fmt.Errorf("haproxy binary: %w (run scripts/bench-deps.sh, pass -haproxy-bin, or -skip-haproxy)", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", err
	}
	ports, err := harness.FreePorts(1)
	if err != nil {
		return nil, "", err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", ports[0])
	file := filepath.Join(dir, "tcp-relay.cfg")
	if err := os.WriteFile(file, []byte(fmt.Sprintf(haproxyRelayCfg, ports[0], appPort)), 0o600); err != nil {
		return nil, "", err
	}
	p, err := ps.Start("tcp-relay", filepath.Join(dir, "tcp-relay.log"), nil, path, "-db", "-f", file)
	if err != nil {
		return nil, "", err
	}
	cl := newClient(listen, 1)
	defer cl.reset()
	if err := harness.WaitFor(ctx, "a request through the TCP relay", 30*time.Second, []*harness.Proc{p}, cl.do); err != nil {
		ps.Stop(p)
		return nil, "", err
	}
	return p, listen, nil
}

func (h *haproxyPair) procs() []*harness.Proc { return []*harness.Proc{h.client, h.server} }

// haproxyVersion is the version `haproxy -v` prints, e.g. "2.6.12-1+deb12u4".
func haproxyVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "-v").Output()
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(out))
	for i, w := range f {
		if w == "version" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return "unknown"
}
