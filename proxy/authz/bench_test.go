package authz

import (
	"fmt"
	"testing"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// benchPolicies are 50 policies for web, the size of a busy namespace: 45
// ALLOW policies, each for a local and a peer cluster's callers with
// methods and paths, and 5 DENY policies (quarantined namespaces, and internal paths for the
// peer cluster).
func benchPolicies() []*meshfedv1.AuthorizationPolicy {
	var ps []*meshfedv1.AuthorizationPolicy
	for i := range 45 {
		ps = append(ps, allowP(fmt.Sprintf("allow-%02d", i),
			&rl{
				Principals: ss(fmt.Sprintf("spiffe://cluster.local/ns/team%d/sa/client", i), fmt.Sprintf("spiffe://east.mesh/ns/team%d/*", i)),
				Methods:    ss("GET", "POST"),
				Paths:      ss(fmt.Sprintf("/api/v1/team%d/*", i), "/healthz"),
			},
			&rl{
				Principals: ss(fmt.Sprintf("spiffe://cluster.local/ns/team%d/sa/admin", i)),
			},
		))
	}
	for i := range 5 {
		ps = append(ps, denyP(fmt.Sprintf("deny-%d", i),
			&rl{Principals: ss(fmt.Sprintf("spiffe://cluster.local/ns/quarantine%d/*", i))},
			&rl{Principals: ss("spiffe://east.mesh/*"), Paths: ss(fmt.Sprintf("/internal%d/*", i))},
		))
	}
	return ps
}

func benchEngine() *Engine {
	return Compile(web, denyA, benchPolicies())
}

type benchRequest struct {
	name string
	req  Request
}

func benchRequests() []benchRequest {
	return []benchRequest{
		{"allow-exact", http("spiffe://cluster.local/ns/team40/sa/client", "GET", "/api/v1/team40/orders/17")},
		{"allow-peer-prefix", http("spiffe://east.mesh/ns/team7/sa/cart", "post", "/api/v1/team7/cart?id=3")},
		{"allow-no-l7", http("spiffe://cluster.local/ns/team3/sa/admin", "DELETE", "/anything")},
		{"deny-policy", http("spiffe://east.mesh/ns/team12/sa/client", "GET", "/internal4/x")},
		{"deny-quarantine", http("spiffe://cluster.local/ns/quarantine2/sa/x", "GET", "/healthz")},
		{"default-deny", http("spiffe://cluster.local/ns/team12/sa/client", "GET", "/api/v1/team13/x")},
		{"non-canonical", http("spiffe://cluster.local/ns/team12/sa/client", "GET", "/api/v1/team12/../team13/x")},
		{"plain-text", http("", "GET", "/healthz")},
		{"tcp", tcp("spiffe://cluster.local/ns/team44/sa/admin")},
	}
}

func BenchmarkDecide(b *testing.B) {
	e := benchEngine()
	for _, br := range benchRequests() {
		b.Run(br.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				e.Decide(br.req)
			}
		})
	}
}

func BenchmarkAllowsConnection(b *testing.B) {
	e := benchEngine()
	p := id("spiffe://east.mesh/ns/team7/sa/cart")
	b.ReportAllocs()
	for b.Loop() {
		e.AllowsConnection(p, true)
	}
}

func BenchmarkCompile(b *testing.B) {
	ps := benchPolicies()
	b.ReportAllocs()
	for b.Loop() {
		Compile(web, denyA, ps)
	}
}

// The benchmark's requests decide as their names say.
func TestBenchRequests(t *testing.T) {
	e := benchEngine()
	want := map[string]string{
		"allow-exact":       "allowed by policy default/allow-40",
		"allow-peer-prefix": "allowed by policy default/allow-07",
		"allow-no-l7":       "allowed by policy default/allow-03",
		"deny-policy":       "denied by policy default/deny-4",
		"deny-quarantine":   "denied by policy default/deny-2",
		"default-deny":      "no ALLOW policy matched; default action is DENY",
		"non-canonical":     ReasonNonCanonicalPath,
		"plain-text":        "plain-text caller; default action is DENY",
		"tcp":               "allowed by policy default/allow-44",
	}
	for _, br := range benchRequests() {
		if got := e.Decide(br.req).Reason; got != want[br.name] {
			t.Errorf("%s: %q, want %q", br.name, got, want[br.name])
		}
	}
}
