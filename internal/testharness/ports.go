package testharness

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
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

// lowestPort is the bottom of the range FreePort picks from.
const lowestPort = 10000

// ephemeralStart reads the first port of the kernel's ephemeral range, the
// range that "listen on :0" and the source ports of outgoing connections
// come from. FreePort stays below it: a port picked from that range, closed
// and bound again later can be taken in between by any connection another
// process (or test package) opens, which fails the bind with "address
// already in use".
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return n
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that this test binary has not handed out before. Ports come from below
// the ephemeral range where there is room for them (see ephemeralStart);
// otherwise the kernel picks one.
func FreePort(tb testing.TB) int {
	tb.Helper()
	handedOut.mu.Lock()
	defer handedOut.mu.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[int]bool{}
	}
	top := ephemeralStart()
	for range 200 {
		port := 0
		if top-lowestPort >= 1000 {
			port = lowestPort + rand.IntN(top-lowestPort)
			if handedOut.ports[port] {
				continue
			}
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			if port != 0 {
				continue // taken by someone else; try another
			}
			tb.Fatalf("finding a free port: %v", err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
	tb.Fatalf("no new free port after 200 tries")
	return 0
}

// FreeAddr returns "127.0.0.1:<free port>".
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(tb)))
}
