//go:build !linux

package proxy

import (
	"errors"
	"log/slog"
	"net"
	"sync"
)

// listenerGroup accepts connections on many listeners. Elsewhere than on
// Linux (see listeners_linux.go) each listener has its own goroutine.
type listenerGroup struct {
	log *slog.Logger

	mu      sync.Mutex
	stopped bool
	open    map[*groupListener]struct{}
}

type groupListener struct {
	g  *listenerGroup
	ln net.Listener
}

func newListenerGroup(log *slog.Logger) *listenerGroup {
	return &listenerGroup{log: log, open: map[*groupListener]struct{}{}}
}

func (g *listenerGroup) listen(addr string, handle func(net.Conn)) (*groupListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		ln.Close()
		return nil, net.ErrClosed
	}
	l := &groupListener{g: g, ln: ln}
	g.open[l] = struct{}{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				g.log.Warn("accepting a connection", "listen", ln.Addr().String(), "err", err)
				continue
			}
			go handle(c)
		}
	}()
	return l, nil
}

func (l *groupListener) Addr() net.Addr { return l.ln.Addr() }

func (l *groupListener) Close() error {
	l.g.mu.Lock()
	delete(l.g.open, l)
	l.g.mu.Unlock()
	return l.ln.Close()
}

func (g *listenerGroup) close() {
	g.mu.Lock()
	g.stopped = true
	ls := make([]*groupListener, 0, len(g.open))
	for l := range g.open {
		ls = append(ls, l)
	}
	g.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
}
