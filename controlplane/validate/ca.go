package validate

import meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"

func checkCASettings(c *checker, root string, s *meshfedv1.CASettings) {
	// TTLs are checked valid and non-negative by walk; their bounds are
	// the CA's business.
	c.meta(root, s.GetMeta(), false, false)
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
