package workloadapi

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"

	"github.com/meshfed/meshfed/internal/svidclient"
)

// DefaultMode is the permission of the socket when Config.Mode is zero:
// read and write (connect) for the owner and the group.
const DefaultMode os.FileMode = 0o660

// liveProbeTimeout bounds the connection attempt Start makes to tell a
// stale socket from one another process still serves.
const liveProbeTimeout = time.Second

// Source is what a Server serves. *svidclient.Client satisfies it.
type Source interface {
	// GetX509SVID returns the current SVID, private key included, or an
	// error while there is none yet. The returned SVID must not be
	// modified afterwards; a new one replaces it.
	GetX509SVID() (*x509svid.SVID, error)
	// X509Bundles returns the own trust domain's bundle and every
	// federated one.
	X509Bundles() *x509bundle.Set
	// Subscribe returns a channel that receives a value after any change
	// of the SVID or the bundles (values may coalesce; the channel is never
	// closed) and a function that ends the subscription.
	Subscribe() (<-chan svidclient.Event, func())
}

// The Client the proxy holds its SVID with is what it serves.
var _ Source = (*svidclient.Client)(nil)

// Config configures a Server.
type Config struct {
	// Path of the unix socket to serve on. Its directory must exist.
	Path string
	// Mode is the permission of the socket (DefaultMode when zero). It is
	// applied with chmod after the socket is created, so the process umask
	// does not matter. Only permission bits are allowed.
	Mode os.FileMode
	// Logger receives stream and lifecycle events; nil discards them.
	Logger *slog.Logger
}

// Server serves the X.509 SVID profile of the SPIFFE Workload API from a
// Source on a unix socket. Start it once; Close stops it.
type Server struct {
	src  Source
	path string
	mode os.FileMode
	log  *slog.Logger

	// done is closed by Close; every stream handler returns when it is.
	done chan struct{}

	mu      sync.Mutex
	started bool
	closed  bool
	grpc    *grpc.Server
	// sock identifies the socket file Start created, so that Close removes
	// that file and not one another process put at the same path since.
	sock      os.FileInfo
	serveDone chan struct{} // closed when the Serve goroutine returned
}

// New checks cfg and returns a Server that is not serving yet.
func New(src Source, cfg Config) (*Server, error) {
	if src == nil {
		return nil, errors.New("workloadapi: nil Source")
	}
	if cfg.Path == "" {
		return nil, errors.New("workloadapi: Config.Path is required")
	}
	path, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("workloadapi: socket path %q: %w", cfg.Path, err)
	}
	mode := cfg.Mode
	if mode == 0 {
		mode = DefaultMode
	}
	if mode&^fs.ModePerm != 0 {
		return nil, fmt.Errorf("workloadapi: Config.Mode %v has bits other than permissions", cfg.Mode)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		src:  src,
		path: path,
		mode: mode,
		log:  log.With("socket", path),
		done: make(chan struct{}),
	}, nil
}

// Path is the absolute path of the socket.
func (s *Server) Path() string { return s.path }

// Start creates the socket and serves on it in the background. A stale
// socket left at Path by an earlier run is replaced; a file that is not a
// socket, or a socket another process still accepts connections on, is
// not, and Start fails. Start can be called once.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return errors.New("workloadapi: server closed")
	case s.started:
		return errors.New("workloadapi: server already started")
	}

	lis, err := s.listen()
	if err != nil {
		return err
	}
	// Stat the socket we made before chmod, so that the check and the
	// chmod concern the same file as far as the path goes.
	info, err := os.Lstat(s.path)
	if err == nil {
		err = os.Chmod(s.path, s.mode)
	}
	if err != nil {
		lis.Close()
		if info != nil {
			s.removeSocket(info)
		}
		return fmt.Errorf("workloadapi: setting mode of socket %q: %w", s.path, err)
	}

	srv := grpc.NewServer(
		grpc.UnaryInterceptor(unarySecurityHeader),
		grpc.StreamInterceptor(streamSecurityHeader),
		// Close waits for every handler, so none outlives the Server.
		grpc.WaitForHandlers(true),
	)
	workload.RegisterSpiffeWorkloadAPIServer(srv, &service{s: s})

	s.started = true
	s.grpc = srv
	s.sock = info
	s.serveDone = make(chan struct{})
	go func() {
		defer close(s.serveDone)
		if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("workload API server stopped serving", "err", err)
		}
	}()
	s.log.Info("serving the SPIFFE Workload API", "mode", s.mode)
	return nil
}

// listen prepares Path (checking its directory, removing a stale socket)
// and listens on it.
func (s *Server) listen() (*net.UnixListener, error) {
	dir := filepath.Dir(s.path)
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("workloadapi: directory %q of the socket does not exist", dir)
	case err != nil:
		return nil, fmt.Errorf("workloadapi: directory of the socket: %w", err)
	case !st.IsDir():
		return nil, fmt.Errorf("workloadapi: %q, the directory of the socket, is not a directory", dir)
	}

	if err := s.removeStale(); err != nil {
		return nil, err
	}

	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.path, Net: "unix"})
	if err != nil {
		if errors.Is(err, syscall.EINVAL) && len(s.path) > 100 {
			return nil, fmt.Errorf("workloadapi: listening on %q (%d bytes; unix socket paths are limited to about 104 to 108 bytes): %w",
				s.path, len(s.path), err)
		}
		return nil, fmt.Errorf("workloadapi: listening on %q: %w", s.path, err)
	}
	// Close removes the file itself, and only if it is still ours.
	lis.SetUnlinkOnClose(false)
	return lis, nil
}

// removeStale removes a socket left at Path by a process that no longer
// serves it. It refuses to remove anything else.
func (s *Server) removeStale() error {
	info, err := os.Lstat(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("workloadapi: %w", err)
	case info.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("workloadapi: refusing to replace %q: it exists and is not a socket (%v)", s.path, info.Mode().Type())
	}
	if conn, err := net.DialTimeout("unix", s.path, liveProbeTimeout); err == nil {
		conn.Close()
		return fmt.Errorf("workloadapi: refusing to replace %q: another process is serving on it", s.path)
	}
	if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("workloadapi: removing stale socket: %w", err)
	}
	s.log.Info("removed a stale socket")
	return nil
}

// removeSocket removes Path if it still is the file described by info.
func (s *Server) removeSocket(info os.FileInfo) error {
	cur, err := os.Lstat(s.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("workloadapi: %w", err)
	}
	if !os.SameFile(info, cur) {
		s.log.Warn("socket path was replaced by another file; leaving it")
		return nil
	}
	if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("workloadapi: removing socket: %w", err)
	}
	return nil
}

// Close stops serving: it ends every stream (clients see them end and
// reconnect, per the specification, once a server is back), waits for their
// handlers, and removes the socket. It is idempotent, and may be called
// without Start.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	srv, sock, serveDone := s.grpc, s.sock, s.serveDone
	s.mu.Unlock()

	if srv == nil {
		return nil
	}
	// Handlers have been told to return (done); Stop closes the listener
	// and the connections, which also unblocks a handler stuck sending to a
	// client that does not read, and waits for every handler.
	srv.Stop()
	<-serveDone
	err := s.removeSocket(sock)
	s.log.Info("stopped serving the SPIFFE Workload API")
	return err
}
