package validate

import (
	"net/url"
	"strings"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func checkMeshSettings(c *checker, root string, s *meshfedv1.MeshSettings) {
	c.meta(root, s.GetMeta(), false, false)
	if n := s.GetMeta().GetName(); c.ok() && n != MeshSettingsName {
		c.failf(field(field(root, "meta"), "name"), "%q must be %q: there is one mesh settings resource", n, MeshSettingsName)
	}
	if v := s.GetTraceSampling(); c.ok() && (v < 0 || v > 1) {
		c.failf(field(root, "trace_sampling"), "%v must be between 0 and 1", v)
	}
	if e := s.GetOtlpEndpoint(); e != "" {
		checkEndpointAddress(c, field(root, "otlp_endpoint"), e)
	}
	if d := s.GetDefaultTrafficPolicy(); d != nil {
		p := field(root, "default_traffic_policy")
		if c.ok() && d.GetMeta() != nil {
			c.fail(field(p, "meta"), "must not be set in the default policy")
		}
		if c.ok() && d.GetDestination() != "" {
			c.fail(field(p, "destination"), "must not be set in the default policy")
		}
		checkTrafficRules(c, p, d)
	}
	c.locality(field(root, "locality"), s.GetLocality())
	// mtls_mode, like every enum, is checked by walk: UNSPECIFIED (which
	// means STRICT), STRICT and PERMISSIVE pass, any other number fails
	// naming settings.mtls_mode.
}

// checkEndpointAddress accepts host:port or an http(s) URL with a host.
func checkEndpointAddress(c *checker, path, s string) {
	if !strings.Contains(s, "://") {
		c.hostPort(path, s)
		return
	}
	u, err := url.Parse(s)
	if c.ok() && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
		c.failf(path, "%q must be host:port or an http(s) URL", s)
	}
}
