package testharness

import (
	"context"
	"errors"
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

	"github.com/meshfed/meshfed/internal/tlsutil"
)

// Files in a server's data directory.
const (
	// StderrFile receives the server's standard error (its logs), appended
	// across restarts.
	StderrFile = "meshfed.stderr.log"
	// StdoutFile receives its standard output (the env lines).
	StdoutFile = "meshfed.stdout.log"
	// AdminTokenFile and CAFile are written by a bootstrapping server.
	AdminTokenFile = "admin.token"
	CAFile         = "ca.pem"
	EnvFile        = "env"
)

// DefaultStopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const DefaultStopTimeout = 15 * time.Second

// logDumpLimit bounds how much of a server's log a failed test prints.
const logDumpLimit = 256 << 10

// ServerOptions describe one server process.
type ServerOptions struct {
	// NodeID and Cluster are required.
	NodeID  string
	Cluster string
	// TrustDomain defaults to "<cluster>.mesh" (the server's default).
	TrustDomain string
	// DataDir defaults to a new t.TempDir().
	DataDir string
	// Bootstrap starts a new cluster; Dev adds --dev.
	Bootstrap bool
	Dev       bool
	// JoinAddrs, JoinToken and CAFile join an existing cluster.
	JoinAddrs []string
	JoinToken string
	CAFile    string
	// LogLevel defaults to "debug".
	LogLevel string
	// ExtraArgs are appended to the server's arguments.
	ExtraArgs []string
	// Env is added to the server's environment.
	Env []string
}

// Server is one "meshfed server" process on 127.0.0.1.
type Server struct {
	NodeID   string
	Cluster  string
	DataDir  string
	APIAddr  string
	RaftAddr string
	HTTPAddr string
	// CAFile is the cluster's trust bundle that verifies this server: its own
	// <data-dir>/ca.pem when it bootstrapped, else the one it joined with.
	CAFile string
	// Args are the arguments of the binary ("server", flags...). Restart
	// reuses them unchanged, as a service manager would.
	Args []string
	// Env is added to the inherited environment (minus MESHFED_*).
	Env []string
	// StopTimeout bounds the wait after SIGTERM (DefaultStopTimeout).
	StopTimeout time.Duration
	// Cmd is the current (or last) process.
	Cmd *exec.Cmd

	t   testing.TB
	bin string

	mu      sync.Mutex
	done    chan struct{} // closed when the current process has exited
	waitErr error
	paused  bool
}

// NewServer prepares a server with free ports; it does not start it. The
// server is stopped when the test ends, and its log printed if the test
// failed.
func NewServer(t testing.TB, opts ServerOptions) *Server {
	t.Helper()
	if opts.NodeID == "" || opts.Cluster == "" {
		t.Fatalf("testharness: ServerOptions needs NodeID and Cluster")
	}
	s := &Server{
		NodeID:   opts.NodeID,
		Cluster:  opts.Cluster,
		DataDir:  opts.DataDir,
		APIAddr:  FreeAddr(t),
		RaftAddr: FreeAddr(t),
		HTTPAddr: FreeAddr(t),
		CAFile:   opts.CAFile,
		Env:      opts.Env,
		t:        t,
		bin:      Binary(t, "meshfed"),
	}
	if s.DataDir == "" {
		s.DataDir = t.TempDir()
	}
	if err := os.MkdirAll(s.DataDir, 0o700); err != nil {
		t.Fatalf("creating data dir: %v", err)
	}
	if opts.Bootstrap || opts.Dev {
		s.CAFile = filepath.Join(s.DataDir, CAFile)
	}
	logLevel := opts.LogLevel
	if logLevel == "" {
		logLevel = "debug"
	}
	args := []string{"server"}
	if opts.Dev {
		args = append(args, "--dev")
	}
	if opts.Bootstrap {
		args = append(args, "--bootstrap")
	}
	args = append(args,
		"--data-dir", s.DataDir,
		"--node-id", s.NodeID,
		"--cluster", s.Cluster,
		"--api-addr", s.APIAddr,
		"--raft-addr", s.RaftAddr,
		"--http-addr", s.HTTPAddr,
		"--log-level", logLevel,
	)
	if opts.TrustDomain != "" {
		args = append(args, "--trust-domain", opts.TrustDomain)
	}
	for _, j := range opts.JoinAddrs {
		args = append(args, "--join", j)
	}
	if opts.JoinToken != "" {
		args = append(args, "--join-token", opts.JoinToken)
	}
	if opts.CAFile != "" && len(opts.JoinAddrs) > 0 {
		args = append(args, "--ca-file", opts.CAFile)
	}
	s.Args = append(args, opts.ExtraArgs...)

	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Logf("stopping server %s: %v", s.NodeID, err)
		}
		if t.Failed() {
			s.dumpLog()
		}
	})
	return s
}

// StartServer is NewServer and Start; it fails the test if the process
// does not start.
func StartServer(t testing.TB, opts ServerOptions) *Server {
	t.Helper()
	s := NewServer(t, opts)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s
}

