package proxy

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// Defaults of the parts of a traffic policy that neither the destination's
// policy nor the mesh settings' default policy set.
const (
	defaultAttempts     = 3
	defaultBaseEjection = 30 * time.Second
	maxEjectionFactor   = 10
	retryBackoffBase    = 25 * time.Millisecond
	retryBackoffMax     = 250 * time.Millisecond
)

// retryCond is a set of retry conditions (RetryPolicy.retry_on).
type retryCond uint8

const (
	retryConnect     retryCond = 1 << iota // the connection or handshake failed
	retryReset                             // the connection failed after the request was sent
	retry5xx                               // any 5xx status (and a per-try timeout)
	retryGateway                           // 502, 503, 504 (and a per-try timeout)
	retryUnavailable                       // gRPC UNAVAILABLE
)

// parseRetryOn maps retry_on to conditions; the control plane validates the
// names, so an unknown one is ignored.
func parseRetryOn(names []string) retryCond {
	var c retryCond
	for _, n := range names {
		switch strings.ToLower(strings.TrimSpace(n)) {
		case "connect-failure":
			c |= retryConnect
		case "reset":
			c |= retryReset
		case "5xx":
			c |= retry5xx
		case "gateway-error":
			c |= retryGateway
		case "unavailable":
			c |= retryUnavailable
		}
	}
	return c
}

// retryStatus reports whether a response with this HTTP status (and gRPC
// status from a trailers-only response, -1 when none) is retried.
func (c retryCond) retryStatus(code, grpcStatus int) bool {
	switch {
	case c&retry5xx != 0 && code >= 500 && code <= 599:
		return true
	case c&retryGateway != 0 && (code == 502 || code == 503 || code == 504):
		return true
	case c&retryUnavailable != 0 && grpcStatus == 14:
		return true
	}
	return false
}

// retryTimeout reports whether an attempt that ran out of its per-try
// timeout is retried: as a 504.
func (c retryCond) retryTimeout() bool { return c&(retry5xx|retryGateway) != 0 }

// split is one weighted version of a traffic split.
type split struct {
	version string
	weight  int
}

// route is an upstream's traffic policy, compiled: the destination's policy
// with every part it leaves unset taken from the mesh settings' default.
type route struct {
	lb meshfedv1.LoadBalancer

	connectTimeout time.Duration // dial and handshake
	requestTimeout time.Duration // a whole request, retries included; 0: none
	idleTimeout    time.Duration // pooled HTTP/1.1 connections; 0: the default

	attempts int // total, the first included
	perTry   time.Duration
	retryOn  retryCond

	// Circuit breaking; 0 is no limit.
	maxConns, maxPending, maxRequests int64
	// Outlier ejection after consecutive errors; 0: only connection
	// failures eject, for ejectFor.
	consecutive int64
	baseEject   time.Duration
	maxEjectPct int

	splits      []split
	splitWeight int

	delay       time.Duration
	delayPct    float64
	abortStatus int
	abortPct    float64
}

// defaultRoute is the route of an upstream before any policy arrives.
var defaultRoute = compileRoute(nil, nil)

