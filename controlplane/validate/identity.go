package validate

import (
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// maxSVIDTTL bounds an identity's SVID lifetime override.
const maxSVIDTTL = 30 * 24 * time.Hour

func checkIdentity(c *checker, root string, i *meshfedv1.Identity) {
	c.meta(root, i.GetMeta(), true, false)
	c.spiffeID(field(root, "spiffe_id"), i.GetSpiffeId())
	c.optionalDNSLabel(field(root, "service_account"), i.GetServiceAccount())
	c.between(field(root, "svid_ttl"), i.GetSvidTtl(), minSVIDTTL, maxSVIDTTL)
	names := field(root, "dns_names")
	for n, name := range i.GetDnsNames() {
		if reason := dnsNameProblem(name, true); c.ok() && reason != "" {
			c.failf(index(names, n), "%q %s", name, reason)
		}
	}
	c.unique(names, i.GetDnsNames())
}
