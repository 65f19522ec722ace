package controlplane

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// tlsStreamLayer carries Raft over mutual TLS: both ends present a server
// certificate from the cluster CA and check the other's server SPIFFE ID.
// Handshakes run off the accept loop, so a client that connects and stays
// silent delays nobody, and only authenticated connections reach Raft.
type tlsStreamLayer struct {
	ln        net.Listener
	server    *tls.Config
	advertise net.Addr
	client    *tls.Config
	dial      func(ctx context.Context, addr string) (net.Conn, error)
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

const raftHandshakeTimeout = 10 * time.Second

func newTLSStreamLayer(addr, advertise string, server, client *tls.Config, dial func(context.Context, string) (net.Conn, error)) (*tlsStreamLayer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for raft on %s: %w", addr, err)
	}
	adv, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("resolving raft address %s: %w", addr, err)
	}
	l := &tlsStreamLayer{ln: ln, server: server, advertise: adv, client: client, dial: dial,
		conns: make(chan net.Conn), closed: make(chan struct{})}
	go l.acceptLoop()
	return l, nil
}

func (l *tlsStreamLayer) acceptLoop() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			l.Close()
			return
		}
		go l.handshake(c)
	}
}

func (l *tlsStreamLayer) handshake(c net.Conn) {
	tc := tls.Server(c, l.server)
	_ = tc.SetDeadline(time.Now().Add(raftHandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		tc.Close()
		return
	}
	_ = tc.SetDeadline(time.Time{})
	select {
	case l.conns <- tc:
	case <-l.closed:
		tc.Close()
	}
}

// Accept implements net.Listener.
func (l *tlsStreamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *tlsStreamLayer) Close() error {
	l.closeOnce.Do(func() {
		close(l.closed)
		l.ln.Close()
	})
	return nil
}

// Addr implements net.Listener.
func (l *tlsStreamLayer) Addr() net.Addr { return l.advertise }

// Dial implements raft.StreamLayer.
func (l *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	raw, err := l.dial(ctx, string(address))
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, l.client)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}
