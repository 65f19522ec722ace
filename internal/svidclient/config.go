package svidclient

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// Defaults of the Config fields left at zero.
const (
	DefaultRequestTimeout = 10 * time.Second
	DefaultMinBackoff     = 250 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	DefaultRenewJitter    = 5 * time.Second
	DefaultStaleBundle    = 30 * time.Second
)

// Config configures a Client. Addrs, a CA bundle (CAFile or CARoots) and
// Token are required; everything else has a default.
type Config struct {
	// Addrs are API addresses (host:port) of servers of the cluster. Calls
	// go to the one that answered last, and move on to the next, in order,
	// when a server is unreachable or unavailable.
	Addrs []string

	// CAFile is a PEM file of the cluster's CA bundle (a server's ca.pem).
	// It verifies the servers until the first bundle arrives from them;
	// from then on the current bundle does, so that CA rotation does not
	// need the file to be rewritten.
	CAFile string
	// CARoots are used instead of CAFile when set.
	CARoots []*x509.Certificate

	// Token is the secret of a workload-join token. It is sent only in
	// attestation requests (the first one, and again if the SVID ever
	// expired before it could be renewed).
	Token string

	// ExpectedID, when set, is the identity the token must be bound to: the
	// CSR asks for it (so a server refuses a mismatch before issuing) and the
	// issued SVID is checked against it. When zero the client takes whatever
	// identity the token is bound to.
	ExpectedID spiffeid.ID

	// KeyAlgorithm of the SVID keys; unspecified means ECDSA P-256. A new
	// key is generated for every attestation and renewal.
	KeyAlgorithm meshfedv1.KeyAlgorithm

	// Logger receives attestation, renewal and bundle events; nil discards
	// them.
	Logger *slog.Logger

	// Now is the clock used to judge certificate lifetimes; nil means
	// time.Now.
	Now func() time.Time

	// RenewJitter bounds the random delay before renewing once the cluster
	// switched to another CA authority, so that a fleet spreads its renewals
	// (default DefaultRenewJitter).
	RenewJitter time.Duration

	// RequestTimeout bounds one call to one server (default
	// DefaultRequestTimeout).
	RequestTimeout time.Duration

	// MinBackoff and MaxBackoff bound the exponential backoff, with jitter,
	// between rounds of attempts over every server and between reconnections
	// of the bundle stream (defaults DefaultMinBackoff, DefaultMaxBackoff).
	MinBackoff, MaxBackoff time.Duration

	// StaleBundleGrace is how long a bundle with a lower sequence than the
	// one applied (sent by a server that lags, or after a snapshot restore
	// reset the sequence) waits for a newer one before it is applied anyway
	// (default DefaultStaleBundle).
	StaleBundleGrace time.Duration

	// DialOptions are added to every connection to a server.
	DialOptions []grpc.DialOption
}

// withDefaults validates cfg, fills in defaults and loads the CA roots.
func (cfg Config) withDefaults() (Config, error) {
	if len(cfg.Addrs) == 0 {
		return cfg, errors.New("svidclient: no server address (Config.Addrs)")
	}
	for _, a := range cfg.Addrs {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return cfg, fmt.Errorf("svidclient: server address %q: want host:port", a)
		}
	}
	if cfg.Token == "" {
		return cfg, errors.New("svidclient: no workload-join token (Config.Token)")
	}
	switch {
	case len(cfg.CARoots) > 0:
	case cfg.CAFile != "":
		roots, err := tlsutil.LoadCertificatesFile(cfg.CAFile)
		if err != nil {
			return cfg, fmt.Errorf("svidclient: %w", err)
		}
		cfg.CARoots = roots
	default:
		return cfg, errors.New("svidclient: no CA bundle to verify servers with (Config.CAFile or Config.CARoots)")
	}
	if err := checkKeyAlgorithm(cfg.KeyAlgorithm); err != nil {
		return cfg, fmt.Errorf("svidclient: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RenewJitter <= 0 {
		cfg.RenewJitter = DefaultRenewJitter
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	if cfg.StaleBundleGrace <= 0 {
		cfg.StaleBundleGrace = DefaultStaleBundle
	}
	cfg.Addrs = append([]string(nil), cfg.Addrs...)
	return cfg, nil
}
