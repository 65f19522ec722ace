package validate

import meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"

func checkService(c *checker, root string, s *meshfedv1.Service) {
	c.meta(root, s.GetMeta(), true, false)
	c.port(field(root, "port"), s.GetPort())
	c.required(field(root, "protocol"), s.GetProtocol() != meshfedv1.Protocol_PROTOCOL_UNSPECIFIED)
	// Empty means the service's name (Normalize fills it in).
	c.optionalDNSLabel(field(root, "service_account"), s.GetServiceAccount())
}

func checkWorkload(c *checker, root string, w *meshfedv1.Workload) {
	c.meta(root, w.GetMeta(), true, false)
	c.dnsLabel(field(root, "service"), w.GetService())
	c.ip(field(root, "address"), w.GetAddress())
	c.port(field(root, "port"), w.GetPort())
	c.locality(field(root, "locality"), w.GetLocality())
	if w.GetSpiffeId() != "" {
		c.spiffeID(field(root, "spiffe_id"), w.GetSpiffeId())
	}
	c.labelValue(field(root, "version"), w.GetVersion())
}

// checkEndpoint checks an endpoint of an imported service.
func checkEndpoint(c *checker, path string, e *meshfedv1.Endpoint) {
	c.ip(field(path, "address"), e.GetAddress())
	c.port(field(path, "port"), e.GetPort())
	c.locality(field(path, "locality"), e.GetLocality())
	if e.GetSpiffeId() != "" {
		c.spiffeID(field(path, "spiffe_id"), e.GetSpiffeId())
	}
	c.labelValue(field(path, "version"), e.GetVersion())
}
