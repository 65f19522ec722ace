package federation

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshfed/meshfed/internal/tlsutil"
)

// Sentinel errors of token handling.
var (
	// ErrInvalidToken is returned for a token that does not decode or lacks
	// a field; the message names what is wrong.
	ErrInvalidToken = errors.New("invalid peering token")

	// ErrTokenExpired is returned for a token past its expiry.
	ErrTokenExpired = errors.New("peering token expired")
)

// tokenPrefix versions the token format.
const tokenPrefix = "mfpeer1."

// maxTokenLen bounds what DecodeToken reads: a token carries a few
// addresses and a bundle of a few roots.
const maxTokenLen = 64 << 10

// Token is what a peering token carries from the acceptor to the dialer.
type Token struct {
	// Cluster and TrustDomain name the acceptor.
	Cluster     string `json:"cluster"`
	TrustDomain string `json:"trust_domain"`
	// APIAddresses are the acceptor's servers, dialed in order.
	APIAddresses []string `json:"api_addresses"`
	// CABundle is the acceptor's trust bundle (PEM): it verifies the
	// acceptor's servers on first contact.
	CABundle string `json:"ca_bundle"`
	// Secret proves, once, that the dialer holds this token.
	Secret string `json:"secret"`
	// ExpireTime is when the secret stops being accepted.
	ExpireTime time.Time `json:"expire_time"`
}

// Encode returns the token as the string operators pass around.
func (t Token) Encode() (string, error) {
	data, err := json.Marshal(t)
	if err != nil {
		return "", err
	}
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(data), nil
}

// DecodeToken parses a token and checks every field; now judges expiry.
func DecodeToken(s string, now time.Time) (Token, error) {
	var t Token
	s = strings.TrimSpace(s)
	if len(s) > maxTokenLen {
		return t, fmt.Errorf("%w: longer than %d bytes", ErrInvalidToken, maxTokenLen)
	}
	if !strings.HasPrefix(s, tokenPrefix) {
		return t, fmt.Errorf("%w: does not start with %q (was it copied whole?)", ErrInvalidToken, tokenPrefix)
	}
	data, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(s, tokenPrefix))
	if err != nil {
		return t, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return t, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if err := t.check(); err != nil {
		return t, err
	}
	if !now.Before(t.ExpireTime) {
		return t, fmt.Errorf("%w at %s", ErrTokenExpired, t.ExpireTime.UTC().Format(time.RFC3339))
	}
	return t, nil
}

func (t Token) check() error {
	if t.Cluster == "" {
		return fmt.Errorf("%w: cluster is missing", ErrInvalidToken)
	}
	if _, err := spiffeid.TrustDomainFromString(t.TrustDomain); err != nil || t.TrustDomain == "" {
		return fmt.Errorf("%w: trust_domain %q: %v", ErrInvalidToken, t.TrustDomain, err)
	}
	if len(t.APIAddresses) == 0 {
		return fmt.Errorf("%w: api_addresses is empty", ErrInvalidToken)
	}
	for _, a := range t.APIAddresses {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return fmt.Errorf("%w: api address %q is not host:port", ErrInvalidToken, a)
		}
	}
	roots, err := tlsutil.ParseCertificatesPEM([]byte(t.CABundle))
	if err != nil || len(roots) == 0 {
		return fmt.Errorf("%w: ca_bundle holds no certificate: %v", ErrInvalidToken, err)
	}
	for _, r := range roots {
		if !r.IsCA {
			return fmt.Errorf("%w: ca_bundle holds a certificate that is not a CA", ErrInvalidToken)
		}
	}
	if t.Secret == "" {
		return fmt.Errorf("%w: secret is missing", ErrInvalidToken)
	}
	if t.ExpireTime.IsZero() {
		return fmt.Errorf("%w: expire_time is missing", ErrInvalidToken)
	}
	return nil
}
