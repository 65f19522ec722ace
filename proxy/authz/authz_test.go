package authz

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

const (
	allowA = meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_ALLOW
	denyA  = meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_DENY
	unspec = meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_UNSPECIFIED
)

var web = Destination{Namespace: "default", Service: "web"}

// Callers.
const (
	frontend = "spiffe://example.org/ns/default/sa/frontend"
	batch    = "spiffe://example.org/ns/default/sa/batch"
	prodAPI  = "spiffe://example.org/ns/prod/sa/api"
	peerShop = "spiffe://east.mesh/ns/shop/sa/cart"
	plain    = "" // plain-text caller
)

type rl = meshfedv1.AuthorizationRule

func ss(s ...string) []string { return s }

func pol(ns, name, dest string, action meshfedv1.AuthorizationAction, rules ...*rl) *meshfedv1.AuthorizationPolicy {
	return &meshfedv1.AuthorizationPolicy{
		Meta:        &meshfedv1.Meta{Namespace: ns, Name: name},
		Destination: dest,
		Action:      action,
		Rules:       rules,
	}
}

// allowP and denyP are policies of namespace default for web.
func allowP(name string, rules ...*rl) *meshfedv1.AuthorizationPolicy {
	return pol("default", name, "web", allowA, rules...)
}

func denyP(name string, rules ...*rl) *meshfedv1.AuthorizationPolicy {
	return pol("default", name, "web", denyA, rules...)
}

func id(s string) spiffeid.ID {
	if s == "" {
		return spiffeid.ID{}
	}
	return spiffeid.RequireFromString(s)
}

// http is an L7 request, tcp a non-L7 one.
func http(principal, method, path string) Request {
	return Request{Principal: id(principal), L7: true, Method: method, Path: path}
}

func tcp(principal string) Request { return Request{Principal: id(principal)} }

type check struct {
	req    Request
	allow  bool
	policy string // "" for the default action
	reason string // checked when set
}

// Shorthands of expectations.
func allowedBy(r Request, policy string) check {
	return check{req: r, allow: true, policy: policy, reason: "allowed by policy " + policy}
}

func deniedBy(r Request, policy string) check {
	return check{req: r, policy: policy, reason: "denied by policy " + policy}
}

func byDefault(r Request, allow bool) check { return check{req: r, allow: allow} }