// compileRoute merges a destination's policy (nil when it has none) over
// the mesh settings' default policy (nil when unset).
func compileRoute(tp, def *meshfedv1.TrafficPolicy) *route {
	r := &route{connectTimeout: connectTimeout, attempts: defaultAttempts, retryOn: retryConnect | retryReset}

	r.lb = tp.GetLoadBalancer()
	if r.lb == meshfedv1.LoadBalancer_LOAD_BALANCER_UNSPECIFIED {
		r.lb = def.GetLoadBalancer()
	}
	dur := func(get func(*meshfedv1.Timeouts) time.Duration) time.Duration {
		if d := get(tp.GetTimeouts()); d > 0 {
			return d
		}
		return max(get(def.GetTimeouts()), 0)
	}
	if d := dur(func(t *meshfedv1.Timeouts) time.Duration { return t.GetConnect().AsDuration() }); d > 0 {
		r.connectTimeout = d
	}
	r.requestTimeout = dur(func(t *meshfedv1.Timeouts) time.Duration { return t.GetRequest().AsDuration() })
	r.idleTimeout = dur(func(t *meshfedv1.Timeouts) time.Duration { return t.GetIdle().AsDuration() })

	rp := tp.GetRetries()
	if rp == nil {
		rp = def.GetRetries()
	}
	if rp != nil {
		if rp.GetAttempts() > 0 {
			r.attempts = int(rp.GetAttempts())
		}
		r.perTry = max(rp.GetPerTryTimeout().AsDuration(), 0)
		if c := parseRetryOn(rp.GetRetryOn()); c != 0 {
			r.retryOn = c
		}
	}

	cb := tp.GetCircuitBreaker()
	if cb == nil {
		cb = def.GetCircuitBreaker()
	}
	if cb != nil {
		r.maxConns = int64(cb.GetMaxConnections())
		r.maxPending = int64(cb.GetMaxPendingRequests())
		r.maxRequests = int64(cb.GetMaxRequests())
		r.consecutive = int64(cb.GetConsecutiveErrors())
		r.baseEject = cb.GetBaseEjectionTime().AsDuration()
		if r.baseEject <= 0 {
			r.baseEject = defaultBaseEjection
		}
		r.maxEjectPct = int(cb.GetMaxEjectionPercent())
	}
	if r.maxEjectPct <= 0 || r.maxEjectPct > 100 {
		r.maxEjectPct = 100
	}

	splits := tp.GetSplits()
	if len(splits) == 0 {
		splits = def.GetSplits()
	}
	for _, s := range splits {
		if s.GetWeight() == 0 {
			continue
		}
		r.splits = append(r.splits, split{version: s.GetVersion(), weight: int(s.GetWeight())})
		r.splitWeight += int(s.GetWeight())
	}

	f := tp.GetFault()
	if f == nil {
		f = def.GetFault()
	}
	if f != nil {
		r.delay = f.GetDelay().AsDuration()
		r.delayPct = f.GetDelayPercent()
		r.abortStatus = int(f.GetAbortStatus())
		r.abortPct = f.GetAbortPercent()
		if r.abortStatus < 200 || r.abortStatus > 599 {
			r.abortPct = 0
		}
	}
	return r
}

// hasFault reports whether the route injects faults at all.
func (r *route) hasFault() bool {
	return (r.abortPct > 0) || (r.delayPct > 0 && r.delay > 0)
}

// fault decides one request's injected fault: an abort status (0: none)
// and a delay.
func (r *route) fault() (abort int, delay time.Duration) {
	if r.abortPct > 0 && rand.Float64()*100 < r.abortPct {
		return r.abortStatus, 0
	}
	if r.delayPct > 0 && r.delay > 0 && rand.Float64()*100 < r.delayPct {
		return 0, r.delay
	}
	return 0, 0
}

// version picks the version a request goes to by the splits' weights; ""
// when the route has no splits.
func (r *route) version() string {
	if r.splitWeight == 0 {
		return ""
	}
	n := rand.IntN(r.splitWeight)
	for _, s := range r.splits {
		if n < s.weight {
			return s.version
		}
		n -= s.weight
	}
	return r.splits[len(r.splits)-1].version
}

// backoff is the wait before retry number n (1 for the first retry): full
// jitter over an exponential bound.
func backoff(n int) time.Duration {
	bound := retryBackoffBase << min(n-1, 8)
	if bound > retryBackoffMax {
		bound = retryBackoffMax
	}
	return time.Duration(rand.Int64N(int64(bound)) + 1)
}

// tokenBucket admits requests at a rate with bursts. The zero rate admits
// everything.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate float64, burst uint32) *tokenBucket {
	if rate <= 0 {
		return nil
	}
	b := float64(burst)
	if b < 1 {
		b = math.Max(1, math.Ceil(rate))
	}
	return &tokenBucket{rate: rate, burst: b, tokens: b}
}

// allow takes a token if there is one; nil admits everything.
func (b *tokenBucket) allow(now time.Time) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// connLimiter counts an upstream's HTTP/1.1 and TCP connections for the
// circuit breaker's max_connections, and the requests waiting for one
// (max_pending_requests).
type connLimiter struct {
	mu      sync.Mutex
	open    int64
	pending int64
	// changed is closed and replaced when a connection closes or goes
	// back to a pool, so that waiting requests look again.
	changed chan struct{}
}

// tryOpen counts a new connection unless max (0: no limit) are open.
func (l *connLimiter) tryOpen(max int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if max > 0 && l.open >= max {
		return false
	}
	l.open++
	return true
}

// closed uncounts a connection.
func (l *connLimiter) closed() {
	l.mu.Lock()
	l.open--
	l.signalLocked()
	l.mu.Unlock()
}

// freed tells waiting requests that a connection went back to a pool.
func (l *connLimiter) freed() {
	l.mu.Lock()
	if l.pending > 0 {
		l.signalLocked()
	}
	l.mu.Unlock()
}

