package validate

import meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"

func checkPeering(c *checker, root string, p *meshfedv1.Peering) {
	c.meta(root, p.GetMeta(), false, false)
	c.optionalDNSLabel(field(root, "peer_cluster"), p.GetPeerCluster())
	c.trustDomain(field(root, "peer_trust_domain"), p.GetPeerTrustDomain())
	for i, a := range p.GetPeerApiAddresses() {
		c.hostPort(index(field(root, "peer_api_addresses"), i), a)
	}
}

func checkServiceExport(c *checker, root string, e *meshfedv1.ServiceExport) {
	c.meta(root, e.GetMeta(), true, false)
	peers := field(root, "peers")
	for i, p := range e.GetPeers() {
		c.dnsLabel(index(peers, i), p)
	}
	c.unique(peers, e.GetPeers())
}

func checkImportedService(c *checker, root string, s *meshfedv1.ImportedService) {
	// Stored as "<peering>.<service>" so that peers may export services of
	// the same name.
	c.meta(root, s.GetMeta(), true, true)
	c.dnsLabel(field(field(root, "meta"), "peer"), s.GetMeta().GetPeer())
	if c.ok() && s.GetService() != nil && s.GetMeta().GetName() != s.GetMeta().GetPeer()+"."+s.GetService().GetMeta().GetName() {
		c.failf(field(field(root, "meta"), "name"), "%q must be the peering's name, '.', and the service's name", s.GetMeta().GetName())
	}
	if svc := s.GetService(); svc != nil {
		checkService(c, field(root, "service"), svc)
	}
	for i, e := range s.GetEndpoints() {
		if c.ok() {
			checkEndpoint(c, index(field(root, "endpoints"), i), e)
		}
	}
	c.optionalDNSLabel(field(root, "peer_cluster"), s.GetPeerCluster())
	c.trustDomain(field(root, "peer_trust_domain"), s.GetPeerTrustDomain())
}
