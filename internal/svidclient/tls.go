package svidclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// ServerTLSConfig returns a TLS 1.3 server configuration that presents the
// current SVID (renewals take effect on the next handshake) and requires
// every client to present an SVID that verifies against the client's
// bundles (own trust domain and federated ones) and that authorizer
// accepts, for example tlsconfig.AuthorizeID or AuthorizeMemberOf. A nil
// authorizer refuses every client.
func (c *Client) ServerTLSConfig(authorizer tlsconfig.Authorizer) *tls.Config {
	cfg := tlsconfig.MTLSServerConfig(c, c, orDenyAll(authorizer))
	cfg.MinVersion = tls.VersionTLS13
	return cfg
}

// ClientTLSConfig returns a TLS 1.3 client configuration that presents the
// current SVID and accepts only servers whose SVID verifies against the
// client's bundles and that authorizer accepts. A nil authorizer refuses
// every server.
func (c *Client) ClientTLSConfig(authorizer tlsconfig.Authorizer) *tls.Config {
	cfg := tlsconfig.MTLSClientConfig(c, c, orDenyAll(authorizer))
	cfg.MinVersion = tls.VersionTLS13
	return cfg
}

// orDenyAll makes a forgotten authorizer fail closed.
func orDenyAll(a tlsconfig.Authorizer) tlsconfig.Authorizer {
	if a != nil {
		return a
	}
	return func(spiffeid.ID, [][]*x509.Certificate) error {
		return errors.New("svidclient: no authorizer configured")
	}
}