func nonCanonical(r Request) check {
	return check{req: r, reason: ReasonNonCanonicalPath}
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name     string
		def      meshfedv1.AuthorizationAction
		policies []*meshfedv1.AuthorizationPolicy
		checks   []check
	}{
		{
			name: "no policies, default deny",
			def:  denyA,
			checks: []check{
				{req: http(frontend, "GET", "/"), reason: "no ALLOW policy matched; default action is DENY"},
				{req: tcp(frontend), reason: "no ALLOW policy matched; default action is DENY"},
				{req: tcp(plain), reason: "plain-text caller; default action is DENY"},
			},
		},
		{
			name: "no policies, default allow",
			def:  allowA,
			checks: []check{
				{req: http(frontend, "GET", "/"), allow: true, reason: "no ALLOW policy matched; default action is ALLOW"},
				{req: tcp(frontend), allow: true},
				{req: http(plain, "GET", "/"), allow: true, reason: "plain-text caller; default action is ALLOW"},
			},
		},
		{
			name:     "unspecified default is deny",
			def:      unspec,
			policies: []*meshfedv1.AuthorizationPolicy{allowP("only-batch", &rl{Principals: ss(batch)})},
			checks: []check{
				{req: http(frontend, "GET", "/"), reason: "no ALLOW policy matched; default action is DENY"},
				allowedBy(http(batch, "GET", "/"), "default/only-batch"),
			},
		},
		{
			name: "deny before allow",
			def:  allowA,
			policies: []*meshfedv1.AuthorizationPolicy{
				// Names sort the ALLOW first; DENY still wins.
				allowP("a-allow-all", &rl{Principals: ss("*")}),
				denyP("z-deny-admin", &rl{Principals: ss(frontend), Paths: ss("/admin*")}),
			},
			checks: []check{
				deniedBy(http(frontend, "GET", "/admin/users"), "default/z-deny-admin"),
				allowedBy(http(frontend, "GET", "/home"), "default/a-allow-all"),
				allowedBy(http(batch, "GET", "/admin/users"), "default/a-allow-all"),
			},
		},
		{
			name: "first policy by name decides, whatever the input order",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				denyP("deny-b", &rl{Principals: ss(frontend)}),
				denyP("deny-a", &rl{Principals: ss("*"), Methods: ss("DELETE")}, &rl{Principals: ss("spiffe://example.org/*")}),
				allowP("allow-b", &rl{Principals: ss(batch)}),
				allowP("allow-a", &rl{Principals: ss(prodAPI)}, &rl{Principals: ss("spiffe://example.org/ns/default/*")}),
			},
			checks: []check{
				deniedBy(http(frontend, "GET", "/"), "default/deny-a"),
				deniedBy(tcp(frontend), "default/deny-a"),
				deniedBy(http(peerShop, "DELETE", "/"), "default/deny-a"),
				byDefault(http(peerShop, "GET", "/"), false),
			},
		},
		{
			name: "principal forms",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("exact", &rl{Principals: ss(frontend)}),
				allowP("below-prod", &rl{Principals: ss("spiffe://example.org/ns/prod/*")}),
				allowP("trust-domain", &rl{Principals: ss("spiffe://other.org/*")}),
			},
			checks: []check{
				allowedBy(tcp(frontend), "default/exact"),
				byDefault(tcp(frontend+"2"), false),
				byDefault(tcp(frontend+"/x"), false),
				byDefault(tcp("spiffe://example.org/ns/default/sa"), false),
				allowedBy(tcp(prodAPI), "default/below-prod"),
				allowedBy(tcp("spiffe://example.org/ns/prod/x"), "default/below-prod"),
				byDefault(tcp("spiffe://example.org/ns/prod"), false),
				byDefault(tcp("spiffe://example.org/ns/production/sa/api"), false),
				byDefault(tcp("spiffe://example.org/ns/prod.x/sa/api"), false),
				allowedBy(tcp("spiffe://other.org/a"), "default/trust-domain"),
				allowedBy(tcp("spiffe://other.org/ns/a/sa/b"), "default/trust-domain"),
				allowedBy(tcp("spiffe://other.org"), "default/trust-domain"),
				byDefault(tcp("spiffe://other.org.evil/ns/a/sa/b"), false),
				byDefault(tcp("spiffe://xother.org/ns/a/sa/b"), false),
				byDefault(tcp("spiffe://other.orgx/a"), false),
			},
		},
		{
			name: "federated trust domains",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("peer-shop", &rl{Principals: ss("spiffe://east.mesh/ns/shop/*")}),
				allowP("peer-exact", &rl{Principals: ss("spiffe://west.mesh/ns/default/sa/frontend")}),
				denyP("deny-evil", &rl{Principals: ss("spiffe://evil.mesh/*")}),
			},
			checks: []check{
				allowedBy(tcp(peerShop), "default/peer-shop"),
				allowedBy(tcp("spiffe://west.mesh/ns/default/sa/frontend"), "default/peer-exact"),
				// Same path, other trust domain.
				byDefault(tcp("spiffe://west.mesh/ns/shop/sa/cart"), false),
				byDefault(tcp(frontend), false),
				deniedBy(tcp("spiffe://evil.mesh/ns/shop/sa/cart"), "default/deny-evil"),
			},
		},
		{
			name: "any authenticated caller",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("all", &rl{Principals: ss("*"), Methods: ss("GET")}),
			},
			checks: []check{
				allowedBy(http(frontend, "GET", "/"), "default/all"),
				allowedBy(http(peerShop, "GET", "/"), "default/all"),
				allowedBy(http("spiffe://td", "GET", "/"), "default/all"),
				{req: http(plain, "GET", "/"), reason: "plain-text caller; default action is DENY"},
			},
		},
		{
			name: "methods compare case-insensitively",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("reads", &rl{Principals: ss(frontend), Methods: ss("GET", "HEAD")}),
				allowP("batch-any", &rl{Principals: ss(batch)}),
			},
			checks: []check{
				allowedBy(http(frontend, "GET", "/x"), "default/reads"),
				allowedBy(http(frontend, "get", "/x"), "default/reads"),
				allowedBy(http(frontend, "hEaD", "/x"), "default/reads"),
				byDefault(http(frontend, "POST", "/x"), false),
				byDefault(http(frontend, "GETS", "/x"), false),
				byDefault(http(frontend, "", "/x"), false),
				byDefault(http(frontend, "PROPFIND", "/x"), false),
				allowedBy(http(batch, "PROPFIND", "/x"), "default/batch-any"),
			},
		},
		{
			name: "paths exact and prefix, query cut off",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("paths", &rl{Principals: ss(frontend), Paths: ss("/healthz", "/api/*", "/pub*")}),
				allowP("grpc", &rl{Principals: ss(batch), Methods: ss("POST"), Paths: ss("/shop.v1.Cart/Get")}),
			},
			checks: []check{
				allowedBy(http(frontend, "GET", "/healthz"), "default/paths"),
				allowedBy(http(frontend, "GET", "/healthz?verbose=1"), "default/paths"),
				allowedBy(http(frontend, "GET", "/healthz?"), "default/paths"),
				byDefault(http(frontend, "GET", "/healthz/"), false),
				byDefault(http(frontend, "GET", "/healthz/x"), false),
				byDefault(http(frontend, "GET", "/Healthz"), false),
				byDefault(http(frontend, "GET", "/healthz%3F"), false),
				allowedBy(http(frontend, "GET", "/api/"), "default/paths"),
				allowedBy(http(frontend, "GET", "/api/v1/x"), "default/paths"),
				byDefault(http(frontend, "GET", "/api"), false),
				byDefault(http(frontend, "GET", "/api?/x"), false),
				byDefault(http(frontend, "GET", "/apix"), false),
				allowedBy(http(frontend, "GET", "/pub"), "default/paths"),
				allowedBy(http(frontend, "GET", "/public/x"), "default/paths"),
				allowedBy(http(batch, "POST", "/shop.v1.Cart/Get"), "default/grpc"),
				byDefault(http(batch, "POST", "/shop.v1.Cart/Put"), false),
				byDefault(http(batch, "GET", "/shop.v1.Cart/Get"), false),
			},
		},
		{
			name: "query is cut off before deny paths too",
			def:  allowA,
			policies: []*meshfedv1.AuthorizationPolicy{
				denyP("deny-admin", &rl{Principals: ss("*"), Paths: ss("/admin")}),
			},
			checks: []check{
				deniedBy(http(frontend, "GET", "/admin"), "default/deny-admin"),
				deniedBy(http(frontend, "GET", "/admin?x=/public"), "default/deny-admin"),
				byDefault(http(frontend, "GET", "/admin/"), true),
				// Encoded unreserved characters are decoded first, as
				// the application will.
				deniedBy(http(frontend, "GET", "/%61dmin"), "default/deny-admin"),
				deniedBy(http(frontend, "GET", "/%61%64%6D%69%6e?x"), "default/deny-admin"),
				byDefault(http(frontend, "GET", "/%41dmin"), true),
			},
		},
		{
			name: "non-canonical paths are denied when rules have paths",
			def:  allowA,
			policies: []*meshfedv1.AuthorizationPolicy{
				denyP("deny-admin", &rl{Principals: ss("*"), Paths: ss("/admin*")}),
				allowP("all", &rl{Principals: ss("*")}),
			},
			checks: []check{
				nonCanonical(http(frontend, "GET", "/public/../admin")),
				nonCanonical(http(frontend, "GET", "/./admin")),
				nonCanonical(http(frontend, "GET", "//admin")),
				nonCanonical(http(frontend, "GET", "/public//x")),
				nonCanonical(http(frontend, "GET", "/public/..")),
				nonCanonical(http(frontend, "GET", "/public/.")),
				nonCanonical(http(frontend, "GET", "/..")),
				nonCanonical(http(frontend, "GET", "/.")),
				nonCanonical(http(frontend, "GET", "admin")),
				nonCanonical(http(frontend, "GET", "")),
				nonCanonical(http(frontend, "GET", "*")),
				nonCanonical(http(frontend, "GET", "http://web/admin")),
				nonCanonical(http(frontend, "GET", "/a/../b?x")),
				nonCanonical(http(plain, "GET", "/a//b")),
				// Encoded dots are dots; encoded slashes and backslashes,
				// and malformed encodings, cannot be matched safely.
				nonCanonical(http(frontend, "GET", "/public/%2e%2e/admin")),
				nonCanonical(http(frontend, "GET", "/public/.%2E/admin")),
				nonCanonical(http(frontend, "GET", "/public%2fx")),
				nonCanonical(http(frontend, "GET", "/public%2F..%2Fadmin")),
				nonCanonical(http(frontend, "GET", "/public%5c..%5cadmin")),
				nonCanonical(http(frontend, "GET", "/public/%")),
				nonCanonical(http(frontend, "GET", "/public/%4")),
				nonCanonical(http(frontend, "GET", "/public/%zz")),
				allowedBy(http(frontend, "GET", "/a%20b/%e2%82%ac"), "default/all"),
				deniedBy(http(frontend, "GET", "/%61dmin%2Bx"), "default/deny-admin"),
				allowedBy(http(frontend, "GET", "/a/%2E%2Eb"), "default/all"),
				// Dots inside names and in the query are fine.
				allowedBy(http(frontend, "GET", "/"), "default/all"),
				allowedBy(http(frontend, "GET", "/public/"), "default/all"),
				allowedBy(http(frontend, "GET", "/.well-known/x"), "default/all"),
				allowedBy(http(frontend, "GET", "/a/..b/c."), "default/all"),
				allowedBy(http(frontend, "GET", "/a/.../b"), "default/all"),
				allowedBy(http(frontend, "GET", "/a?p=/../&q=//"), "default/all"),
				deniedBy(http(frontend, "GET", "/admin/x"), "default/deny-admin"),
				// No path to check for TCP; the DENY rule with paths
				// matches on its principals alone.
				deniedBy(tcp(batch), "default/deny-admin"),
			},
		},
		{
			name: "non-canonical paths pass when no rule has paths",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("gets", &rl{Principals: ss("*"), Methods: ss("GET")}),
			},
			checks: []check{
				allowedBy(http(frontend, "GET", "/a//b/../c"), "default/gets"),
				allowedBy(http(frontend, "GET", ""), "default/gets"),
			},
		},
		{
			name: "plain-text callers",
			def:  allowA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("all", &rl{Principals: ss("*")}),
				denyP("deny-td", &rl{Principals: ss("spiffe://bad.org/*")}),
				denyP("deny-deletes", &rl{Principals: ss("*"), Methods: ss("DELETE")}),
			},
			checks: []check{
				// ALLOW "*" does not match plain text: the default allows.
				{req: http(plain, "GET", "/"), allow: true, reason: "plain-text caller; default action is ALLOW"},
				// DENY "*" matches plain text; for TCP on principals alone.
				deniedBy(http(plain, "DELETE", "/"), "default/deny-deletes"),
				deniedBy(tcp(plain), "default/deny-deletes"),
				allowedBy(http(frontend, "GET", "/"), "default/all"),
				deniedBy(http(frontend, "DELETE", "/"), "default/deny-deletes"),
				deniedBy(http("spiffe://bad.org/x", "GET", "/"), "default/deny-td"),
				// For TCP, deny-deletes (first by name) matches everyone.
				deniedBy(tcp("spiffe://bad.org/x"), "default/deny-deletes"),
			},
		},
		{
			name: "plain-text callers and deny all",
			def:  allowA,
			policies: []*meshfedv1.AuthorizationPolicy{
				denyP("deny-all", &rl{Principals: ss("*")}),
			},
			checks: []check{
				deniedBy(http(plain, "GET", "/"), "default/deny-all"),
				deniedBy(tcp(plain), "default/deny-all"),
				deniedBy(tcp(frontend), "default/deny-all"),
			},
		},
		{
			name: "plain-text callers are denied by default deny",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("all", &rl{Principals: ss("*")}),
				allowP("td", &rl{Principals: ss("spiffe://example.org/*")}),
			},
			checks: []check{
				{req: http(plain, "GET", "/"), reason: "plain-text caller; default action is DENY"},
				{req: tcp(plain), reason: "plain-text caller; default action is DENY"},
			},
		},
		{
			name: "TCP: allow rules with methods or paths never match",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("methods", &rl{Principals: ss(frontend), Methods: ss("GET")}),
				allowP("paths", &rl{Principals: ss(batch), Paths: ss("/*")}),
				allowP("plain-rule", &rl{Principals: ss(prodAPI)}),
			},
			checks: []check{
				byDefault(tcp(frontend), false),
				byDefault(tcp(batch), false),
				allowedBy(tcp(prodAPI), "default/plain-rule"),
				allowedBy(http(frontend, "GET", "/"), "default/methods"),
				allowedBy(http(batch, "PUT", "/x"), "default/paths"),
			},
		},
		{
			name: "TCP: deny rules with methods or paths match on principals alone",
			def:  allowA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("all", &rl{Principals: ss("*")}),
				denyP("deny-writes", &rl{Principals: ss(frontend), Methods: ss("POST", "PUT")}),
				denyP("deny-admin", &rl{Principals: ss("spiffe://east.mesh/*"), Paths: ss("/admin*")}),
			},
			checks: []check{
				deniedBy(tcp(frontend), "default/deny-writes"),
				deniedBy(tcp(peerShop), "default/deny-admin"),
				allowedBy(tcp(batch), "default/all"),
				allowedBy(http(frontend, "GET", "/"), "default/all"),
				deniedBy(http(frontend, "put", "/"), "default/deny-writes"),
				allowedBy(http(peerShop, "GET", "/shop"), "default/all"),
				deniedBy(http(peerShop, "GET", "/admin"), "default/deny-admin"),
			},
		},
		{
			name: "methods and paths both must match",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("r", &rl{Principals: ss(frontend), Methods: ss("GET"), Paths: ss("/a", "/b/*")}),
			},
			checks: []check{
				allowedBy(http(frontend, "GET", "/a"), "default/r"),
				allowedBy(http(frontend, "GET", "/b/c"), "default/r"),
				byDefault(http(frontend, "POST", "/a"), false),
				byDefault(http(frontend, "GET", "/c"), false),
			},
		},
		{
			name: "other destinations and namespaces are ignored; * applies",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				pol("default", "other-svc", "api", allowA, &rl{Principals: ss(frontend)}),
				pol("prod", "other-ns", "web", allowA, &rl{Principals: ss(batch)}),
				pol("prod", "other-ns-star", "*", denyA, &rl{Principals: ss("*")}),
				pol("default", "no-dest", "", allowA, &rl{Principals: ss(prodAPI)}),
				pol("default", "every-svc", "*", allowA, &rl{Principals: ss(peerShop)}),
				pol("default", "deny-every-svc", "*", denyA, &rl{Principals: ss("spiffe://evil.org/*")}),
			},
			checks: []check{
				byDefault(tcp(frontend), false),
				byDefault(tcp(batch), false),
				byDefault(tcp(prodAPI), false),
				allowedBy(tcp(peerShop), "default/every-svc"),
				deniedBy(tcp("spiffe://evil.org/x"), "default/deny-every-svc"),
			},
		},
		{
			name: "invalid rules are skipped, never widened",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("bad-rules",
					&rl{Principals: ss(frontend), Methods: ss("GET", "get")}, // lower case method
					&rl{Principals: ss(frontend), Methods: ss("PROPFIND")},
					&rl{Principals: ss(frontend), Paths: ss("admin")},  // relative
					&rl{Principals: ss(frontend), Paths: ss("/a*b")},   // inner '*'
					&rl{Principals: ss(frontend), Paths: ss("/a b")},   // space
					&rl{Principals: ss(frontend), Paths: ss("/a\x00")}, // control
					&rl{Principals: ss(batch, "spiffe://example.org/a/*/b")},
					&rl{Principals: ss(batch, "spiffe://Example.org/x")}, // upper case trust domain
					&rl{Principals: ss(batch, "")},
					&rl{Principals: ss(batch, "**")},
					&rl{Principals: ss(batch, "/*")},
					&rl{Principals: ss(batch, "spiffe://example.org/*/*")},
					&rl{Principals: ss(batch, "spiffe://example.org/a/")},
					&rl{Principals: ss(batch, "spiffe://example.org/a/../b")},
					&rl{Principals: ss(batch, "https://example.org/a")},
					&rl{Principals: ss(batch, "spiffe://*")},
					&rl{Methods: ss("GET")}, // no principals
					nil,
					&rl{Principals: ss(prodAPI), Methods: ss("GET")}, // the one valid rule
				),
				pol("default", "no-action", "web", unspec, &rl{Principals: ss("*")}),
				pol("default", "bad-action", "web", 7, &rl{Principals: ss("*")}),
				denyP("bad-deny", &rl{Principals: ss(prodAPI), Methods: ss("get")}),
				{Destination: "web", Action: allowA, Rules: []*rl{{Principals: ss("*")}}}, // no meta
				nil,
			},
			checks: []check{
				byDefault(http(frontend, "GET", "/"), false),
				byDefault(http(frontend, "POST", "/"), false),
				byDefault(http(frontend, "GET", "/admin"), false),
				byDefault(http(frontend, "GET", "/a"), false),
				byDefault(http(batch, "GET", "/"), false),
				byDefault(tcp(batch), false),
				byDefault(http(peerShop, "GET", "/"), false),
				allowedBy(http(prodAPI, "GET", "/"), "default/bad-rules"),
				byDefault(http(prodAPI, "PUT", "/"), false),
				// The invalid DENY rule is skipped too.
				allowedBy(http(prodAPI, "get", "/"), "default/bad-rules"),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := Compile(web, tt.def, tt.policies)
			for _, c := range tt.checks {
				got := e.Decide(c.req)
				if got.Allow != c.allow || got.Policy != c.policy || c.reason != "" && got.Reason != c.reason {
					t.Errorf("Decide(%s) = %+v, want allow=%v policy=%q reason=%q", fmtReq(c.req), got, c.allow, c.policy, c.reason)
				}
				if got.Reason == "" {
					t.Errorf("Decide(%s): empty reason", fmtReq(c.req))
				}
				// A request allowed is never refused at the connection.
				if got.Allow && !e.AllowsConnection(c.req.Principal, c.req.L7) {
					t.Errorf("Decide(%s) allows, AllowsConnection refuses", fmtReq(c.req))
				}
				if !c.req.L7 {
					if ac := e.AllowsConnection(c.req.Principal, false); ac != got.Allow {
						t.Errorf("AllowsConnection(%s, false) = %v, Decide = %v", fmtReq(c.req), ac, got.Allow)
					}
				}
			}
		})
	}
}

