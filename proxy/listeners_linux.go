package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// listenerGroup accepts connections on many listening sockets with one
// goroutine. A proxy has a listener per --upstream, often hundreds of
// them; a goroutine blocked in Accept on each costs a stack and a
// goroutine apiece (about 3 KB), most of the memory of an upstream that
// is rarely called. Here the sockets sit in one epoll set, and the
// goroutine that waits on it hands every accepted connection to its
// listener's handler on a new goroutine.
//
// Each listener is opened with net.Listen, so addresses, socket options
// and errors are those of any Go listener; the group keeps a duplicate of
// its descriptor and closes the original. Accepted connections become
// ordinary *net.TCPConn values (net.FileConn), with Go's defaults (no
// Nagle, keep-alive).
type listenerGroup struct {
	log *slog.Logger

	mu      sync.Mutex
	epfd    int
	wakefd  int
	started bool
	stopped bool
	done    chan struct{}
	nextID  int32
	byID    map[int32]*groupListener
}

// groupListener is one listening socket of a group.
type groupListener struct {
	g      *listenerGroup
	id     int32
	fd     int
	addr   net.Addr
	handle func(net.Conn)
	closed bool
}

func newListenerGroup(log *slog.Logger) *listenerGroup {
	return &listenerGroup{log: log, epfd: -1, wakefd: -1, byID: map[int32]*groupListener{}, done: make(chan struct{})}
}

// listen opens addr and hands every connection accepted on it to handle,
// each on its own goroutine.
func (g *listenerGroup) listen(addr string, handle func(net.Conn)) (*groupListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	fd, err := dupListenerFD(ln.(*net.TCPListener))
	la := ln.Addr()
	ln.Close() // the duplicate keeps the socket listening
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		unix.Close(fd)
		return nil, net.ErrClosed
	}
	if err := g.startLocked(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	g.nextID++
	l := &groupListener{g: g, id: g.nextID, fd: fd, addr: la, handle: handle}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: l.id}
	if err := unix.EpollCtl(g.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	g.byID[l.id] = l
	return l, nil
}

// dupListenerFD returns a new descriptor for ln's socket. It shares the
// socket's open file description, so it is non-blocking as Go made it.
func dupListenerFD(ln *net.TCPListener) (int, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup: %w", derr)
	}
	return fd, nil
}

func (g *listenerGroup) startLocked() error {
	if g.started {
		return nil
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: 0} // id 0 is the wake-up
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	g.epfd, g.wakefd, g.started = epfd, wakefd, true
	go g.loop()
	return nil
}

// loop waits for listening sockets to become readable and accepts what
// is pending on them. It holds the group's lock while it accepts, so
// that once Close has returned no connection of that listener reaches
// its handler.
func (g *listenerGroup) loop() {
	defer close(g.done)
	var events [64]unix.EpollEvent
	backoff := time.Duration(0)
	for {
		n, err := unix.EpollWait(g.epfd, events[:], -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			g.log.Error("listener group stopped", "err", err)
			return
		}
		tooMany := false
		g.mu.Lock()
		if g.stopped {
			g.mu.Unlock()
			return
		}
		for _, ev := range events[:n] {
			l := g.byID[ev.Fd]
			if l == nil {
				continue
			}
			if l.acceptLocked() {
				tooMany = true
			}
		}
		g.mu.Unlock()
		// Out of descriptors: the sockets stay readable, so wait a little
		// before trying again rather than spin (as net/http's server does).
		if tooMany {
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff < time.Second {
				backoff *= 2
			}
			time.Sleep(backoff)
		} else {
			backoff = 0
		}
	}
}

// acceptLocked accepts the connections pending on l, at most 64, and
// reports whether the process ran out of descriptors.
func (l *groupListener) acceptLocked() (outOfFDs bool) {
	for range 64 {
		nfd, _, err := unix.Accept4(l.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case err == nil:
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EWOULDBLOCK):
			return false
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
			continue
		case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE), errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
			l.g.log.Warn("accepting a connection", "listen", l.addr.String(), "err", err)
			return true
		default:
			l.g.log.Warn("accepting a connection", "listen", l.addr.String(), "err", err)
			return false
		}
		f := os.NewFile(uintptr(nfd), "")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			l.g.log.Warn("accepting a connection", "listen", l.addr.String(), "err", err)
			continue
		}
		go l.handle(c)
	}
	return false
}

// Addr is the address the listener is bound to.
func (l *groupListener) Addr() net.Addr { return l.addr }

// Close stops accepting on l. Connections already handed out stay open.
func (l *groupListener) Close() error {
	g := l.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	delete(g.byID, l.id)
	if g.epfd >= 0 && !g.stopped {
		_ = unix.EpollCtl(g.epfd, unix.EPOLL_CTL_DEL, l.fd, nil)
	}
	return unix.Close(l.fd)
}

// close stops the group's goroutine and every listener still open.
func (g *listenerGroup) close() {
	g.mu.Lock()
	ls := make([]*groupListener, 0, len(g.byID))
	for _, l := range g.byID {
		ls = append(ls, l)
	}
	g.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	g.mu.Lock()
	if g.stopped {
		g.mu.Unlock()
		return
	}
	g.stopped = true
	started := g.started
	g.mu.Unlock()
	if !started {
		return
	}
	var one [8]byte
	one[0] = 1
	_, _ = unix.Write(g.wakefd, one[:])
	<-g.done
	unix.Close(g.epfd)
	unix.Close(g.wakefd)
}
