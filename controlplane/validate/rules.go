package validate

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// The primitive rules shared by the kinds. Each records the first failure
// in c and does nothing once c has failed.

const maxLabelLen = 63

// dnsLabel: 1-63 of [a-z0-9-], starting with a letter, not ending with '-'.
func (c *checker) dnsLabel(path, s string) {
	if !c.ok() {
		return
	}
	if s == "" {
		c.fail(path, "is required")
		return
	}
	if reason := dnsLabelProblem(s); reason != "" {
		c.failf(path, "%q %s", s, reason)
	}
}

func (c *checker) optionalDNSLabel(path, s string) {
	if s != "" {
		c.dnsLabel(path, s)
	}
}

func dnsLabelProblem(s string) string {
	if len(s) > maxLabelLen {
		return "must be at most 63 characters long"
	}
	if s[0] < 'a' || s[0] > 'z' {
		return "must start with a lower case letter"
	}
	if s[len(s)-1] == '-' {
		return "must not end with '-'"
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return "must contain only lower case letters, digits and '-'"
		}
	}
	return ""
}

// identifier is the looser rule of names the server or operators' tooling
// picks (token accessor IDs, authority IDs, node IDs): 1-128 of
// [A-Za-z0-9._-], starting with a letter or digit.
func (c *checker) identifier(path, s string) {
	if !c.ok() {
		return
	}
	if s == "" {
		c.fail(path, "is required")
		return
	}
	if len(s) > 128 {
		c.fail(path, "must be at most 128 characters long")
		return
	}
	if !isAlnum(rune(s[0])) {
		c.failf(path, "%q must start with a letter or digit", s)
		return
	}
	for _, r := range s {
		if !isAlnum(r) && r != '.' && r != '_' && r != '-' {
			c.failf(path, "%q must contain only letters, digits, '.', '_' and '-'", s)
			return
		}
	}
}

func isAlnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

// dnsName: a DNS name of lower case labels, at most 253 characters; the
// first label may be "*" when wildcard.
func dnsNameProblem(s string, wildcard bool) string {
	if s == "" {
		return "must not be empty"
	}
	if len(s) > 253 {
		return "must be at most 253 characters long"
	}
	for i, l := range strings.Split(s, ".") {
		if i == 0 && wildcard && l == "*" {
			continue
		}
		if l == "" || len(l) > maxLabelLen || l[0] == '-' || l[len(l)-1] == '-' {
			return "must be a DNS name"
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return "must be a lower case DNS name"
			}
		}
	}
	return ""
}

// meta checks a resource's meta. Names are DNS labels unless idName, when
// they are identifiers.
func (c *checker) meta(root string, m *meshfedv1.Meta, namespaced, idName bool) {
	p := field(root, "meta")
	if m == nil {
		c.fail(field(p, "name"), "is required")
		return
	}
	if idName {
		c.identifier(field(p, "name"), m.GetName())
	} else {
		c.dnsLabel(field(p, "name"), m.GetName())
	}
	if namespaced {
		c.dnsLabel(field(p, "namespace"), m.GetNamespace())
	} else if m.GetNamespace() != "" {
		c.fail(field(p, "namespace"), "must be empty: the resource is not namespaced")
	}
	c.optionalDNSLabel(field(p, "peer"), m.GetPeer())
	c.labels(field(p, "labels"), m.GetLabels())
}

// labels: Kubernetes label syntax. A key is an optional DNS subdomain
// prefix and '/', then a name of at most 63 characters, alphanumeric at
// both ends with '-', '_' and '.' inside; a value is empty or such a name.
func (c *checker) labels(path string, labels map[string]string) {
	if len(labels) > maxItems["meshfed.v1.Meta.labels"] {
		c.failf(path, "must have at most %d entries", maxItems["meshfed.v1.Meta.labels"])
		return
	}
	for k, v := range labels {
		if !c.ok() {
			return
		}
		p := path + "[" + strconv.Quote(k) + "]"
		name := k
		if i := strings.IndexByte(k, '/'); i >= 0 {
			if reason := dnsNameProblem(k[:i], false); reason != "" {
				c.failf(p, "key prefix %s", reason)
				continue
			}
			name = k[i+1:]
		}
		if name == "" || !isLabelName(name) {
			c.fail(p, "key must be 1-63 characters, alphanumeric at both ends, with '-', '_' or '.' inside, after an optional DNS prefix and '/'")
		} else if v != "" && !isLabelName(v) {
			c.fail(p, "value must be empty or 1-63 characters, alphanumeric at both ends, with '-', '_' or '.' inside")
		}
	}
}

