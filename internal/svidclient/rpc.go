package svidclient

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// keepaliveTime is how long a connection may be silent before the client
// pings the server, to detect a server that vanished without closing the
// connection. meshfed servers permit pings every 15 seconds.
const keepaliveTime = 20 * time.Second

// dial connects to one server. With svid, the connection presents it as
// the client certificate (Renew, WatchBundle); without, it presents none
// (Attest). Each connection is bound to the SVID it was opened with: a
// renewed SVID is presented on new connections only.
func (c *Client) dial(addr string, svid *x509svid.SVID) (*grpc.ClientConn, error) {
	tc := tlsutil.APIClient(c.serverRoots())
	if svid != nil {
		tc.GetClientCertificate = tlsconfig.GetClientCertificate(svid)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(client.MaxMessageSize), grpc.MaxCallSendMsgSize(client.MaxMessageSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: 20 * time.Second}),
	}
	opts = append(opts, c.cfg.DialOptions...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	return conn, nil
}

// rpcFunc makes one call to the server at addr through api.
type rpcFunc func(ctx context.Context, addr string, api meshfedv1.WorkloadIdentityServiceClient) error

// call runs fn against the servers, starting with the one that answered
// last and moving on in order when one is unreachable or unavailable, with
// backoff between rounds, until fn succeeds, fails in a way retrying cannot
// fix, or ctx ends. op names the operation in errors and logs.
func (c *Client) call(ctx context.Context, op string, svid *x509svid.SVID, fn rpcFunc) error {
	bo := newBackoff(c.cfg.MinBackoff, c.cfg.MaxBackoff)
	n := len(c.cfg.Addrs)
	var lastErr error
	for {
		start := c.preferredIndex()
		for i := range n {
			idx := (start + i) % n
			addr := c.cfg.Addrs[idx]
			err := c.callOne(ctx, addr, svid, fn)
			if err == nil {
				c.setPreferred(idx)
				return nil
			}
			if ctx.Err() != nil {
				return giveUp(op, ctx.Err(), lastErr, addr, err)
			}
			if !retryable(err) {
				if _, ok := status.FromError(err); ok {
					return &refusedError{op: op, addr: addr, err: err}
				}
				return fmt.Errorf("%s via %s: %w", op, addr, err)
			}
			lastErr = fmt.Errorf("%s via %s: %w", op, addr, err)
			c.log.Warn(op+" failed, trying the next server", "addr", addr, "error", err)
		}
		d := bo.next()
		c.log.Info(op+" failed on every server, retrying", "servers", n, "in", d)
		if err := sleep(ctx, d); err != nil {
			return giveUp(op, err, lastErr, "", nil)
		}
	}
}

// giveUp says that op stopped because ctx ended, with the last server error
// for context, so that a deadline that ran out while no server answered
// reads as the reason no server answered. err is the attempt cut short by
// ctx, kept when it failed for another reason.
func giveUp(op string, ctxErr, lastErr error, addr string, err error) error {
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		switch status.Code(err) {
		case codes.Canceled, codes.DeadlineExceeded:
		default:
			lastErr = fmt.Errorf("%s via %s: %w", op, addr, err)
		}
	}
	if lastErr == nil {
		return fmt.Errorf("%s: %w", op, ctxErr)
	}
	return fmt.Errorf("%s: %w; last error: %w", op, ctxErr, lastErr)
}

// callOne runs fn once against addr on its own connection, bounded by
// RequestTimeout.
func (c *Client) callOne(ctx context.Context, addr string, svid *x509svid.SVID, fn rpcFunc) error {
	conn, err := c.dial(addr, svid)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	return fn(ctx, addr, meshfedv1.NewWorkloadIdentityServiceClient(conn))
}