func fmtReq(r Request) string {
	p := r.Principal.String()
	if p == "" {
		p = "plain-text"
	}
	if !r.L7 {
		return "tcp " + p
	}
	return p + " " + r.Method + " " + r.Path
}

func TestSkipped(t *testing.T) {
	e := Compile(web, denyA, []*meshfedv1.AuthorizationPolicy{
		allowP("a", &rl{Principals: ss(frontend)}, &rl{Principals: ss("x")}, nil),
		pol("default", "b", "web", unspec, &rl{Principals: ss("*")}, &rl{Principals: ss("*")}),
		// Other destinations' problems are not ours.
		pol("default", "c", "api", allowA, &rl{Principals: ss("x")}),
	})
	if got := e.Skipped(); got != 4 {
		t.Errorf("Skipped() = %d, want 4", got)
	}
	if got := Compile(web, denyA, []*meshfedv1.AuthorizationPolicy{allowP("a", &rl{Principals: ss(frontend)})}).Skipped(); got != 0 {
		t.Errorf("Skipped() = %d, want 0", got)
	}
}

func TestAllowsConnection(t *testing.T) {
	tests := []struct {
		name     string
		def      meshfedv1.AuthorizationAction
		policies []*meshfedv1.AuthorizationPolicy
		// want[principal] = {tcp, l7}
		want map[string][2]bool
	}{
		{
			name: "default deny",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("any-l7", &rl{Principals: ss(frontend), Methods: ss("GET"), Paths: ss("/x")}),
				allowP("tcp", &rl{Principals: ss(batch)}),
				allowP("all-l7", &rl{Principals: ss("*"), Paths: ss("/public/*")}),
			},
			want: map[string][2]bool{
				frontend: {false, true},
				batch:    {true, true},
				peerShop: {false, true}, // "*" with paths could allow
				plain:    {false, false},
			},
		},
		{
			name: "default deny, no allow for the caller",
			def:  denyA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("batch", &rl{Principals: ss(batch), Methods: ss("GET")}),
			},
			want: map[string][2]bool{
				frontend: {false, false},
				batch:    {false, true},
				plain:    {false, false},
			},
		},
		{
			name: "default allow",
			def:  allowA,
			policies: []*meshfedv1.AuthorizationPolicy{
				denyP("deny-frontend", &rl{Principals: ss(frontend)}),
				denyP("deny-batch-admin", &rl{Principals: ss(batch), Paths: ss("/admin*")}),
				denyP("deny-plain-writes", &rl{Principals: ss("*"), Methods: ss("POST")}),
			},
			want: map[string][2]bool{
				frontend: {false, false},
				batch:    {false, true}, // only some requests are denied
				prodAPI:  {false, true}, // "*" with methods denies TCP only
				plain:    {false, true},
			},
		},
		{
			name: "deny all wins over allow",
			def:  allowA,
			policies: []*meshfedv1.AuthorizationPolicy{
				allowP("frontend", &rl{Principals: ss(frontend)}),
				denyP("deny-td", &rl{Principals: ss("spiffe://example.org/*")}),
			},
			want: map[string][2]bool{
				frontend: {false, false},
				peerShop: {true, true},
				plain:    {true, true},
			},
		},
		{
			name: "deny all, plain text included",
			def:  allowA,
			policies: []*meshfedv1.AuthorizationPolicy{
				denyP("deny-all", &rl{Principals: ss("*")}),
			},
			want: map[string][2]bool{
				frontend: {false, false},
				plain:    {false, false},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := Compile(web, tt.def, tt.policies)
			for p, want := range tt.want {
				if got := e.AllowsConnection(id(p), false); got != want[0] {
					t.Errorf("AllowsConnection(%q, false) = %v, want %v", p, got, want[0])
				}
				if got := e.AllowsConnection(id(p), true); got != want[1] {
					t.Errorf("AllowsConnection(%q, true) = %v, want %v", p, got, want[1])
				}
			}
		})
	}
}

