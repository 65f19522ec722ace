package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
	"github.com/meshfed/meshfed/internal/svidclient"
)

// control is the proxy's connection to the control plane. It presents the
// proxy's current SVID (a renewal is used from the next handshake on) and
// accepts only servers of the proxy's trust domain, verified against the
// current bundle, so a CA rotation needs no restart.
type control struct {
	conn    *grpc.ClientConn
	catalog meshfedv1.CatalogServiceClient
	policy  meshfedv1.PolicyServiceClient
	mesh    meshfedv1.MeshSettingsServiceClient
	proxy   meshfedv1.ProxyServiceClient
}

func dialControl(servers []string, id *svidclient.Client, td spiffeid.TrustDomain) (*control, error) {
	tc := tlsconfig.MTLSClientConfig(id, id, tlsconfig.AdaptMatcher(mfid.MatchServerOf(td)))
	tc.MinVersion = tlsTLS13
	// Every server address, tried in order by pick_first: a server that
	// goes away moves the connection (and every watch on it) to the next.
	r := manual.NewBuilderWithScheme("meshfed-servers")
	addrs := make([]resolver.Address, len(servers))
	for i, s := range servers {
		addrs[i] = resolver.Address{Addr: s}
	}
	r.InitialState(resolver.State{Addresses: addrs})
	conn, err := grpc.NewClient("meshfed-servers:///control-plane",
		grpc.WithResolvers(r),
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(client.MaxMessageSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 10 * time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("connecting to the control plane: %w", err)
	}
	return &control{
		conn:    conn,
		catalog: meshfedv1.NewCatalogServiceClient(conn),
		policy:  meshfedv1.NewPolicyServiceClient(conn),
		mesh:    meshfedv1.NewMeshSettingsServiceClient(conn),
		proxy:   meshfedv1.NewProxyServiceClient(conn),
	}, nil
}

// retryLoop runs fn until ctx ends, with jittered exponential backoff
// between failures (reset after a run that lasted a while). fn returning
// a permanent error (PermissionDenied, Unauthenticated) still retries, more
// slowly: an operator may fix the policy or the service.
func (p *Proxy) retryLoop(ctx context.Context, what string, fn func(context.Context) error) {
	const minWait, maxWait = 200 * time.Millisecond, 5 * time.Second
	wait := minWait
	for ctx.Err() == nil {
		start := time.Now()
		err := fn(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			wait = minWait
		}
		lvl := p.log.Warn
		if errors.Is(err, io.EOF) || status.Code(err) == codes.Unavailable {
			lvl = p.log.Info
		}
		lvl("control plane stream ended; retrying", "stream", what, "err", err, "retry_in", wait.Round(time.Millisecond))
		if !sleepCtx(ctx, wait/2+rand.N(wait/2+1)) {
			return
		}
		wait = min(wait*2, maxWait)
	}
}
