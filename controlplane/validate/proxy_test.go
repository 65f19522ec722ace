package validate

import (
	"errors"
	"strings"
	"testing"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func TestProxyRequests(t *testing.T) {
	reg := func(f func(*meshfedv1.RegisterEndpointRequest)) error {
		r := &meshfedv1.RegisterEndpointRequest{Service: "web", Instance: "web-6f7c9-x2x", Address: "10.0.0.1", Port: 15443,
			Version: "v1.2", Locality: &meshfedv1.Locality{Region: "eu-west-1", Zone: "eu-west-1a"}}
		f(r)
		return EndpointRegistration(r)
	}
	for _, tc := range []struct {
		name  string
		err   error
		field string // empty: valid
	}{
		{"registration", reg(func(*meshfedv1.RegisterEndpointRequest) {}), ""},
		{"ipv6, unhealthy", reg(func(r *meshfedv1.RegisterEndpointRequest) {
			r.Address, r.Health = "2001:db8::1", meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
		}), ""},
		{"no locality or version", reg(func(r *meshfedv1.RegisterEndpointRequest) { r.Locality, r.Version = nil, "" }), ""},
		{"service", reg(func(r *meshfedv1.RegisterEndpointRequest) { r.Service = "Web" }), "service"},
		{"instance", reg(func(r *meshfedv1.RegisterEndpointRequest) { r.Instance = "web.0" }), "instance"},
		{"long instance", reg(func(r *meshfedv1.RegisterEndpointRequest) { r.Instance = strings.Repeat("w", 64) }), "instance"},
		{"address", reg(func(r *meshfedv1.RegisterEndpointRequest) { r.Address = "10.0.0.1:80" }), "address"},
		{"zoned address", reg(func(r *meshfedv1.RegisterEndpointRequest) { r.Address = "fe80::1%eth0" }), "address"},
		{"port", reg(func(r *meshfedv1.RegisterEndpointRequest) { r.Port = 65536 }), "port"},
		{"region", reg(func(r *meshfedv1.RegisterEndpointRequest) { r.Locality.Region = "eu west" }), "locality.region"},
		{"version", reg(func(r *meshfedv1.RegisterEndpointRequest) { r.Version = "v1/2" }), "version"},
		{"health", reg(func(r *meshfedv1.RegisterEndpointRequest) { r.Health = 4 }), "health"},
		{"heartbeat", ProxyHeartbeat(&meshfedv1.HeartbeatRequest{Instance: "web-0", Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY}), ""},
		{"heartbeat instance", ProxyHeartbeat(&meshfedv1.HeartbeatRequest{}), "instance"},
		{"heartbeat health", ProxyHeartbeat(&meshfedv1.HeartbeatRequest{Instance: "web-0", Health: -1}), "health"},
		{"deregistration", ProxyDeregistration(&meshfedv1.DeregisterEndpointRequest{Instance: "web-0"}), ""},
		{"deregistration instance", ProxyDeregistration(&meshfedv1.DeregisterEndpointRequest{Instance: "-web"}), "instance"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fe *FieldError
			switch {
			case tc.field == "" && tc.err != nil:
				t.Fatalf("valid request refused: %v", tc.err)
			case tc.field == "":
			case !errors.As(tc.err, &fe):
				t.Fatalf("got %v, want a FieldError for %s", tc.err, tc.field)
			case fe.Field != tc.field:
				t.Fatalf("error names %q (%v), want %q", fe.Field, tc.err, tc.field)
			}
		})
	}
}
