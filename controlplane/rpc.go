package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/fsm"
	"github.com/meshfed/meshfed/controlplane/state"
	"github.com/meshfed/meshfed/controlplane/validate"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// applyTimeout bounds how long a write waits to be enqueued and committed.
const applyTimeout = 10 * time.Second

func (s *Server) startAPI() error {
	ln, err := net.Listen("tcp", s.cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("listening for the API on %s: %w", s.cfg.APIAddr, err)
	}
	s.grpc = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsutil.APIServer(s.tls))),
		grpc.MaxRecvMsgSize(client.MaxMessageSize),
		grpc.MaxSendMsgSize(client.MaxMessageSize),
		grpc.ChainUnaryInterceptor(s.metrics.unary, s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.metrics.stream, s.streamInterceptor),
		// Workloads keep a bundle watch open for hours: let them ping every
		// 20 seconds so that a server that vanished is noticed quickly.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
	)
	api := &apiServer{s: s}
	meshfedv1.RegisterCatalogServiceServer(s.grpc, api)
	meshfedv1.RegisterPolicyServiceServer(s.grpc, api)
	meshfedv1.RegisterMeshSettingsServiceServer(s.grpc, api)
	meshfedv1.RegisterTokenServiceServer(s.grpc, api)
	meshfedv1.RegisterClusterServiceServer(s.grpc, api)
	meshfedv1.RegisterCAServiceServer(s.grpc, api)
	meshfedv1.RegisterIdentityServiceServer(s.grpc, api)
	meshfedv1.RegisterWorkloadIdentityServiceServer(s.grpc, api)
	meshfedv1.RegisterPeeringServiceServer(s.grpc, api)
	meshfedv1.RegisterPeerStreamServiceServer(s.grpc, api)
	meshfedv1.RegisterProxyServiceServer(s.grpc, api)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, hs)
	reflection.Register(s.grpc)
	go func() {
		if err := s.grpc.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("API server stopped", "error", err)
		}
	}()
	return nil
}

// apiServer implements every gRPC service. Services and RPCs that belong to
// later capabilities answer UNIMPLEMENTED through the embedded types.
type apiServer struct {
	s *Server
	meshfedv1.UnimplementedCatalogServiceServer
	meshfedv1.UnimplementedPolicyServiceServer
	meshfedv1.UnimplementedMeshSettingsServiceServer
	meshfedv1.UnimplementedTokenServiceServer
	meshfedv1.UnimplementedClusterServiceServer
	meshfedv1.UnimplementedCAServiceServer
	meshfedv1.UnimplementedIdentityServiceServer
	meshfedv1.UnimplementedWorkloadIdentityServiceServer
	meshfedv1.UnimplementedPeeringServiceServer
	meshfedv1.UnimplementedPeerStreamServiceServer
	meshfedv1.UnimplementedProxyServiceServer
}

// applyWrite proposes a resource write and returns the FSM's result. CAS
// failures and other rejections come back as errors from the FSM.
func (s *Server) applyWrite(ctx context.Context, t fsm.MessageType, w *meshfedv1.ResourceWrite) (*fsm.Result, error) {
	if w.Time == nil {
		w.Time = nowProto()
	}
	return s.propose(t, w)
}

// applyBatch proposes writes that apply together or not at all; each gets
// the proposal time unless it has one.
func (s *Server) applyBatch(_ context.Context, b *meshfedv1.ResourceWriteBatch) (*fsm.Result, error) {
	now := nowProto()
	for _, w := range b.Writes {
		if w.Time == nil {
			w.Time = now
		}
	}
	return s.propose(fsm.BatchWriteType, b)
}

// propose applies one command through Raft on the leader. The result comes
// back with the FSM's error, if any, as the error too.
func (s *Server) propose(t fsm.MessageType, m proto.Message) (*fsm.Result, error) {
	data, err := fsm.Encode(t, m)
	if err != nil {
		return nil, err
	}
	if !s.isLeader() {
		return nil, raft.ErrNotLeader
	}
	f := s.raft.Apply(data, applyTimeout)
	if err := f.Error(); err != nil {
		return nil, err
	}
	res, ok := f.Response().(*fsm.Result)
	if !ok {
		return nil, fmt.Errorf("unexpected FSM response %T", f.Response())
	}
	return res, res.Err
}

// consistentRead makes the local state at least as new as everything the
// cluster has committed, with leadership confirmed by a quorum. Only the
// leader can do this; followers forward consistent reads to it.
func (s *Server) consistentRead(ctx context.Context) error {
	if err := s.raft.VerifyLeader().Error(); err != nil {
		return status.Errorf(codes.Unavailable, "consistent read: leadership not confirmed: %v", err)
	}
	target := s.raft.CommitIndex()
	for s.raft.AppliedIndex() < target {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// toStatus converts an internal error to a gRPC status, once, at the edge.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var fe *validate.FieldError
	switch {
	case errors.As(err, &fe):
		return status.Error(codes.InvalidArgument, fe.Error())
	case errors.Is(err, state.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, state.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, state.ErrVersionMismatch):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrRaftShutdown),
		errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrAbortedByRestore):
		return status.Errorf(codes.Unavailable, "%v; retry", err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func isVersionMismatch(err error) bool { return errors.Is(err, state.ErrVersionMismatch) }

// methodName returns "Service/Method" of a full gRPC method name.
func methodName(full string) (svc, method string) {
	full = strings.TrimPrefix(full, "/")
	i := strings.LastIndex(full, "/")
	if i < 0 {
		return full, ""
	}
	return full[:i], full[i+1:]
}
