package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestRawIOConn: reads and writes through rawIO behave as the net
// package's do: data both ways (a write larger than the socket buffers
// included), EOF after the peer's CloseWrite, deadlines as timeouts, and
// net.ErrClosed after Close.
func TestRawIOConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, peer := pair(t, ln)
	defer peer.Close()
	defer c.Close()
	if _, ok := c.(interface{ CloseWrite() error }); !ok {
		t.Fatal("the wrapped connection lost CloseWrite")
	}
	if _, ok := c.(*rawIOConn); !ok {
		t.Fatalf("rawIO returned %T for a TCP connection", c)
	}

	// 8 MiB one way, far more than the socket buffers hold, while the
	// peer reads slowly enough that writes must wait for room.
	big := bytes.Repeat([]byte("0123456789abcdef"), 8<<20/16)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(len(big))))
		got <- b
	}()
	if n, err := c.Write(big); err != nil || n != len(big) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if b := <-got; !bytes.Equal(b, big) {
		t.Fatalf("peer read %d bytes, not what was written", len(b))
	}
	if n, err := c.Write(nil); n != 0 || err != nil {
		t.Fatalf("empty Write = %d, %v", n, err)
	}

	// The other way, then EOF.
	go func() {
		_, _ = peer.Write([]byte("hello"))
		_ = peer.(*net.TCPConn).CloseWrite()
	}()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "hello" {
		t.Fatalf("ReadAll = %q, %v", b, err)
	}

	// A deadline: a timeout, as net.Error and os.ErrDeadlineExceeded.
	c2, p2 := pair(t, ln)
	defer p2.Close()
	_ = c2.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = c2.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("Read past the deadline: %#v, want a read OpError", err)
	}
	_ = c2.SetReadDeadline(time.Time{})

	// Closed: net.ErrClosed, for a read that waits and for a later write.
	done := make(chan error, 1)
	go func() {
		_, err := c2.Read(make([]byte, 10))
		done <- err
	}()
	time.AfterFunc(20*time.Millisecond, func() { c2.Close() })
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read on a closed connection: %v", err)
	}
	if _, err := c2.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write on a closed connection: %v", err)
	}

	// The peer gone: a write fails rather than hanging.
	c3, p3 := pair(t, ln)
	defer c3.Close()
	p3.(*net.TCPConn).SetLinger(0)
	p3.Close()
	var werr error
	for range 100 {
		if _, werr = c3.Write([]byte("after reset")); werr != nil {
			break
		}
	}
	if werr == nil {
		t.Fatal("writes to a reset connection kept succeeding")
	}
}

// pair dials ln and returns the wrapped client side and the server side.
func pair(t *testing.T, ln net.Listener) (net.Conn, net.Conn) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	return rawIO(d), p
}

// TestRawIOConnAllocs: a write and a read on a kept-alive connection
// allocate nothing.
func TestRawIOConnAllocs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, b := pair(t, ln)
	defer a.Close()
	defer b.Close()
	b = rawIO(b)
	msg := []byte("ping")
	buf := make([]byte, 16)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := a.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(b, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per write and read, want 0", allocs)
	}
}
