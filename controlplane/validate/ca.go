package validate

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// CASettingsName is the name of the one CASettings resource.
const CASettingsName = "global"

// Bounds of the CA lifetimes. SVIDs may be as short as ten seconds so that
// rotation and renewal can be exercised quickly; anything shorter would
// spend more time renewing than serving.
const (
	minSVIDTTL         = 10 * time.Second
	minIntermediateTTL = time.Hour
	maxRootTTL         = 100 * 365 * 24 * time.Hour
)

func checkCASettings(c *checker, root string, s *meshfedv1.CASettings) {
	c.meta(root, s.GetMeta(), false, false)
	if n := s.GetMeta().GetName(); c.ok() && n != CASettingsName {
		c.failf(field(field(root, "meta"), "name"), "%q must be %q", n, CASettingsName)
	}
	// Unset lifetimes take the defaults; set ones must fit inside each
	// other: an SVID never outlives its intermediate, nor an intermediate
	// its root.
	rootTTL, interTTL, svidTTL := s.GetRootTtl(), s.GetIntermediateTtl(), s.GetSvidTtl()
	c.between(field(root, "root_ttl"), rootTTL, 2*minIntermediateTTL, maxRootTTL)
	c.between(field(root, "intermediate_ttl"), interTTL, minIntermediateTTL, maxRootTTL/2)
	c.between(field(root, "svid_ttl"), svidTTL, minSVIDTTL, maxRootTTL/4)
	if c.ok() && rootTTL != nil && interTTL != nil && 2*interTTL.AsDuration() > rootTTL.AsDuration() {
		c.failf(field(root, "intermediate_ttl"), "%s is more than half of root_ttl (%s)", interTTL.AsDuration(), rootTTL.AsDuration())
	}
	if c.ok() && interTTL != nil && svidTTL != nil && svidTTL.AsDuration() > interTTL.AsDuration()/2 {
		c.failf(field(root, "svid_ttl"), "%s is more than half of intermediate_ttl (%s)", svidTTL.AsDuration(), interTTL.AsDuration())
	}
}

// between checks an optional duration against [lo, hi].
func (c *checker) between(path string, d *durationpb.Duration, lo, hi time.Duration) {
	if !c.ok() || d == nil {
		return
	}
	if v := d.AsDuration(); v < lo || v > hi {
		c.failf(path, "%s is out of range: must be between %s and %s", v, lo, hi)
	}
}

func checkStoredAuthority(c *checker, root string, a *meshfedv1.StoredAuthority) {
	c.meta(root, a.GetMeta(), false, true)
}

func checkServerRecord(c *checker, root string, s *meshfedv1.ServerRecord) {
	c.meta(root, s.GetMeta(), false, true)
	for _, f := range []struct{ name, addr string }{
		{"api_addr", s.GetApiAddr()}, {"raft_addr", s.GetRaftAddr()}, {"http_addr", s.GetHttpAddr()},
	} {
		if f.addr != "" {
			c.hostPort(field(root, f.name), f.addr)
		}
	}
}

func checkClusterRecord(c *checker, root string, r *meshfedv1.ClusterRecord) {
	c.meta(root, r.GetMeta(), false, false)
	if n := r.GetMeta().GetName(); c.ok() && n != ClusterRecordName {
		c.failf(field(field(root, "meta"), "name"), "%q must be %q", n, ClusterRecordName)
	}
	c.dnsLabel(field(root, "cluster"), r.GetCluster())
	c.required(field(root, "trust_domain"), r.GetTrustDomain() != "")
	c.trustDomain(field(root, "trust_domain"), r.GetTrustDomain())
}
