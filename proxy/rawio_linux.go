package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// rawIOConn is a TCP connection whose reads and writes are made as raw
// system calls on its non-blocking socket, waiting for readiness through
// Go's poller as usual (deadlines included).
//
// Why: a read or write through the net package tells the scheduler it is
// entering a system call, and the first such call after the process went
// idle wakes the runtime's monitor thread (sysmon), which then polls
// every 20 µs for a while before it sleeps again. A proxy at a thousand
// requests a second goes idle between almost every request, so that
// monitor took about a quarter of its CPU. A system call on a
// non-blocking socket never blocks, so it need not tell the scheduler.
//
// Reads are serialized, and so are writes: the state of the call in
// progress lives in the connection, so that a read or write allocates
// nothing.
type rawIOConn struct {
	// net.Conn is the *net.TCPConn, embedded as the interface so that
	// its ReadFrom and WriteTo (splice and sendfile, around the raw
	// calls) are not promoted: io.Copy and bufio then use Read and Write.
	net.Conn
	tc *net.TCPConn
	rc syscall.RawConn

	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(uintptr) bool

	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werrno  syscall.Errno
	writeFn func(uintptr) bool
}

// rawIO wraps a TCP connection; any other connection is returned as is.
func rawIO(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	rw := &rawIOConn{Conn: tc, tc: tc, rc: rc}
	rw.readFn = rw.read
	rw.writeFn = rw.write
	return rw
}

// CloseWrite shuts down the sending side (TCP half-close).
func (c *rawIOConn) CloseWrite() error { return c.tc.CloseWrite() }

// read is called by RawConn.Read until it returns true.
func (c *rawIOConn) read(fd uintptr) bool {
	p := c.rbuf
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			c.rn = int(r)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			c.rerrno = e
			return true
		}
	}
}

func (c *rawIOConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	c.rbuf, c.rn, c.rerrno = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerrno
	c.rbuf = nil
	c.rmu.Unlock()
	if err != nil {
		return 0, c.opError("read", err)
	}
	if errno != 0 {
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// write is called by RawConn.Write until it returns true.
func (c *rawIOConn) write(fd uintptr) bool {
	p := c.wbuf
	for c.wn < len(p) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[c.wn])), uintptr(len(p)-c.wn))
		switch e {
		case 0:
			c.wn += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werrno = e
			return true
		}
	}
	return true
}

func (c *rawIOConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.wn, c.werrno = p, 0, 0
	defer func() { c.wbuf = nil }()
	for c.wn < len(p) {
		if err := c.rc.Write(c.writeFn); err != nil {
			return c.wn, c.opError("write", err)
		}
		if c.werrno != 0 {
			return c.wn, c.opError("write", os.NewSyscallError("write", c.werrno))
		}
	}
	return c.wn, nil
}

// opError makes errors look like the net package's: RawConn reports a
// closed connection or a passed deadline as a "raw-read" or "raw-write"
// error.
func (c *rawIOConn) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
