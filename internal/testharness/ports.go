package testharness

import (
	"net"
	"strconv"
	"sync"
	"testing"
)

// handedOut remembers the ports given to this test binary, so two servers of
// one test never get the same port even though each listener is closed
// before the port is used.
var handedOut struct {
	mu    sync.Mutex
	ports map[int]bool
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that this test binary has not handed out before.
func FreePort(tb testing.TB) int {
	tb.Helper()
	handedOut.mu.Lock()
	defer handedOut.mu.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[int]bool{}
	}
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("finding a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
	tb.Fatalf("no new free port after 100 tries")
	return 0
}

// FreeAddr returns "127.0.0.1:<free port>".
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(tb)))
}