// Start starts the process. It does not wait for readiness (WaitReady).
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done != nil {
		select {
		case <-s.done:
		default:
			return fmt.Errorf("server %s is already running", s.NodeID)
		}
	}
	stderr, err := os.OpenFile(filepath.Join(s.DataDir, StderrFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	stdout, err := os.OpenFile(filepath.Join(s.DataDir, StdoutFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		stderr.Close()
		return err
	}
	fmt.Fprintf(stderr, "=== testharness %s: %s %s\n", time.Now().Format(time.RFC3339Nano), s.bin, strings.Join(s.Args, " "))
	cmd := exec.Command(s.bin, s.Args...)
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.Env = append(cleanEnv(), s.Env...)
	setSysProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		stderr.Close()
		stdout.Close()
		return fmt.Errorf("starting server %s: %w", s.NodeID, err)
	}
	done := make(chan struct{})
	s.Cmd, s.done, s.waitErr, s.paused = cmd, done, nil, false
	// The goroutine ends when the process does; Stop and Kill wait for it.
	go func() {
		err := cmd.Wait()
		stderr.Close()
		stdout.Close()
		s.mu.Lock()
		s.waitErr = err
		s.mu.Unlock()
		close(done)
	}()
	return nil
}

// cleanEnv is the test's environment without MESHFED_* variables, so that a
// developer's shell settings do not leak into the servers or the CLI.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MESHFED_") {
			env = append(env, kv)
		}
	}
	return env
}

// current returns the running process and its done channel, or nils.
func (s *Server) current() (*exec.Cmd, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		return nil, nil
	}
	select {
	case <-s.done:
		return nil, nil
	default:
		return s.Cmd, s.done
	}
}

// Running reports whether the process is alive (possibly paused).
func (s *Server) Running() bool {
	cmd, _ := s.current()
	return cmd != nil
}

// Paused reports whether the process was stopped with Pause.
func (s *Server) Paused() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused && s.done != nil
}

// Exited returns a channel closed when the current process exits, and nil
// if none was started.
func (s *Server) Exited() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// ExitErr returns the error of the last exit (nil for status 0).
func (s *Server) ExitErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waitErr
}

// Stop sends SIGTERM and waits for the process to exit, then SIGKILL after
// StopTimeout. It returns an error if the server did not exit cleanly. A
// server that is not running is not an error.
func (s *Server) Stop() error {
	cmd, done := s.current()
	if cmd == nil {
		return nil
	}
	// A paused process would not see SIGTERM until continued.
	_ = cmd.Process.Signal(syscall.SIGCONT)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling server %s: %w", s.NodeID, err)
	}
	timeout := s.StopTimeout
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	select {
	case <-done:
		if err := s.ExitErr(); err != nil {
			return fmt.Errorf("server %s exited after SIGTERM: %w", s.NodeID, err)
		}
		return nil
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("server %s did not exit within %s of SIGTERM; killed it", s.NodeID, timeout)
	}
}

// Kill sends SIGKILL and waits for the process to exit.
func (s *Server) Kill() error {
	cmd, done := s.current()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing server %s: %w", s.NodeID, err)
	}
	<-done
	return nil
}

// Pause freezes the process with SIGSTOP: its sockets stay open but it
// answers nothing, like a partitioned or hung server.
func (s *Server) Pause() error {
	return s.signal(syscall.SIGSTOP, true)
}

// Resume continues a paused process with SIGCONT.
func (s *Server) Resume() error {
	return s.signal(syscall.SIGCONT, false)
}

func (s *Server) signal(sig syscall.Signal, paused bool) error {
	cmd, _ := s.current()
	if cmd == nil {
		return fmt.Errorf("server %s is not running", s.NodeID)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("sending %v to server %s: %w", sig, s.NodeID, err)
	}
	s.mu.Lock()
	s.paused = paused
	s.mu.Unlock()
	return nil
}

// Restart stops the server (if running) and starts it again with the same
// arguments and data directory.
func (s *Server) Restart() error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.Start()
}

// WaitReady polls https://<http-addr>/readyz, verifying the server against
// CAFile, until it answers 200 or timeout passes.
func (s *Server) WaitReady(timeout time.Duration) error {
	return Poll(timeout, func() error {
		if !s.Running() {
			return fmt.Errorf("server %s is not running (exit: %v)", s.NodeID, s.ExitErr())
		}
		return s.Ready()
	})
}

// Ready asks /readyz once.
func (s *Server) Ready() error {
	if s.CAFile == "" {
		return errors.New("no CA file to verify the server with")
	}
	roots, err := tlsutil.LoadCertificatesFile(s.CAFile)
	if err != nil {
		return err
	}
	hc := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsutil.APIClient(roots), DisableKeepAlives: true},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+s.HTTPAddr+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz of %s: %s: %s", s.NodeID, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// AdminToken reads <data-dir>/admin.token (bootstrap servers only).
func (s *Server) AdminToken() (string, error) {
	b, err := os.ReadFile(filepath.Join(s.DataDir, AdminTokenFile))
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s is empty", AdminTokenFile)
	}
	return tok, nil
}

// Log returns what the server wrote to standard error so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.DataDir, StderrFile))
	return string(b)
}

func (s *Server) dumpLog() {
	log := s.Log()
	if len(log) > logDumpLimit {
		log = "...\n" + log[len(log)-logDumpLimit:]
	}
	s.t.Logf("=== stderr of server %s (%s) ===\n%s=== end of server %s ===", s.NodeID, filepath.Join(s.DataDir, StderrFile), log, s.NodeID)
}
