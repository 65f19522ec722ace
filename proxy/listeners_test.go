package proxy

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestListenerGroup: connections on each listener reach that listener's
// handler; a closed listener refuses connections while the others go on;
// a port in use fails listen; closing the group closes the rest.
func TestListenerGroup(t *testing.T) {
	g := newListenerGroup(slog.New(slog.DiscardHandler))
	defer g.close()
	got := make(chan string, 16)
	handler := func(name string) func(net.Conn) {
		return func(c net.Conn) {
			defer c.Close()
			if _, ok := c.(*net.TCPConn); !ok {
				t.Errorf("handler got %T, want *net.TCPConn", c)
			}
			b, _ := io.ReadAll(c)
			got <- name + ":" + string(b)
		}
	}
	var ls []*groupListener
	for _, name := range []string{"a", "b", "c"} {
		l, err := g.listen("127.0.0.1:0", handler(name))
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	send := func(l *groupListener, msg string) error {
		c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(msg))
		return err
	}
	recv := func() string {
		select {
		case s := <-got:
			return s
		case <-time.After(10 * time.Second):
			t.Fatal("no connection reached a handler")
			return ""
		}
	}
	for i, l := range ls {
		for j := range 3 {
			msg := strings.Repeat("x", i+j+1)
			if err := send(l, msg); err != nil {
				t.Fatal(err)
			}
			if s, want := recv(), []string{"a", "b", "c"}[i]+":"+msg; s != want {
				t.Fatalf("handler got %q, want %q", s, want)
			}
		}
	}

	// A port in use.
	if _, err := g.listen(ls[0].Addr().String(), handler("dup")); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("listen on a port in use: err = %v, want EADDRINUSE", err)
	}

	// Closing one listener: its port refuses, the others still accept.
	if err := ls[1].Close(); err != nil {
		t.Fatal(err)
	}
	if err := ls[1].Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if c, err := net.DialTimeout("tcp", ls[1].Addr().String(), 5*time.Second); err == nil {
		c.Close()
		t.Fatal("a closed listener still accepts connections")
	}
	if err := send(ls[2], "after"); err != nil {
		t.Fatal(err)
	}
	if s := recv(); s != "c:after" {
		t.Fatalf("got %q", s)
	}

	// Many connections at once on one listener all arrive.
	const n = 100
	errs := make(chan error, n)
	for range n {
		go func() { errs <- send(ls[0], "m") }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for range n {
		if s := recv(); s != "a:m" {
			t.Fatalf("got %q", s)
		}
	}

	g.close()
	for _, l := range []*groupListener{ls[0], ls[2]} {
		if c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second); err == nil {
			c.Close()
			t.Fatalf("%s accepts after the group was closed", l.Addr())
		}
	}
	if _, err := g.listen("127.0.0.1:0", handler("late")); err == nil {
		t.Fatal("listen on a closed group succeeded")
	}
}
