package validate

import (
	"slices"
	"strings"
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// httpMethods are the methods an authorization rule may name.
var httpMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// retryConditions are the values of RetryPolicy.retry_on.
var retryConditions = []string{"connect-failure", "5xx", "reset", "unavailable", "gateway-error"}

// Traffic policy bounds.
const (
	maxPolicyDuration = 24 * time.Hour
	maxRetryAttempts  = 10
	splitWeightTotal  = 100
)

func checkAuthorizationPolicy(c *checker, root string, p *meshfedv1.AuthorizationPolicy) {
	c.meta(root, p.GetMeta(), true, false)
	if d := p.GetDestination(); d != "*" {
		c.dnsLabel(field(root, "destination"), d)
	}
	c.required(field(root, "action"), p.GetAction() != meshfedv1.AuthorizationAction_AUTHORIZATION_ACTION_UNSPECIFIED)
	rules := field(root, "rules")
	if len(p.GetRules()) == 0 {
		c.fail(rules, "at least one rule is required")
	}
	for i, r := range p.GetRules() {
		checkAuthorizationRule(c, index(rules, i), r)
	}
}

func checkAuthorizationRule(c *checker, path string, r *meshfedv1.AuthorizationRule) {
	principals := field(path, "principals")
	if len(r.GetPrincipals()) == 0 {
		c.fail(principals, "at least one principal is required")
	}
	for i, pr := range r.GetPrincipals() {
		if !c.ok() {
			return
		}
		if pr == "*" {
			continue
		}
		// "spiffe://td/ns/prod/*" matches every ID below the path.
		id := strings.TrimSuffix(pr, "/*")
		if id == "" || strings.Contains(id, "*") {
			c.failf(index(principals, i), "%q must be \"*\" or a SPIFFE ID, optionally ending in \"/*\"", pr)
			continue
		}
		c.spiffeID(index(principals, i), id)
	}
	for i, m := range r.GetMethods() {
		if c.ok() && !slices.Contains(httpMethods, m) {
			c.failf(index(field(path, "methods"), i), "%q must be one of %s", m, quoteAll(httpMethods))
		}
	}
	for i, p := range r.GetPaths() {
		if c.ok() {
			checkPath(c, index(field(path, "paths"), i), p)
		}
	}
}

// checkPath: an absolute request path, without spaces or control
// characters; '*' only as the last character (a prefix match).
func checkPath(c *checker, path, p string) {
	if !strings.HasPrefix(p, "/") {
		c.failf(path, "%q must start with \"/\"", p)
		return
	}
	if i := strings.IndexByte(p, '*'); i >= 0 && i != len(p)-1 {
		c.failf(path, "%q may hold \"*\" only at its end", p)
		return
	}
	for _, r := range p {
		if r <= ' ' || r == 0x7f {
			c.failf(path, "%q must not contain spaces or control characters", p)
			return
		}
	}
}

func checkTrafficPolicy(c *checker, root string, p *meshfedv1.TrafficPolicy) {
	c.meta(root, p.GetMeta(), true, false)
	c.dnsLabel(field(root, "destination"), p.GetDestination())
	checkTrafficRules(c, root, p)
}

// checkTrafficRules checks everything of a traffic policy but its meta and
// destination; the mesh settings' default policy has neither.
func checkTrafficRules(c *checker, root string, p *meshfedv1.TrafficPolicy) {
	t := field(root, "timeouts")
	c.maxDuration(field(t, "connect"), p.GetTimeouts().GetConnect(), maxPolicyDuration)
	c.maxDuration(field(t, "request"), p.GetTimeouts().GetRequest(), maxPolicyDuration)
	c.maxDuration(field(t, "idle"), p.GetTimeouts().GetIdle(), maxPolicyDuration)

	r := field(root, "retries")
	if n := p.GetRetries().GetAttempts(); c.ok() && n > maxRetryAttempts {
		c.failf(field(r, "attempts"), "%d must be at most %d", n, maxRetryAttempts)
	}
	c.maxDuration(field(r, "per_try_timeout"), p.GetRetries().GetPerTryTimeout(), maxPolicyDuration)
	for i, cond := range p.GetRetries().GetRetryOn() {
		if c.ok() && !slices.Contains(retryConditions, cond) {
			c.failf(index(field(r, "retry_on"), i), "%q must be one of %s", cond, quoteAll(retryConditions))
		}
	}
	c.unique(field(r, "retry_on"), p.GetRetries().GetRetryOn())

	cb := field(root, "circuit_breaker")
	c.maxDuration(field(cb, "base_ejection_time"), p.GetCircuitBreaker().GetBaseEjectionTime(), maxPolicyDuration)
	if n := p.GetCircuitBreaker().GetMaxEjectionPercent(); c.ok() && n > 100 {
		c.failf(field(cb, "max_ejection_percent"), "%d must be between 0 and 100", n)
	}

	if rps := p.GetRateLimit().GetRequestsPerSecond(); c.ok() && rps < 0 {
		c.fail(field(field(root, "rate_limit"), "requests_per_second"), "must not be negative")
	}

	splits := field(root, "splits")
	var total uint64
	versions := make([]string, 0, len(p.GetSplits()))
	for i, s := range p.GetSplits() {
		sp := index(splits, i)
		if c.ok() && s.GetVersion() == "" {
			c.fail(field(sp, "version"), "is required")
		}
		c.labelValue(field(sp, "version"), s.GetVersion())
		if c.ok() && s.GetWeight() > splitWeightTotal {
			c.failf(field(sp, "weight"), "%d must be between 0 and 100", s.GetWeight())
		}
		total += uint64(s.GetWeight())
		versions = append(versions, s.GetVersion())
	}
	if c.ok() && len(p.GetSplits()) > 0 && total != splitWeightTotal {
		c.failf(splits, "weights add up to %d, not 100", total)
	}
	for i, v := range versions {
		if c.ok() && slices.Index(versions, v) != i {
			c.failf(field(index(splits, i), "version"), "%q is repeated", v)
		}
	}

	failover := field(root, "failover")
	for i, f := range p.GetFailover() {
		c.dnsLabel(index(failover, i), f)
	}
	c.unique(failover, p.GetFailover())

	f := field(root, "fault")
	c.maxDuration(field(f, "delay"), p.GetFault().GetDelay(), maxPolicyDuration)
	c.percent(field(f, "delay_percent"), p.GetFault().GetDelayPercent())
	c.percent(field(f, "abort_percent"), p.GetFault().GetAbortPercent())
	status := p.GetFault().GetAbortStatus()
	if c.ok() && (status != 0 || p.GetFault().GetAbortPercent() > 0) && (status < 200 || status > 599) {
		c.failf(field(f, "abort_status"), "%d must be an HTTP status between 200 and 599", status)
	}
}
