package provider

import (
	"regexp"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
)

// TestAccInvalidConfig: bad values fail at plan time, with a diagnostic on
// the attribute at fault (Terraform shows the attribute's line).
func TestAccInvalidConfig(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, config string
		want         *regexp.Regexp
	}{
		{
			name: "malformed SPIFFE ID",
			config: `
resource "meshfed_workload" "bad" {
  name      = "vm1"
  service   = "db"
  address   = "10.0.0.1"
  port      = 15443
  spiffe_id = "spiffe://West Mesh/ns/default"
}`,
			want: regexp.MustCompile(`(?s)spiffe_id\s+= "spiffe://West Mesh/ns/default".*Attribute spiffe_id must be a SPIFFE ID`),
		},
		{
			name: "negative timeout",
			config: `
resource "meshfed_traffic_policy" "bad" {
  name        = "bad"
  destination = "web"
  timeouts = {
    connect = "-1s"
  }
}`,
			want: regexp.MustCompile(`(?s)Attribute timeouts\.connect must not be negative`),
		},
		{
			name: "unknown enum value",
			config: `
resource "meshfed_service" "bad" {
  name     = "web"
  port     = 80
  protocol = "udp"
}`,
			want: regexp.MustCompile(`(?s)protocol = "udp".*Attribute protocol value must be one of`),
		},
		{
			name: "split weights over 100",
			config: `
resource "meshfed_traffic_policy" "bad" {
  name        = "bad"
  destination = "web"
  splits = [
    { version = "v1", weight = 80 },
    { version = "v2", weight = 30 },
  ]
}`,
			want: regexp.MustCompile(`(?s)Attribute splits weights add up to 110, not 100`),
		},
		{
			name: "principal",
			config: `
resource "meshfed_authorization_policy" "bad" {
  name        = "bad"
  destination = "web"
  action      = "allow"
  rules       = [{ principals = ["spiffe://west.mesh/*/sa"] }]
}`,
			want: regexp.MustCompile(`(?s)Attribute rules\[0\]\.principals\[0\] must be "\*" or a SPIFFE ID`),
		},
		{
			name: "join token without SPIFFE ID",
			config: `
resource "meshfed_token" "bad" {
  kind = "workload-join"
}`,
			want: regexp.MustCompile(`(?s)Missing SPIFFE ID.*set spiffe_id`),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resource.Test(t, resource.TestCase{
				ProtoV6ProviderFactories: protoV6Providers,
				Steps: []resource.TestStep{{
					Config:      westConfig(tc.config),
					PlanOnly:    true,
					ExpectError: tc.want,
				}},
			})
		})
	}
}