func TestNilEngineDenies(t *testing.T) {
	var e *Engine
	if d := e.Decide(http(frontend, "GET", "/")); d.Allow || d.Reason != ReasonNoEngine {
		t.Errorf("nil Engine: Decide = %+v", d)
	}
	if e.AllowsConnection(id(frontend), true) || e.AllowsConnection(id(frontend), false) {
		t.Error("nil Engine: AllowsConnection = true")
	}
	if e.Skipped() != 0 {
		t.Error("nil Engine: Skipped != 0")
	}
}

// The engine keeps nothing of its input: changing the policies afterwards
// changes no decision.
func TestCompileCopies(t *testing.T) {
	r := &rl{Principals: ss(frontend), Methods: ss("GET"), Paths: ss("/a")}
	ps := []*meshfedv1.AuthorizationPolicy{allowP("a", r)}
	e := Compile(web, denyA, ps)
	r.Principals[0] = batch
	r.Methods[0] = "POST"
	r.Paths[0] = "/b"
	ps[0].Meta.Name = "changed"
	ps[0].Action = denyA
	if d := e.Decide(http(frontend, "GET", "/a")); !d.Allow || d.Policy != "default/a" {
		t.Errorf("after changing the input: %+v", d)
	}
	if d := e.Decide(http(batch, "POST", "/b")); d.Allow {
		t.Errorf("after changing the input: %+v", d)
	}
}