func isLabelName(s string) bool {
	if len(s) == 0 || len(s) > maxLabelLen || !isAlnum(rune(s[0])) || !isAlnum(rune(s[len(s)-1])) {
		return false
	}
	for _, r := range s {
		if !isAlnum(r) && r != '-' && r != '_' && r != '.' {
			return false
		}
	}
	return true
}

// labelValue checks a short free-form token such as a version or a zone.
func (c *checker) labelValue(path, s string) {
	if c.ok() && s != "" && !isLabelName(s) {
		c.failf(path, "%q must be 1-63 characters, alphanumeric at both ends, with '-', '_' or '.' inside", s)
	}
}

func (c *checker) port(path string, p uint32) {
	if c.ok() && (p < 1 || p > 65535) {
		if p == 0 {
			c.fail(path, "is required")
			return
		}
		c.failf(path, "%d must be between 1 and 65535", p)
	}
}

// ip checks an IPv4 or IPv6 address without zone.
func (c *checker) ip(path, s string) {
	if !c.ok() {
		return
	}
	if s == "" {
		c.fail(path, "is required")
		return
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		c.failf(path, "%q must be an IPv4 or IPv6 address", s)
	}
}

// hostPort checks "host:port" with a DNS name or IP host.
func (c *checker) hostPort(path, s string) {
	if !c.ok() {
		return
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		c.failf(path, "%q must be host:port", s)
		return
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		c.failf(path, "%q must have a port between 1 and 65535", s)
		return
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return
	}
	if dnsNameProblem(strings.ToLower(host), false) != "" {
		c.failf(path, "%q must have a DNS name or IP address as host", s)
	}
}

// spiffeID parses with go-spiffe, the one SPIFFE ID parser.
func (c *checker) spiffeID(path, s string) {
	if !c.ok() {
		return
	}
	if s == "" {
		c.fail(path, "is required")
		return
	}
	if _, err := spiffeid.FromString(s); err != nil {
		c.failf(path, "%q is not a SPIFFE ID: %v", s, err)
	}
}

func (c *checker) trustDomain(path, s string) {
	if !c.ok() || s == "" {
		return
	}
	if _, err := spiffeid.TrustDomainFromString(s); err != nil {
		c.failf(path, "%q is not a trust domain: %v", s, err)
	}
}

func (c *checker) locality(path string, l *meshfedv1.Locality) {
	c.labelValue(field(path, "region"), l.GetRegion())
	c.labelValue(field(path, "zone"), l.GetZone())
}

// maxDuration bounds a duration already checked valid and non-negative by
// walk.
func (c *checker) maxDuration(path string, d *durationpb.Duration, max time.Duration) {
	if c.ok() && d != nil && d.AsDuration() > max {
		c.failf(path, "must be at most %v", max)
	}
}

func (c *checker) percent(path string, v float64) {
	if c.ok() && (v < 0 || v > 100) {
		c.failf(path, "%v must be between 0 and 100", v)
	}
}

func (c *checker) required(path string, set bool) {
	if c.ok() && !set {
		c.fail(path, "is required")
	}
}

// unique fails on the first repeated value of list at path.
func (c *checker) unique(path string, list []string) {
	seen := make(map[string]bool, len(list))
	for i, s := range list {
		if !c.ok() {
			return
		}
		if seen[s] {
			c.failf(index(path, i), "%q is repeated", s)
		}
		seen[s] = true
	}
}

func quoteAll(set []string) string {
	q := make([]string, len(set))
	for i, s := range set {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}
