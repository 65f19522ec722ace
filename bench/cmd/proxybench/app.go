package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

// bodySize is the size of every request body and every response body.
const bodySize = 1024

// app is the upstream application: an HTTP/1.1 server in this process that
// reads and discards the request body and answers 200 with a fixed 1 KB
// body. It does as little as possible, so that the latency it adds is the
// same small constant behind every target.
type app struct {
	srv  *http.Server
	addr string
	port int
}

func startApp() (*app, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	resp := bytes.Repeat([]byte("x"), bodySize)
	length := strconv.Itoa(len(resp))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", length)
		_, _ = w.Write(resp)
	})
	a := &app{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       10 * time.Minute,
		},
		addr: l.Addr().String(),
		port: l.Addr().(*net.TCPAddr).Port,
	}
	go func() {
		if err := a.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			harness.Logf("app on %s stopped: %v", a.addr, err)
		}
	}()
	return a, nil
}

func (a *app) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = a.srv.Shutdown(ctx)
}
