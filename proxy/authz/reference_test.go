package authz

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/validate"
)

// storable reports whether the control plane would store a policy holding
// rule r: the engine must compile exactly those rules.
func storable(r *rl) bool {
	p := &meshfedv1.AuthorizationPolicy{
		Meta:        &meshfedv1.Meta{Namespace: "default", Name: "p"},
		Destination: "web",
		Action:      allowA,
		Rules:       []*rl{r},
	}
	return validate.AuthorizationPolicy(p) == nil
}

// ref is the package's semantics written the slow and obvious way, to
// check the indexed engine against.
type ref struct {
	defAllow  bool
	deny      []refRule // in evaluation order
	allow     []refRule
	pathRules bool
}

type refRule struct {
	policy string
	r      *rl
}

func newRef(dst Destination, def meshfedv1.AuthorizationAction, policies []*meshfedv1.AuthorizationPolicy) *ref {
	f := &ref{defAllow: def == allowA}
	var ps []*meshfedv1.AuthorizationPolicy
	for _, p := range policies {
		if p.GetMeta().GetNamespace() == dst.Namespace && dst.Namespace != "" && p.GetMeta().GetName() != "" &&
			(p.GetDestination() == dst.Service && dst.Service != "" || p.GetDestination() == "*") {
			ps = append(ps, p)
		}
	}
	slices.SortStableFunc(ps, func(a, b *meshfedv1.AuthorizationPolicy) int {
		return strings.Compare(a.GetMeta().GetName(), b.GetMeta().GetName())
	})
	for _, p := range ps {
		for _, r := range p.GetRules() {
			if !storable(r) {
				continue
			}
			rr := refRule{policy: p.GetMeta().GetNamespace() + "/" + p.GetMeta().GetName(), r: r}
			switch p.GetAction() {
			case allowA:
				f.allow = append(f.allow, rr)
			case denyA:
				f.deny = append(f.deny, rr)
			default:
				continue
			}
			f.pathRules = f.pathRules || len(r.GetPaths()) > 0
		}
	}
	return f
}

func refPrincipal(pattern, id string, deny bool) bool {
	if id == "" {
		return deny && pattern == "*"
	}
	if pattern == "*" {
		return true
	}
	if base, ok := strings.CutSuffix(pattern, "/*"); ok {
		if strings.HasPrefix(id, base+"/") {
			return true
		}
		b, err := spiffeid.FromString(base)
		return err == nil && b.Path() == "" && id == base
	}
	return id == pattern
}

func refCanonical(p string) bool {
	return strings.HasPrefix(p, "/") && !strings.Contains(p, "//") &&
		!strings.Contains(p+"/", "/./") && !strings.Contains(p+"/", "/../")
}

// refDecode decodes percent-encodings once. For a request, a malformed
// one or an encoded slash or backslash fails it; for a rule, a malformed
// one stays.
func refDecode(p string, request bool) (string, bool) {
	parts := strings.Split(p, "%")
	out := parts[0]
	for _, part := range parts[1:] {
		v, err := strconv.ParseUint(part[:min(2, len(part))], 16, 8)
		if len(part) < 2 || err != nil || strings.ContainsAny(part[:2], "+-") {
			if request {
				return "", false
			}
			out += "%" + part
			continue
		}
		if request && (v == '/' || v == '\\') {
			return "", false
		}
		out += string([]byte{byte(v)}) + part[2:]
	}
	return out, true
}

func (f *ref) decide(req Request) Decision {
	id := req.Principal.String()
	path, _, _ := strings.Cut(req.Path, "?")
	if req.L7 && f.pathRules {
		var ok bool
		if path, ok = refDecode(path, true); !ok || !refCanonical(path) {
			return Decision{Reason: ReasonNonCanonicalPath}
		}
	}
	matches := func(rr refRule, deny bool) bool {
		if !slices.ContainsFunc(rr.r.GetPrincipals(), func(p string) bool { return refPrincipal(p, id, deny) }) {
			return false
		}
		if len(rr.r.GetMethods()) == 0 && len(rr.r.GetPaths()) == 0 {
			return true
		}
		if !req.L7 {
			return deny
		}
		if len(rr.r.GetMethods()) > 0 && !slices.ContainsFunc(rr.r.GetMethods(), func(m string) bool { return strings.EqualFold(m, req.Method) }) {
			return false
		}
		return len(rr.r.GetPaths()) == 0 || slices.ContainsFunc(rr.r.GetPaths(), func(p string) bool {
			p, _ = refDecode(p, false)
			if pre, ok := strings.CutSuffix(p, "*"); ok {
				return strings.HasPrefix(path, pre)
			}
			return path == p
		})
	}
	for _, rr := range f.deny {
		if matches(rr, true) {
			return Decision{Policy: rr.policy, Reason: "denied by policy " + rr.policy}
		}
	}
	for _, rr := range f.allow {
		if matches(rr, false) {
			return Decision{Allow: true, Policy: rr.policy, Reason: "allowed by policy " + rr.policy}
		}
	}
	d := Decision{Allow: f.defAllow}
	switch {
	case id == "" && f.defAllow:
		d.Reason = "plain-text caller; default action is ALLOW"
	case id == "":
		d.Reason = "plain-text caller; default action is DENY"
	case f.defAllow:
		d.Reason = "no ALLOW policy matched; default action is ALLOW"
	default:
		d.Reason = "no ALLOW policy matched; default action is DENY"
	}
	return d
}