func (l *connLimiter) signalLocked() {
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
}

// wait waits, as one of at most maxPending (0: no limit) pending requests,
// until a connection closes or goes back to a pool, or ctx ends. It
// reports false when too many requests are pending already.
func (l *connLimiter) wait(ctx context.Context, maxPending int64) (bool, error) {
	l.mu.Lock()
	if maxPending > 0 && l.pending >= maxPending {
		l.mu.Unlock()
		return false, nil
	}
	l.pending++
	if l.changed == nil {
		l.changed = make(chan struct{})
	}
	ch := l.changed
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.pending--
		l.mu.Unlock()
	}()
	select {
	case <-ch:
		return true, nil
	case <-ctx.Done():
		return true, ctx.Err()
	}
}

// ejectionAllowed reports whether ejecting one more endpoint of set keeps
// the ejected share within pct percent. One endpoint may always be
// ejected: the proxy still uses ejected endpoints when nothing else is
// left.
func ejectionAllowed(set *endpointSet, pct int, now int64) bool {
	if pct >= 100 || set == nil || len(set.all) <= 1 {
		return true
	}
	n := 1
	for _, e := range set.all {
		if e.ejectedUntil.Load() > now {
			n++
		}
	}
	return n*100 <= pct*len(set.all) || n == 1
}

// rateLimit is the inbound rate limit in force and the settings it was
// made from, so that a policy update that keeps them keeps the bucket.
type rateLimit struct {
	rps    float64
	burst  uint32
	bucket *tokenBucket
}

// setRateLimit applies the service's rate limit (nil: none) to inbound
// requests and connections: every endpoint admits requests_per_second,
// with bursts of burst.
func (p *Proxy) setRateLimit(rl *meshfedv1.RateLimit) {
	cur := p.rateLimit.Load()
	rps, burst := rl.GetRequestsPerSecond(), rl.GetBurst()
	if cur != nil && cur.rps == rps && cur.burst == burst {
		return
	}
	p.rateLimit.Store(&rateLimit{rps: rps, burst: burst, bucket: newTokenBucket(rps, burst)})
}

// rateAllow takes a token for one inbound request or connection.
func (p *Proxy) rateAllow(now time.Time) bool {
	rl := p.rateLimit.Load()
	if rl == nil || rl.bucket.allow(now) {
		return true
	}
	p.m.rateLimited.WithLabelValues(p.cfg.Namespace + "/" + p.cfg.Service).Inc()
	return false
}

// count records one request (or TCP connection) to ep and whether it
// failed (a 5xx answer, or none), for the topology heartbeats report.
func (ep *endpoint) count(code int) {
	ep.sent.Add(1)
	if code >= 500 || code == 0 {
		ep.failed.Add(1)
	}
}

// takeTrafficCounts collects and clears what was sent to each upstream,
// by the cluster of the endpoints that served it.
func (p *Proxy) takeTrafficCounts() []*meshfedv1.TrafficCount {
	var out []*meshfedv1.TrafficCount
	for _, u := range p.upstreams {
		set := u.set.Load()
		if set == nil {
			continue
		}
		var byCluster []*meshfedv1.TrafficCount
		for _, ep := range set.all {
			n := ep.sent.Swap(0)
			if n == 0 {
				continue
			}
			f := min(ep.failed.Swap(0), n)
			cluster := ep.remote
			i := slices.IndexFunc(byCluster, func(c *meshfedv1.TrafficCount) bool { return c.Cluster == cluster })
			if i < 0 {
				byCluster = append(byCluster, &meshfedv1.TrafficCount{Namespace: u.cfg.Namespace, Service: u.cfg.Service, Cluster: cluster})
				i = len(byCluster) - 1
			}
			byCluster[i].Requests += n
			byCluster[i].Errors += f
		}
		out = append(out, byCluster...)
	}
	return out
}

// putBackTrafficCounts keeps counts a failed heartbeat did not deliver;
// they go to the first endpoint of their upstream and cluster.
func (p *Proxy) putBackTrafficCounts(counts []*meshfedv1.TrafficCount) {
	for _, c := range counts {
		for _, u := range p.upstreams {
			if u.cfg.Namespace != c.Namespace || u.cfg.Service != c.Service {
				continue
			}
			set := u.set.Load()
			if set == nil {
				continue
			}
			for _, ep := range set.all {
				if ep.remote == c.Cluster {
					ep.sent.Add(c.Requests)
					ep.failed.Add(c.Errors)
					break
				}
			}
		}
	}
}