func TestCanonical(t *testing.T) {
	for p, want := range map[string]bool{
		"/": true, "/a": true, "/a/": true, "/a/b": true, "/.a": true, "/a.": true, "/..a": true, "/...": true,
		"": false, "a": false, "//": false, "/a//": false, "/.": false, "/..": false, "/./": false,
		"/../": false, "/a/.": false, "/a/..": false, "/a/./b": false, "/a/../b": false, "*": false,
	} {
		if got := canonical(p); got != want {
			t.Errorf("canonical(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	e := benchEngine()
	reqs := benchRequests()
	for _, r := range reqs {
		if n := testing.AllocsPerRun(100, func() { e.Decide(r.req) }); n != 0 {
			t.Errorf("Decide(%s): %v allocs", fmtReq(r.req), n)
		}
		if n := testing.AllocsPerRun(100, func() { e.AllowsConnection(r.req.Principal, true) }); n != 0 {
			t.Errorf("AllowsConnection(%s): %v allocs", fmtReq(r.req), n)
		}
	}
}

func TestNormalizeEscapes(t *testing.T) {
	for _, c := range []struct {
		in      string
		request bool
		want    string
		ok      bool
	}{
		{"/plain/path", true, "/plain/path", true},
		{"/%61dmin", true, "/admin", true},
		{"/%7e%2D%2e%5F%30", true, "/~-._0", true},
		{"/a%20b%e2%82%ac%2B%3a%25", true, "/a b€+:%", true},
		{"/a%2561", true, "/a%61", true}, // once, not twice
		{"/a%2fb", true, "", false},
		{"/a%5Cb", true, "", false},
		{"/a%", true, "", false},
		{"/a%4", true, "", false},
		{"/a%g1", true, "", false},
		// Rules: decoded too, slashes included; malformed stays.
		{"/a%2fb", false, "/a/b", true},
		{"/a%zz/%61*", false, "/a%zz/a*", true},
		{"/a%", false, "/a%", true},
	} {
		got, ok := normalizeEscapes(c.in, c.request)
		if got != c.want || ok != c.ok {
			t.Errorf("normalizeEscapes(%q, %v) = %q, %v; want %q, %v", c.in, c.request, got, ok, c.want, c.ok)
		}
	}
}

// A rule written with encodings matches the same path however a request
// encodes it.
func TestEncodedRulePaths(t *testing.T) {
	e := Compile(web, allowA, []*meshfedv1.AuthorizationPolicy{
		denyP("deny", &rl{Principals: ss("*"), Paths: ss("/files/a%2bb", "/%7Euser/*")}),
	})
	for path, denied := range map[string]bool{
		"/files/a%2Bb": true, "/files/a%2bb": true, "/files/a+b": true, "/files/a%2Bc": false,
		"/~user/x": true, "/%7euser/": true, "/%7Euser": false,
	} {
		if d := e.Decide(http(frontend, "GET", path)); d.Allow == denied {
			t.Errorf("%s: %+v, want denied = %v", path, d, denied)
		}
	}
}
