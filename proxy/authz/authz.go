package authz

import (
	"math"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// Destination is the service this proxy guards.
type Destination struct {
	Namespace, Service string
}

// Request is one inbound connection or request.
type Request struct {
	// Caller's SPIFFE ID; the zero value means a plain-text caller
	// (PERMISSIVE mTLS).
	Principal spiffeid.ID
	// L7 is true for http and grpc services, when Method and Path are known.
	L7     bool
	Method string // HTTP method; gRPC calls are "POST"
	Path   string // URL path without query; gRPC "/pkg.Service/Method"
}

// Decision is the outcome of Decide.
type Decision struct {
	Allow bool
	// Policy that decided, "namespace/name", or "" when the default action
	// (or a check before any policy) decided.
	Policy string
	// Reason is a short human text for access logs, e.g. "denied by policy
	// default/deny-admin" or "no ALLOW policy matched; default action is DENY".
	Reason string
}

// Reasons of decisions no policy made.
const (
	ReasonNonCanonicalPath = "non-canonical path"
	ReasonNoEngine         = "no authorization policies loaded"

	reasonDefaultDeny       = "no ALLOW policy matched; default action is DENY"
	reasonDefaultAllow      = "no ALLOW policy matched; default action is ALLOW"
	reasonPlainDefaultDeny  = "plain-text caller; default action is DENY"
	reasonPlainDefaultAllow = "plain-text caller; default action is ALLOW"
)

// Limits of a stored rule (controlplane/validate).
const (
	maxPrincipals = 100
	maxMethods    = 16
	maxPaths      = 100
	maxStringLen  = 1024
)

// httpMethods are the methods a rule may name, as controlplane/validate
// accepts them; a rule's methods are a bit set over this list.
var httpMethods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

const spiffeScheme = "spiffe://"

// Engine is an immutable compiled snapshot of the policies of one
// destination. Build a new one when policies or settings change.
type Engine struct {
	deny, allow  index
	defaultAllow bool
	// pathRules: some rule has paths; non-canonical paths are then denied.
	pathRules bool
	skipped   int

	defaultDecision, plainDecision Decision
}

// index finds the rules of one action whose principals match a caller.
// Rule numbers are in evaluation order; every list is ascending.
type index struct {
	deny  bool
	rules []rule
	// exact: SPIFFE ID → rules naming it.
	exact map[string][]int32
	// prefix: "spiffe://td/ns/prod/" → rules of "spiffe://td/ns/prod/*".
	prefix map[string][]int32
	// prefixLens has bit n set when some prefix key is n bytes long
	// (n < 256); longPrefix when one is longer. It saves map lookups.
	prefixLens [4]uint64
	longPrefix bool
	// any: rules with the principal "*".
	any []int32
}

type rule struct {
	policy  string // "namespace/name"
	reason  string // "denied by policy namespace/name"
	methods uint16 // bit set over httpMethods; 0 is any
	paths   []pathPattern
}

type pathPattern struct {
	s      string // without the trailing '*' of a prefix
	prefix bool
}

// query is a request as the rules see it.
type query struct {
	mode   mode
	method uint16
	path   string
}

type mode uint8

const (
	// modeL4: no method or path known (TCP).
	modeL4 mode = iota
	// modeL7: method and path known.
	modeL7
	// modeConn: an L7 connection before any request; a rule matches when
	// it could match some request (ALLOW) or certainly matches every
	// request (DENY).
	modeConn
)

const noMatch = int32(math.MaxInt32)

// Compile keeps only the policies that apply to dst: same namespace,
// destination == dst.Service or "*". defaultAction UNSPECIFIED (or any value
// but ALLOW) means DENY. Invalid rules (which the control plane should never
// store) are skipped, never widened.
func Compile(dst Destination, defaultAction meshfedv1.AuthorizationAction, policies []*meshfedv1.AuthorizationPolicy) *Engine {
	e := &Engine{defaultAllow: defaultAction == meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_ALLOW}
	e.deny.deny = true
	e.defaultDecision = Decision{Allow: e.defaultAllow, Reason: reasonDefaultDeny}
	e.plainDecision = Decision{Allow: e.defaultAllow, Reason: reasonPlainDefaultDeny}
	if e.defaultAllow {
		e.defaultDecision.Reason = reasonDefaultAllow
		e.plainDecision.Reason = reasonPlainDefaultAllow
	}

	var applicable []*meshfedv1.AuthorizationPolicy
	for _, p := range policies {
		m := p.GetMeta()
		if m.GetName() == "" || m.GetNamespace() == "" || m.GetNamespace() != dst.Namespace {
			continue
		}
		if d := p.GetDestination(); d == "" || d != "*" && d != dst.Service {
			continue
		}
		switch p.GetAction() {
		case meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_ALLOW, meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_DENY:
		default:
			e.skipped += len(p.GetRules())
			continue
		}
		applicable = append(applicable, p)
	}
	slices.SortStableFunc(applicable, func(a, b *meshfedv1.AuthorizationPolicy) int {
		return strings.Compare(a.GetMeta().GetName(), b.GetMeta().GetName())
	})

	for _, p := range applicable {
		ix, verb := &e.allow, "allowed by policy "
		if p.GetAction() == meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_DENY {
			ix, verb = &e.deny, "denied by policy "
		}
		name := p.GetMeta().GetNamespace() + "/" + p.GetMeta().GetName()
		reason := verb + name
		for _, r := range p.GetRules() {
			if !e.add(ix, name, reason, r) {
				e.skipped++
			}
		}
	}
	return e
}

// add compiles r into ix, or reports false when r is invalid.
func (e *Engine) add(ix *index, policy, reason string, r *meshfedv1.AuthorizationRule) bool {
	cr := rule{policy: policy, reason: reason}

	if len(r.GetMethods()) > maxMethods {
		return false
	}
	for _, m := range r.GetMethods() {
		i := slices.Index(httpMethods[:], m)
		if i < 0 {
			return false
		}
		cr.methods |= 1 << i
	}

	if len(r.GetPaths()) > maxPaths {
		return false
	}
	for _, p := range r.GetPaths() {
		if !validPath(p) {
			return false
		}
		// Compared with request paths in the same normal form.
		np, _ := normalizeEscapes(p, false)
		if s, ok := strings.CutSuffix(np, "*"); ok {
			cr.paths = append(cr.paths, pathPattern{s: s, prefix: true})
		} else {
			cr.paths = append(cr.paths, pathPattern{s: np})
		}
	}

	// Principals last: nothing is indexed unless the whole rule is valid.
	type key struct {
		s      string
		prefix bool
	}
	var keys []key
	wildcard := false
	if n := len(r.GetPrincipals()); n == 0 || n > maxPrincipals {
		return false
	}
	for _, pr := range r.GetPrincipals() {
		if len(pr) > maxStringLen || !utf8.ValidString(pr) {
			return false
		}
		if pr == "*" {
			wildcard = true
			continue
		}
		trimmed, below := strings.CutSuffix(pr, "/*")
		if trimmed == "" || strings.Contains(trimmed, "*") {
			return false
		}
		id, err := spiffeid.FromString(trimmed)
		if err != nil {
			return false
		}
		switch {
		case !below:
			keys = append(keys, key{s: id.String()})
		case id.Path() == "":
			// "spiffe://td/*": every ID of the trust domain, its own
			// ID included.
			keys = append(keys, key{s: id.String()}, key{s: id.String() + "/", prefix: true})
		default:
			keys = append(keys, key{s: id.String() + "/", prefix: true})
		}
	}

	n := int32(len(ix.rules))
	ix.rules = append(ix.rules, cr)
	if len(cr.paths) > 0 {
		e.pathRules = true
	}
	if wildcard {
		ix.any = appendRule(ix.any, n)
	}
	for _, k := range keys {
		if k.prefix {
			if ix.prefix == nil {
				ix.prefix = make(map[string][]int32)
			}
			ix.prefix[k.s] = appendRule(ix.prefix[k.s], n)
			if l := len(k.s); l < 256 {
				ix.prefixLens[l/64] |= 1 << (l % 64)
			} else {
				ix.longPrefix = true
			}
			continue
		}
		if ix.exact == nil {
			ix.exact = make(map[string][]int32)
		}
		ix.exact[k.s] = appendRule(ix.exact[k.s], n)
	}
	return true
}

// appendRule appends rule n to an ascending list once.
func appendRule(list []int32, n int32) []int32 {
	if len(list) > 0 && list[len(list)-1] == n {
		return list
	}
	return append(list, n)
}

// validPath is controlplane/validate's rule for a rule's path: an absolute
// path without spaces or control characters, '*' only as its last
// character.
func validPath(p string) bool {
	if len(p) > maxStringLen || !utf8.ValidString(p) || !strings.HasPrefix(p, "/") {
		return false
	}
	if i := strings.IndexByte(p, '*'); i >= 0 && i != len(p)-1 {
		return false
	}
	for _, r := range p {
		if r <= ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

// Skipped is the number of invalid rules Compile dropped among the policies
// that apply to the destination.
func (e *Engine) Skipped() int {
	if e == nil {
		return 0
	}
	return e.skipped
}

// Decide decides one request.
func (e *Engine) Decide(r Request) Decision {
	if e == nil {
		return Decision{Reason: ReasonNoEngine}
	}
	q := query{mode: modeL4}
	if r.L7 {
		path := r.Path
		if i := strings.IndexByte(path, '?'); i >= 0 {
			path = path[:i]
		}
		if e.pathRules {
			np, ok := normalizeEscapes(path, true)
			if !ok || !canonical(np) {
				return Decision{Reason: ReasonNonCanonicalPath}
			}
			path = np
		}
		q = query{mode: modeL7, method: methodBit(r.Method), path: path}
	}
	return e.decide(r.Principal.String(), &q)
}

func (e *Engine) decide(id string, q *query) Decision {
	if i := e.deny.first(id, q); i != noMatch {
		ru := &e.deny.rules[i]
		return Decision{Policy: ru.policy, Reason: ru.reason}
	}
	if i := e.allow.first(id, q); i != noMatch {
		ru := &e.allow.rules[i]
		return Decision{Allow: true, Policy: ru.policy, Reason: ru.reason}
	}
	if id == "" {
		return e.plainDecision
	}
	return e.defaultDecision
}

// AllowsConnection decides a connection before any request is read (TCP
// services, and the connection-level check of HTTP services): true when
// some request from this principal could be allowed. With l7 false it is
// Decide of a non-L7 request.
func (e *Engine) AllowsConnection(p spiffeid.ID, l7 bool) bool {
	if e == nil {
		return false
	}
	q := query{mode: modeL4}
	if l7 {
		q.mode = modeConn
	}
	return e.decide(p.String(), &q).Allow
}

// first returns the first rule of ix matching the caller id ("" for plain
// text) and q, or noMatch.
func (ix *index) first(id string, q *query) int32 {
	best := noMatch
	if id == "" {
		// A plain-text caller matches only "*", and only in DENY rules.
		if ix.deny {
			best = ix.scan(ix.any, best, q)
		}
		return best
	}
	if len(ix.exact) > 0 {
		best = ix.scan(ix.exact[id], best, q)
	}
	if len(ix.prefix) > 0 && len(id) > len(spiffeScheme) {
		// Each '/' ends a candidate prefix: the trust domain's, then one
		// per path segment but the last.
		for i := len(spiffeScheme); ; i++ {
			j := strings.IndexByte(id[i:], '/')
			if j < 0 {
				break
			}
			i += j
			if n := i + 1; n < len(id) && ix.hasPrefixLen(n) {
				best = ix.scan(ix.prefix[id[:n]], best, q)
			}
		}
	}
	return ix.scan(ix.any, best, q)
}

func (ix *index) hasPrefixLen(n int) bool {
	if n >= 256 {
		return ix.longPrefix
	}
	return ix.prefixLens[n/64]&(1<<(n%64)) != 0
}

// scan returns the first rule of the ascending list below best that
// matches q, or best.
func (ix *index) scan(list []int32, best int32, q *query) int32 {
	for _, i := range list {
		if i >= best {
			break
		}
		if ix.rules[i].matches(q, ix.deny) {
			return i
		}
	}
	return best
}

// matches reports whether r, whose principals match, matches q.
func (r *rule) matches(q *query, deny bool) bool {
	if r.methods == 0 && len(r.paths) == 0 {
		return true
	}
	switch q.mode {
	case modeL4:
		// Methods and paths cannot be checked: fail closed.
		return deny
	case modeConn:
		return !deny
	}
	if r.methods != 0 && r.methods&q.method == 0 {
		return false
	}
	if len(r.paths) == 0 {
		return true
	}
	for i := range r.paths {
		p := &r.paths[i]
		if p.prefix {
			if strings.HasPrefix(q.path, p.s) {
				return true
			}
		} else if q.path == p.s {
			return true
		}
	}
	return false
}

// methodBit is the bit of method in a rule's method set, 0 for a method no
// rule can name.
func methodBit(m string) uint16 {
	for i, name := range httpMethods {
		if len(name) == len(m) && strings.EqualFold(name, m) {
			return 1 << i
		}
	}
	return 0
}

// canonical reports whether path starts with '/' and has no empty, "." or
// ".." segment; a trailing '/' is fine.
// normalizeEscapes decodes a path's percent-encodings once, as the
// application will before it routes the request: "/%61dmin" must meet the
// rules for "/admin", and "/a%2Bb" those for "/a+b". (Decoding only the
// unreserved characters, as RFC 3986's normal form does, would let an
// encoded "+" or ":" past a rule that names it.) Rule paths are decoded
// the same way, so a rule may be written either way.
//
// For a request path (request true), ok is false when an encoding is
// malformed or encodes "/" or "\\": whether an application splits path
// segments before or after decoding those differs, so a path with them
// cannot be matched safely (Istio's REJECT for escaped slashes). A rule's
// path never fails: a malformed encoding stays as written.
func normalizeEscapes(p string, request bool) (string, bool) {
	i := strings.IndexByte(p, '%')
	if i < 0 {
		return p, true
	}
	b := make([]byte, 0, len(p))
	b = append(b, p[:i]...)
	for ; i < len(p); i++ {
		c := p[i]
		if c != '%' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
			if request {
				return "", false
			}
			b = append(b, c)
			continue
		}
		d := unhex(p[i+1])<<4 | unhex(p[i+2])
		if request && (d == '/' || d == '\\') {
			return "", false
		}
		b = append(b, d)
		i += 2
	}
	return string(b), true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

func canonical(path string) bool {
	if path == "" || path[0] != '/' {
		return false
	}
	start := 1
	for i := 1; i <= len(path); i++ {
		if i < len(path) && path[i] != '/' {
			continue
		}
		switch path[start:i] {
		case "":
			if i < len(path) {
				return false // "//"
			}
		case ".", "..":
			return false
		}
		start = i + 1
	}
	return true
}