func (f *ref) allowsConnection(p spiffeid.ID, l7 bool) bool {
	if !l7 {
		return f.decide(Request{Principal: p}).Allow
	}
	id := p.String()
	for _, rr := range f.deny {
		if len(rr.r.GetMethods()) == 0 && len(rr.r.GetPaths()) == 0 &&
			slices.ContainsFunc(rr.r.GetPrincipals(), func(pat string) bool { return refPrincipal(pat, id, true) }) {
			return false
		}
	}
	if f.defAllow {
		return true
	}
	for _, rr := range f.allow {
		if slices.ContainsFunc(rr.r.GetPrincipals(), func(pat string) bool { return refPrincipal(pat, id, false) }) {
			return true
		}
	}
	return false
}

// fuzzPolicies are the fixed policies FuzzDecide adds its own to.
func fuzzPolicies() []*meshfedv1.AuthorizationPolicy {
	return []*meshfedv1.AuthorizationPolicy{
		allowP("allow-frontend", &rl{Principals: ss(frontend), Methods: ss("GET", "POST"), Paths: ss("/api/*", "/healthz")}),
		denyP("deny-admin", &rl{Principals: ss("*"), Paths: ss("/admin*")}),
		allowP("allow-peer", &rl{Principals: ss("spiffe://east.mesh/ns/shop/*")}),
		denyP("deny-bad", &rl{Principals: ss("spiffe://example.org/ns/bad/*")}),
		allowP("allow-td-health", &rl{Principals: ss("spiffe://example.org/*"), Methods: ss("GET"), Paths: ss("/healthz")}),
		pol("default", "other-svc", "api", allowA, &rl{Principals: ss("*")}),
		pol("prod", "other-ns", "*", denyA, &rl{Principals: ss("*")}),
		pol("default", "star", "*", allowA, &rl{Principals: ss("spiffe://other.org/*"), Methods: ss("DELETE")}),
	}
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// FuzzDecide checks the engine against ref, with one fuzzed rule (its
// principals, methods and paths comma-separated) among fixed policies: the
// same rules compiled as the control plane stores, the same decisions, and
// no connection refused that a request of it would be allowed on.
func FuzzDecide(f *testing.F) {
	type seed struct {
		principal, method, path string
		l7, defAllow            bool
		rPrincipals, rMethods   string
		rPaths                  string
		rDeny                   bool
	}
	for _, s := range []seed{
		{frontend, "GET", "/api/x", true, false, "", "", "", false},
		{frontend, "get", "/api/x?y", true, false, frontend, "PUT", "/api/*", true},
		{"", "GET", "/", true, true, "*", "", "", true},
		{"", "GET", "/", false, true, "*", "GET", "", true},
		{peerShop, "POST", "/admin/x", true, true, "spiffe://east.mesh/*", "", "/admin", false},
		{"spiffe://example.org", "GET", "/healthz", true, false, "spiffe://example.org/*", "", "", false},
		{"spiffe://example.org/ns/bad/sa/x", "GET", "/", false, false, "spiffe://example.org/ns/bad/sa/x", "", "", false},
		{prodAPI, "DELETE", "/a/../b", true, false, "spiffe://example.org/ns/prod/*", "DELETE", "/a*", false},
		{prodAPI, "GET", "//", true, false, "spiffe://example.org/ns/prod/*/x", "get", "a", false},
		{prodAPI, "GET", "/", true, false, "spiffe://example.org/ns/prod/*,*", "GET,HEAD", "/,/x*", false},
		{"spiffe://other.org/x", "delete", "/x/.", true, false, "", "", "", false},
		{frontend, "GET", "/%61dmin%2b", true, true, "*", "", "/admin+", true},
		{frontend, "GET", "/a%2Fb", true, true, "*", "", "/a/b,/a%2fb", true},
		{frontend, "GET", "/%2e%2E/x%zz", true, false, "*", "", "/x*,/%", false},
	} {
		f.Add(s.principal, s.method, s.path, s.l7, s.defAllow, s.rPrincipals, s.rMethods, s.rPaths, s.rDeny)
	}
	f.Fuzz(func(t *testing.T, principal, method, path string, l7, defAllow bool, rPrincipals, rMethods, rPaths string, rDeny bool) {
		def := denyA
		if defAllow {
			def = allowA
		}
		action := allowA
		if rDeny {
			action = denyA
		}
		r := &rl{Principals: split(rPrincipals), Methods: split(rMethods), Paths: split(rPaths)}
		policies := append(fuzzPolicies(), pol("default", "m-fuzzed", "web", action, r))

		e := Compile(web, def, policies)
		wantSkipped := 0
		if !storable(r) {
			wantSkipped = 1
		}
		if e.Skipped() != wantSkipped {
			t.Fatalf("rule %v: Skipped() = %d; storable = %v", r, e.Skipped(), storable(r))
		}

		p, err := spiffeid.FromString(principal)
		if err != nil {
			p = spiffeid.ID{}
		}
		req := Request{Principal: p, L7: l7, Method: method, Path: path}
		rf := newRef(web, def, policies)
		got, want := e.Decide(req), rf.decide(req)
		if got != want {
			t.Fatalf("rule %v: Decide(%s) = %+v, want %+v", r, fmtReq(req), got, want)
		}
		for _, l7 := range []bool{false, true} {
			if got, want := e.AllowsConnection(p, l7), rf.allowsConnection(p, l7); got != want {
				t.Fatalf("rule %v: AllowsConnection(%q, %v) = %v, want %v", r, p, l7, got, want)
			}
		}
		if got.Allow && !e.AllowsConnection(p, l7) {
			t.Fatalf("rule %v: Decide(%s) allows, AllowsConnection refuses", r, fmtReq(req))
		}
	})
}

// The engine compiles exactly the rules the control plane stores.
func TestCompilesWhatValidateStores(t *testing.T) {
	long := "/" + strings.Repeat("a", 1023)
	many := func(n int, s string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = s
		}
		return out
	}
	for _, r := range []*rl{
		{Principals: ss("*")},
		{Principals: ss(frontend, "spiffe://east.mesh/ns/shop/*", "spiffe://td/*", "*")},
		{Principals: ss("spiffe://td")},
		{Principals: ss("*"), Methods: ss("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")},
		{Principals: ss("*"), Methods: ss("GET", "GET")},
		{Principals: ss("*"), Paths: ss("/", "/*", "/a*", "/a/b", "/é", "/a/../b", "/a//b")},
		{Principals: ss("*"), Paths: ss(long)},
		{Principals: ss("*"), Paths: ss(long + "a")},
		{Principals: many(100, "*")},
		{Principals: many(101, "*")},
		{Principals: ss("*"), Methods: many(16, "GET")},
		{Principals: ss("*"), Methods: many(17, "GET")},
		{Principals: ss("*"), Paths: many(100, "/")},
		{Principals: ss("*"), Paths: many(101, "/")},
		{Principals: ss("spiffe://td/" + strings.Repeat("a", 1012))},
		{Principals: ss("spiffe://td/" + strings.Repeat("a", 1013))},
		{},
		{Principals: ss("")},
		{Principals: ss("spiffe://td/a/*/b")},
		{Principals: ss("spiffe://td/*/*")},
		{Principals: ss("spiffe://TD/a")},
		{Principals: ss("spiffe://td/a/")},
		{Principals: ss("spiffe://td/./a")},
		{Principals: ss("spiffe://td/a%20b")},
		{Principals: ss("spiffe:///a")},
		{Principals: ss("/*")},
		{Principals: ss("* ")},
		{Principals: ss("*"), Methods: ss("get")},
		{Principals: ss("*"), Methods: ss("")},
		{Principals: ss("*"), Methods: ss("PROPFIND")},
		{Principals: ss("*"), Paths: ss("")},
		{Principals: ss("*"), Paths: ss("*")},
		{Principals: ss("*"), Paths: ss("/a**")},
		{Principals: ss("*"), Paths: ss("/a\tb")},
		{Principals: ss("*"), Paths: ss("/a\x7f")},
		{Principals: ss("*"), Paths: ss("/\xff")},
	} {
		e := Compile(web, denyA, []*meshfedv1.AuthorizationPolicy{allowP("p", r)})
		if compiled, stored := e.Skipped() == 0, storable(r); compiled != stored {
			t.Errorf("rule %.200v: compiled %v, stored by the control plane %v", r, compiled, stored)
		}
	}
}
