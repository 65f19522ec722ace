package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// forwarder sends calls a follower cannot serve to the leader, over mTLS
// with this server's certificate, carrying the caller's bearer token (or
// the workload identity of its verified SVID) so the leader authorizes the
// original caller.
type forwarder struct {
	s     *Server
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newForwarder(s *Server) *forwarder {
	return &forwarder{s: s, conns: map[string]*grpc.ClientConn{}}
}

func (f *forwarder) conn(addr string) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsutil.PeerMTLSClient(f.s.tls, f.s.td))),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(client.MaxMessageSize), grpc.MaxCallSendMsgSize(client.MaxMessageSize)),
		grpc.WithContextDialer(f.s.dial),
	)
	if err != nil {
		return nil, err
	}
	f.conns[addr] = c
	return c, nil
}

func (f *forwarder) clusterClient(addr string) meshfedv1.ClusterServiceClient {
	c, err := f.conn(addr)
	if err != nil {
		return meshfedv1.NewClusterServiceClient(errConn{err})
	}
	return meshfedv1.NewClusterServiceClient(c)
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = map[string]*grpc.ClientConn{}
}

// leaderWait bounds how long a call waits for an election to finish.
const leaderWait = 5 * time.Second

// leaderConn returns a connection to the current leader's API, waiting
// briefly for an election in progress.
func (f *forwarder) leaderConn(ctx context.Context) (*grpc.ClientConn, error) {
	deadline := time.Now().Add(leaderWait)
	for {
		if f.s.isLeader() {
			return nil, status.Error(codes.Unavailable, "this server became the leader; retry")
		}
		_, id := f.s.raft.LeaderWithID()
		if id != "" {
			_, rec, err := f.s.store().Get(nil, meshfedv1.ResourceKind_RESOURCE_KIND_SERVER, "", string(id))
			if err == nil {
				if r, ok := rec.(*meshfedv1.ServerRecord); ok {
					return f.conn(r.ApiAddr)
				}
			}
		}
		if time.Now().After(deadline) {
			return nil, status.Error(codes.Unavailable, "no leader: this server cannot reach a quorum")
		}
		select {
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// outgoing carries the caller's credentials to the leader: its bearer
// token, or the workload identity this server verified from its SVID. The
// metadata is built afresh, so nothing else the caller sent is passed on.
func outgoing(ctx context.Context) context.Context {
	md := metadata.MD{forwardedKey: []string{"1"}}
	if in, ok := metadata.FromIncomingContext(ctx); ok {
		if v := in.Get("authorization"); len(v) > 0 {
			md.Set("authorization", v...)
		}
	}
	if id := callerFrom(ctx).workload; !id.IsZero() {
		md.Set(forwardedWorkloadKey, id.String())
	}
	return metadata.NewOutgoingContext(ctx, md)
}

// forwardUnary invokes method on the leader and returns its response.
func (f *forwarder) forwardUnary(ctx context.Context, method string, req proto.Message) (any, error) {
	resp, err := newResponse(method)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	conn, err := f.leaderConn(ctx)
	if err != nil {
		return nil, err
	}
	if err := conn.Invoke(outgoing(ctx), method, req, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// newResponse allocates the response message of a method from the
// registered descriptors, so one forwarder serves every unary RPC.
func newResponse(fullMethod string) (proto.Message, error) {
	svc, m := methodName(fullMethod)
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return nil, fmt.Errorf("unknown service %s: %w", svc, err)
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a service", svc)
	}
	md := sd.Methods().ByName(protoreflect.Name(m))
	if md == nil {
		return nil, fmt.Errorf("unknown method %s", fullMethod)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return nil, err
	}
	return mt.New().Interface(), nil
}

// errConn is a ClientConnInterface that fails every call with err.
type errConn struct{ err error }

func (e errConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error { return e.err }
func (e errConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, e.err
}

// relayToLeader runs a server-streaming call on the leader and relays what
// it sends: call opens the stream on the leader's connection with the
// caller's credentials, send delivers each message to the caller.
func relayToLeader[T any](ctx context.Context, f *forwarder, call func(context.Context, *grpc.ClientConn) (grpc.ServerStreamingClient[T], error), send func(*T) error) error {
	conn, err := f.leaderConn(ctx)
	if err != nil {
		return err
	}
	up, err := call(outgoing(ctx), conn)
	if err != nil {
		return err
	}
	for {
		m, err := up.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := send(m); err != nil {
			return err
		}
	}
}
