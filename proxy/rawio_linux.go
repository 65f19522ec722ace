package proxy

import (
	"errors"
	"io"
	"net"
	"os"
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
type rawIOConn struct {
	*net.TCPConn
	rc syscall.RawConn
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
	return &rawIOConn{TCPConn: tc, rc: rc}
}

func (c *rawIOConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case 0:
				n = int(r)
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
	})
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

func (c *rawIOConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	for n < len(p) {
		err := c.rc.Write(func(fd uintptr) bool {
			for n < len(p) {
				r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n))
				switch e {
				case 0:
					n += int(r)
				case syscall.EINTR:
				case syscall.EAGAIN:
					return false
				default:
					errno = e
					return true
				}
			}
			return true
		})
		if err != nil {
			return n, c.opError("write", err)
		}
		if errno != 0 {
			return n, c.opError("write", os.NewSyscallError("write", errno))
		}
	}
	return n, nil
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

// ReadFrom and WriteTo are those of io.Copy's generic loop: the embedded
// connection's would splice around the raw calls above.
func (c *rawIOConn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{c}, r)
}

func (c *rawIOConn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}
