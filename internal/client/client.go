// Package client dials the meshfed management API: TLS 1.3 against the
// cluster's CA bundle, with the caller's bearer token on every call. The CLI,
// the proxy, the Terraform provider and the tests all connect through it.
package client

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// Environment variables that supply defaults for Config.
const (
	EnvAddr   = "MESHFED_ADDR"
	EnvToken  = "MESHFED_TOKEN"
	EnvCAFile = "MESHFED_CA_FILE"
)

// MaxMessageSize bounds messages both ways; the server enforces the same.
const MaxMessageSize = 4 << 20

// Config says where and how to connect.
type Config struct {
	// Addr is host:port of any server's API.
	Addr string
	// Token is the bearer token; empty sends none.
	Token string
	// CAFile is a PEM bundle trusted for the server's certificate.
	CAFile string
	// CAPEM is used instead of CAFile when set.
	CAPEM []byte
}

// ConfigFromEnv returns a Config filled from MESHFED_ADDR, MESHFED_TOKEN and
// MESHFED_CA_FILE.
func ConfigFromEnv() Config {
	return Config{Addr: os.Getenv(EnvAddr), Token: os.Getenv(EnvToken), CAFile: os.Getenv(EnvCAFile)}
}

// Client holds one connection and a stub for every service.
type Client struct {
	Conn     *grpc.ClientConn
	Catalog  meshfedv1.CatalogServiceClient
	Policy   meshfedv1.PolicyServiceClient
	Mesh     meshfedv1.MeshSettingsServiceClient
	Tokens   meshfedv1.TokenServiceClient
	Cluster  meshfedv1.ClusterServiceClient
	CA       meshfedv1.CAServiceClient
	Identity meshfedv1.IdentityServiceClient
	Workload meshfedv1.WorkloadIdentityServiceClient
	Peering  meshfedv1.PeeringServiceClient
}

// Roots loads the trusted roots of a Config.
func (c Config) Roots() ([]*x509.Certificate, error) {
	switch {
	case len(c.CAPEM) > 0:
		return tlsutil.ParseCertificatesPEM(c.CAPEM)
	case c.CAFile != "":
		return tlsutil.LoadCertificatesFile(c.CAFile)
	default:
		return nil, errors.New("no CA bundle: set --ca-file or " + EnvCAFile)
	}
}

// New connects lazily (gRPC dials on first use) and returns a Client.
func New(cfg Config, opts ...grpc.DialOption) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("no server address: set --addr or " + EnvAddr)
	}
	roots, err := cfg.Roots()
	if err != nil {
		return nil, err
	}
	all := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsutil.APIClient(roots))),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize)),
	}
	if cfg.Token != "" {
		all = append(all, grpc.WithPerRPCCredentials(BearerToken(cfg.Token)))
	}
	all = append(all, opts...)
	conn, err := grpc.NewClient(cfg.Addr, all...)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", cfg.Addr, err)
	}
	return FromConn(conn), nil
}

// FromConn wraps an existing connection.
func FromConn(conn *grpc.ClientConn) *Client {
	return &Client{
		Conn:     conn,
		Catalog:  meshfedv1.NewCatalogServiceClient(conn),
		Policy:   meshfedv1.NewPolicyServiceClient(conn),
		Mesh:     meshfedv1.NewMeshSettingsServiceClient(conn),
		Tokens:   meshfedv1.NewTokenServiceClient(conn),
		Cluster:  meshfedv1.NewClusterServiceClient(conn),
		CA:       meshfedv1.NewCAServiceClient(conn),
		Identity: meshfedv1.NewIdentityServiceClient(conn),
		Workload: meshfedv1.NewWorkloadIdentityServiceClient(conn),
		Peering:  meshfedv1.NewPeeringServiceClient(conn),
	}
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

// BearerToken is a per-RPC credential sending "authorization: Bearer <token>".
// It refuses to travel over a connection without transport security.
type BearerToken string

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t BearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (BearerToken) RequireTransportSecurity() bool { return true }
