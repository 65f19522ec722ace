package workloadapi

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// securityHeader is the metadata key every Workload API request carries,
// with the value "true" (SPIFFE Workload Endpoint specification).
const securityHeader = "workload.spiffe.io"

// errX509Only answers the RPCs of the profiles meshfed does not implement.
var errX509Only = status.Error(codes.Unimplemented, "meshfed issues X.509 SVIDs only")

// checkSecurityHeader refuses a request without "workload.spiffe.io: true".
func checkSecurityHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(securityHeader); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func unarySecurityHeader(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := checkSecurityHeader(ctx); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func streamSecurityHeader(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := checkSecurityHeader(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}

// service implements the SpiffeWorkloadAPI gRPC service.
type service struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	s *Server
}

func (v *service) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	return serveStream(v.s, stream, "FetchX509SVID", v.s.x509SVIDResponse)
}

func (v *service) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return serveStream(v.s, stream, "FetchX509Bundles", v.s.x509BundlesResponse)
}

func (*service) FetchJWTSVID(context.Context, *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	return nil, errX509Only
}

func (*service) FetchJWTBundles(*workload.JWTBundlesRequest, grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return errX509Only
}

func (*service) ValidateJWTSVID(context.Context, *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	return nil, errX509Only
}

func (*service) FetchWITSVID(*workload.WITSVIDRequest, grpc.ServerStreamingServer[workload.WITSVIDResponse]) error {
	return errX509Only
}

func (*service) FetchWITBundles(*workload.WITBundlesRequest, grpc.ServerStreamingServer[workload.WITBundlesResponse]) error {
	return errX509Only
}

// serveStream sends what build returns on stream: at once when build
// succeeds, then again after every change the Source signals that alters
// the response. While build fails before anything was sent (no SVID or no
// bundle yet) the stream stays open and waits: see the package
// documentation for why this is preferred to PermissionDenied. It returns
// when the client goes away or the Server closes.
func serveStream[T any, M interface {
	*T
	proto.Message
}](s *Server, stream grpc.ServerStreamingServer[T], rpc string, build func() (M, error)) error {
	ctx := stream.Context()
	log := s.log.With("rpc", rpc)

	// Subscribe before the first read of the Source, so that a change
	// between the two is not missed.
	events, unsubscribe := s.src.Subscribe()
	defer unsubscribe()

	var (
		last    M
		sent    bool
		waiting bool
	)
	for {
		resp, err := build()
		switch {
		case err != nil && !sent:
			if !waiting {
				log.Debug("nothing to send yet; waiting for the source", "reason", err)
				waiting = true
			}
		case err != nil:
			log.Warn("cannot build an update; the client keeps the last one", "err", err)
		case !sent || !proto.Equal(resp, last):
			if err := stream.Send(resp); err != nil {
				log.Debug("stream ended", "err", err)
				return err
			}
			if !sent {
				log.Debug("sent the first response")
			} else {
				log.Debug("sent an update")
			}
			last, sent = resp, true
		}

		select {
		case <-events:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.done:
			return status.Error(codes.Unavailable, "workload API server is shutting down")
		}
	}
}

// x509SVIDResponse builds the FetchX509SVID response from the Source.
func (s *Server) x509SVIDResponse() (*workload.X509SVIDResponse, error) {
	svid, err := s.src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("no X.509 SVID: %w", err)
	}
	if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return nil, errors.New("incomplete X.509 SVID")
	}
	key, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("encoding the SVID's private key: %w", err)
	}
	td := svid.ID.TrustDomain()
	bundles := s.src.X509Bundles()
	own, ok := bundles.Get(td)
	if !ok || own.Empty() {
		return nil, fmt.Errorf("no bundle for trust domain %q of the SVID", td)
	}
	resp := &workload.X509SVIDResponse{
		Svids: []*workload.X509SVID{{
			SpiffeId:    svid.ID.String(),
			X509Svid:    concatDER(svid.Certificates),
			X509SvidKey: key,
			Bundle:      concatDER(own.X509Authorities()),
			Hint:        svid.Hint,
		}},
	}
	for _, b := range bundles.Bundles() {
		if b.TrustDomain() == td || b.Empty() {
			continue
		}
		if resp.FederatedBundles == nil {
			resp.FederatedBundles = map[string][]byte{}
		}
		resp.FederatedBundles[b.TrustDomain().IDString()] = concatDER(b.X509Authorities())
	}
	return resp, nil
}

// x509BundlesResponse builds the FetchX509Bundles response from the Source.
func (s *Server) x509BundlesResponse() (*workload.X509BundlesResponse, error) {
	resp := &workload.X509BundlesResponse{Bundles: map[string][]byte{}}
	for _, b := range s.src.X509Bundles().Bundles() {
		if !b.Empty() {
			resp.Bundles[b.TrustDomain().IDString()] = concatDER(b.X509Authorities())
		}
	}
	if len(resp.Bundles) == 0 {
		return nil, errors.New("no trust bundle")
	}
	return resp, nil
}

// concatDER concatenates the DER encodings of certs, the encoding of
// certificate lists in Workload API messages.
func concatDER(certs []*x509.Certificate) []byte {
	n := 0
	for _, c := range certs {
		n += len(c.Raw)
	}
	out := make([]byte, 0, n)
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
