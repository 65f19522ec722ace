package validate

import (
	"fmt"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// The requests of meshfed-proxy are checked field by field, and errors
// name the request's fields ("instance", "address", ...): they are not a
// resource the proxy wrote, but the workload is built from them.

// EndpointRegistration validates a proxy's RegisterEndpointRequest: the
// instance becomes a workload name, so it follows the same rules.
func EndpointRegistration(r *meshfedv1.RegisterEndpointRequest) error {
	c := &checker{}
	c.dnsLabel("service", r.GetService())
	c.dnsLabel("instance", r.GetInstance())
	c.ip("address", r.GetAddress())
	c.port("port", r.GetPort())
	c.locality("locality", r.GetLocality())
	c.labelValue("version", r.GetVersion())
	c.health("health", r.GetHealth())
	return c.result()
}

// ProxyHeartbeat validates a proxy's HeartbeatRequest.
func ProxyHeartbeat(r *meshfedv1.HeartbeatRequest) error {
	c := &checker{}
	c.dnsLabel("instance", r.GetInstance())
	c.health("health", r.GetHealth())
	if n := len(r.GetOutbound()); c.ok() && n > MaxTrafficCounts {
		c.failf("outbound", "has %d entries; at most %d", n, MaxTrafficCounts)
	}
	for i, tc := range r.GetOutbound() {
		p := fmt.Sprintf("outbound[%d]", i)
		c.dnsLabel(p+".namespace", tc.GetNamespace())
		c.dnsLabel(p+".service", tc.GetService())
		c.optionalDNSLabel(p+".cluster", tc.GetCluster())
		if c.ok() && tc.GetErrors() > tc.GetRequests() {
			c.failf(p+".errors", "%d is more than its requests (%d)", tc.GetErrors(), tc.GetRequests())
		}
	}
	return c.result()
}

// MaxTrafficCounts bounds the destinations one heartbeat reports.
const MaxTrafficCounts = 10000

// ProxyDeregistration validates a proxy's DeregisterEndpointRequest.
func ProxyDeregistration(r *meshfedv1.DeregisterEndpointRequest) error {
	c := &checker{}
	c.dnsLabel("instance", r.GetInstance())
	return c.result()
}

func (c *checker) health(path string, h meshfedv1.HealthStatus) {
	if c.ok() && h.Descriptor().Values().ByNumber(h.Number()) == nil {
		c.failf(path, "unknown value %d: must be one of %s", h, enumNames(h.Descriptor()))
	}
}
