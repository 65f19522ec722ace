package testharness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ProxyOptions describe one meshfed-proxy process.
type ProxyOptions struct {
	// Servers are the API addresses it connects to and CAFile the cluster
	// bundle; Token a workload-join token for the service's identity.
	Servers []string
	CAFile  string
	Token   string
	// Service, Namespace (default "default") and AppPort of the workload.
	Service   string
	Namespace string
	AppPort   int
	// Instance names the workload (default "<service>-<n>").
	Instance string
	// Upstreams maps NAME[.NS] to nothing: the harness picks a free local
	// address for each (see Proxy.Upstream).
	Upstreams []string
	// WorkloadAPI serves the Workload API on a socket in a temporary
	// directory (Proxy.WorkloadAPISocket).
	WorkloadAPI bool
	// ExtraArgs are appended.
	ExtraArgs []string
}

// Proxy is one meshfed-proxy process on 127.0.0.1.
type Proxy struct {
	Listen            string
	Admin             string
	WorkloadAPISocket string
	Instance          string
	// upstreams maps NAME[.NS] to its local address.
	upstreams map[string]string
	Args      []string

	t       testing.TB
	dir     string
	cmd     *exec.Cmd
	done    chan struct{}
	mu      sync.Mutex
	waitErr error
}

var proxyCount struct {
	sync.Mutex
	n int
}

// StartProxy starts a proxy; it is stopped (SIGTERM, then SIGKILL) when the
// test ends, and its logs printed if the test failed.
func StartProxy(t testing.TB, o ProxyOptions) *Proxy {
	t.Helper()
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	if o.Instance == "" {
		proxyCount.Lock()
		proxyCount.n++
		o.Instance = fmt.Sprintf("%s-%d", o.Service, proxyCount.n)
		proxyCount.Unlock()
	}
	p := &Proxy{
		Listen:    FreeAddr(t),
		Admin:     FreeAddr(t),
		Instance:  o.Instance,
		upstreams: map[string]string{},
		t:         t,
		dir:       t.TempDir(),
	}
	args := []string{
		"--server", strings.Join(o.Servers, ","),
		"--ca-file", o.CAFile,
		"--token", o.Token,
		"--service", o.Service,
		"--namespace", o.Namespace,
		"--port", fmt.Sprint(o.AppPort),
		"--listen", p.Listen,
		"--admin", p.Admin,
		"--instance", o.Instance,
		"--health-interval", "500ms",
		"--drain-delay", "500ms",
		"--log-level", "debug",
	}
	for _, u := range o.Upstreams {
		addr := FreeAddr(t)
		p.upstreams[u] = addr
		args = append(args, "--upstream", u+"="+addr)
	}
	if o.WorkloadAPI {
		// Unix socket paths are short: not under t.TempDir().
		d, err := os.MkdirTemp("", "mfp")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		p.WorkloadAPISocket = filepath.Join(d, "wapi.sock")
		args = append(args, "--workload-api-socket", p.WorkloadAPISocket)
	}
	p.Args = append(args, o.ExtraArgs...)
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("=== meshfed-proxy %s stderr:\n%s", p.Instance, tail(p.Stderr(), logDumpLimit))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (p *Proxy) start() error {
	stderr, err := os.Create(filepath.Join(p.dir, "stderr.log"))
	if err != nil {
		return err
	}
	stdout, err := os.Create(filepath.Join(p.dir, "stdout.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(Binary(p.t, "meshfed-proxy"), p.Args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.Env = cleanEnv()
	setSysProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting meshfed-proxy: %w", err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func() {
		err := cmd.Wait()
		stderr.Close()
		stdout.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(p.done)
	}()
	return nil
}

// Upstream returns the local address of an upstream listener.
func (p *Proxy) Upstream(name string) string {
	a, ok := p.upstreams[name]
	if !ok {
		p.t.Fatalf("testharness: proxy %s has no upstream %q", p.Instance, name)
	}
	return a
}

// Stderr and Stdout return what the process wrote (logs, access logs).
func (p *Proxy) Stderr() string { return p.read("stderr.log") }
func (p *Proxy) Stdout() string { return p.read("stdout.log") }

func (p *Proxy) read(name string) string {
	b, _ := os.ReadFile(filepath.Join(p.dir, name))
	return string(b)
}

// Exited is closed when the process ends.
func (p *Proxy) Exited() <-chan struct{} { return p.done }

// ExitErr is the process' exit error once it ended.
func (p *Proxy) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// WaitReady polls /ready until it answers 200.
func (p *Proxy) WaitReady(timeout time.Duration) error {
	return Poll(timeout, func() error {
		select {
		case <-p.done:
			return fmt.Errorf("meshfed-proxy %s exited: %v\n%s", p.Instance, p.ExitErr(), tail(p.Stderr(), 4096))
		default:
		}
		resp, err := http.Get("http://" + p.Admin + "/ready")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("proxy %s not ready: %s", p.Instance, strings.TrimSpace(string(b)))
		}
		return nil
	})
}

// Terminate sends SIGTERM (drain) without waiting.
func (p *Proxy) Terminate() error { return p.cmd.Process.Signal(syscall.SIGTERM) }

// Kill sends SIGKILL and waits for the process to end.
func (p *Proxy) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Stop sends SIGTERM and waits (SIGKILL after DefaultStopTimeout).
func (p *Proxy) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(DefaultStopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Metrics fetches the proxy's /metrics text.
func (p *Proxy) Metrics(ctx context.Context) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Admin+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
