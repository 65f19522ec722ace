package federation

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// ErrBadPeerMessage is returned when a peer sends something this side
// refuses; the message says what. Nothing of the refused message is stored.
var ErrBadPeerMessage = errors.New("refused message from peer")

// Limits on what a peer may send.
const (
	// MaxEndpoints bounds the endpoints of one exported service.
	MaxEndpoints = 10000
	// MaxBundleRoots bounds the roots of a peer's bundle.
	MaxBundleRoots = 16
)

// CheckBundle checks a bundle a peer of trust domain td sent.
func CheckBundle(td spiffeid.TrustDomain, b *meshfedv1.TrustBundle) error {
	if b == nil {
		return fmt.Errorf("%w: bundle is missing", ErrBadPeerMessage)
	}
	if b.GetTrustDomain() != td.Name() {
		return fmt.Errorf("%w: bundle of trust domain %q, the peer is %q", ErrBadPeerMessage, b.GetTrustDomain(), td.Name())
	}
	n := 0
	for i, r := range b.GetRootsPem() {
		certs, err := tlsutil.ParseCertificatesPEM([]byte(r))
		if err != nil {
			return fmt.Errorf("%w: bundle root %d: %v", ErrBadPeerMessage, i, err)
		}
		for _, c := range certs {
			if !c.IsCA {
				return fmt.Errorf("%w: bundle root %d is not a CA certificate", ErrBadPeerMessage, i)
			}
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("%w: bundle has no root", ErrBadPeerMessage)
	}
	if n > MaxBundleRoots {
		return fmt.Errorf("%w: bundle has %d roots, at most %d are accepted", ErrBadPeerMessage, n, MaxBundleRoots)
	}
	return nil
}

// CheckService checks an exported service a peer of trust domain td sent:
// names are DNS labels, endpoints are IP addresses with ports, and every
// endpoint's SPIFFE ID belongs to the peer's trust domain (a peer cannot
// claim another cluster's identities, nor pass on another peer's services).
func CheckService(td spiffeid.TrustDomain, s *meshfedv1.ImportedService) error {
	if s == nil || s.GetService() == nil {
		return fmt.Errorf("%w: service is missing", ErrBadPeerMessage)
	}
	ns, name := s.GetMeta().GetNamespace(), s.GetMeta().GetName()
	if err := checkLabel("namespace", ns); err != nil {
		return err
	}
	if err := checkLabel("name", name); err != nil {
		return err
	}
	if len(s.GetEndpoints()) > MaxEndpoints {
		return fmt.Errorf("%w: service %s/%s has %d endpoints, at most %d are accepted", ErrBadPeerMessage, ns, name, len(s.GetEndpoints()), MaxEndpoints)
	}
	for i, e := range s.GetEndpoints() {
		if _, err := netip.ParseAddr(e.GetAddress()); err != nil {
			return fmt.Errorf("%w: service %s/%s endpoint %d: address %q is not an IP address", ErrBadPeerMessage, ns, name, i, e.GetAddress())
		}
		if e.GetPort() == 0 || e.GetPort() > 65535 {
			return fmt.Errorf("%w: service %s/%s endpoint %d: port %d is out of range", ErrBadPeerMessage, ns, name, i, e.GetPort())
		}
		id, err := spiffeid.FromString(e.GetSpiffeId())
		if err != nil {
			return fmt.Errorf("%w: service %s/%s endpoint %d: SPIFFE ID %q: %v", ErrBadPeerMessage, ns, name, i, e.GetSpiffeId(), err)
		}
		if !id.MemberOf(td) {
			return fmt.Errorf("%w: service %s/%s endpoint %d: SPIFFE ID %q is outside the peer's trust domain %q", ErrBadPeerMessage, ns, name, i, id, td.Name())
		}
	}
	return nil
}

func checkLabel(what, s string) error {
	if s == "" || len(s) > 63 {
		return fmt.Errorf("%w: %s %q must be 1 to 63 characters", ErrBadPeerMessage, what, s)
	}
	for i, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') || (i == 0 && (r < 'a' || r > 'z')) {
			return fmt.Errorf("%w: %s %q is not a DNS label", ErrBadPeerMessage, what, s)
		}
	}
	return nil
}
