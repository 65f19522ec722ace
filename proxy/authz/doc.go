// Package authz is the per-pod proxy's authorization engine: it decides
// whether an inbound connection or request to the service the proxy guards
// is allowed by the mesh's AuthorizationPolicy resources and the mesh
// settings' default_authorization_action.
//
// It is pure logic, with no I/O. Compile turns the policies of one
// destination into an immutable *Engine; Decide and AllowsConnection run on
// every inbound connection and request without allocating and are safe for
// concurrent use. When policies or mesh settings change, the proxy compiles
// a new Engine and swaps it in atomically, for example with an
// atomic.Pointer[Engine]; requests in flight finish with the snapshot they
// started with. A nil *Engine (nothing loaded yet) denies everything.
//
// # Which policies apply
//
// Compile keeps the policies in the destination's namespace whose
// destination is the destination's service name or "*". Policies are
// ordered by name (they share a namespace), rules in policy order; when
// several rules match, the first in that order names the deciding policy, so
// a decision does not depend on the order policies were received in.
//
// # Evaluation
//
//  1. DENY policies first: any matching DENY rule denies.
//  2. Then ALLOW policies: any matching ALLOW rule allows.
//  3. Otherwise the default action decides; UNSPECIFIED means DENY.
//
// A rule matches a request when one of its principals matches the caller,
// and its methods are empty or one of them equals the request's method
// (case-insensitively), and its paths are empty or one of them matches the
// request's path.
//
// # Principals
//
// The forms the control plane stores (controlplane/validate) and no others:
//
//   - "spiffe://td/ns/prod/sa/web": exactly that SPIFFE ID.
//   - "spiffe://td/ns/prod/*": every ID strictly below the path
//     (spiffe://td/ns/prod/sa/web, not spiffe://td/ns/prod itself nor
//     spiffe://td/ns/production).
//   - "spiffe://td/*": every ID of trust domain td. A peer cluster's trust
//     domain is named the same way; trust domains never match each other.
//   - "*": any authenticated caller, of any trust domain.
//
// IDs are compared as strings, byte for byte, as go-spiffe prints them.
//
// # Plain-text callers
//
// Under PERMISSIVE mTLS a caller without an SVID has the zero
// spiffeid.ID. It matches no principal pattern except "*" in a DENY rule:
// DENY "*" denies plain text too, while ALLOW "*" does not allow it. A
// plain-text caller is therefore allowed only by the default action ALLOW.
//
// # Methods and paths
//
// Methods compare case-insensitively ("get" matches a rule's "GET"); a
// method the rules cannot name (e.g. PROPFIND) matches only rules without
// methods. gRPC calls are "POST" to "/pkg.Service/Method".
//
// A path pattern matches exactly, or, when it ends in "*", as a prefix of
// the request path ("/api/*" matches "/api/" and "/api/v1/x" but not "/api").
// A query string is cut off at the first '?'. The rest of the path is
// percent-decoded once, as the application will decode it before routing,
// and then compared case-sensitively: "/%61dmin" and "/admin" are the same
// path, and so are "/a%2Bb" and "/a+b". Rule paths are decoded the same way,
// so a rule may be written either way. (Envoy's matchers compare the path
// as sent; Istio normalizes only some of it. Decoding it all means no
// encoding of a character a rule names gets past that rule.)
//
// When the engine holds any rule with paths, an L7 request is denied
// before any policy is evaluated, with the reason "non-canonical path",
// when its path has a malformed percent-encoding, an encoded "/" or "\"
// ("%2F", "%5C": applications disagree on whether those split segments),
// or, once decoded, is not in canonical form: a path such as
// "/public/../admin" or "/public/%2e%2e/admin" could reach a path the rules
// would have matched once the application resolves it. Canonical means: it
// starts with "/", has no empty segment ("//"), and no "." or ".." segment
// ("/./", "/../", or a trailing "/." or "/..").
//
// # TCP services (non-L7 requests)
//
// For TCP services the proxy sees no method or path. As Istio does, rules
// that name methods or paths are then treated so as to fail closed: an ALLOW
// rule with methods or paths never matches (it cannot be checked), and a
// DENY rule with methods or paths matches on its principals alone.
//
// # Connection-level checks
//
// AllowsConnection decides before any request is read. For TCP services
// (l7 false) it is exactly Decide of a non-L7 request. For HTTP and gRPC
// services (l7 true) it is false only when no request of the principal could
// be allowed: a matching DENY rule has no methods and no paths, or the
// default action is DENY and no ALLOW rule's principals match (whatever its
// methods and paths). Every request on an allowed connection is still
// decided with Decide.
//
// # Invalid rules
//
// Rules the control plane would refuse to store (bad principal, method or
// path, or too many of them) are skipped whole, never widened: an ALLOW rule
// with one unknown method does not become a rule for every method. Policies
// without a name, namespace or destination, or with an action other than
// ALLOW or DENY, are skipped. Skipped reports how many rules were dropped,
// so the proxy can log it.
//
// # Client certificate header
//
// XFCC builds the X-Forwarded-Client-Cert header the inbound proxy sets for
// the application, in Envoy's format, and ParseXFCC parses one.
package authz
