package provider

import (
	"context"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-validators/float64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/listvalidator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// The rules of a traffic policy, shared by meshfed_traffic_policy and the
// default_traffic_policy of meshfed_mesh_settings.

// maxPolicyDuration bounds the durations of a traffic policy.
const maxPolicyDuration = 24 * time.Hour

// retryConditions are the values of retries.retry_on.
var retryConditions = []string{"connect-failure", "5xx", "reset", "unavailable", "gateway-error"}

var loadBalancerChoices = enumChoices(meshfedv1.LoadBalancer(0).Descriptor())

type trafficRulesModel struct {
	Timeouts       *policyTimeoutsModel `tfsdk:"timeouts"`
	Retries        *retriesModel        `tfsdk:"retries"`
	CircuitBreaker *circuitBreakerModel `tfsdk:"circuit_breaker"`
	RateLimit      *rateLimitModel      `tfsdk:"rate_limit"`
	LoadBalancer   types.String         `tfsdk:"load_balancer"`
	Splits         []splitModel         `tfsdk:"splits"`
	Failover       types.List           `tfsdk:"failover"`
	Fault          *faultModel          `tfsdk:"fault"`
}

type policyTimeoutsModel struct {
	Connect types.String `tfsdk:"connect"`
	Request types.String `tfsdk:"request"`
	Idle    types.String `tfsdk:"idle"`
}

type retriesModel struct {
	Attempts      types.Int64  `tfsdk:"attempts"`
	PerTryTimeout types.String `tfsdk:"per_try_timeout"`
	RetryOn       types.List   `tfsdk:"retry_on"`
}

type circuitBreakerModel struct {
	MaxConnections     types.Int64  `tfsdk:"max_connections"`
	MaxPendingRequests types.Int64  `tfsdk:"max_pending_requests"`
	MaxRequests        types.Int64  `tfsdk:"max_requests"`
	ConsecutiveErrors  types.Int64  `tfsdk:"consecutive_errors"`
	BaseEjectionTime   types.String `tfsdk:"base_ejection_time"`
	MaxEjectionPercent types.Int64  `tfsdk:"max_ejection_percent"`
}

type rateLimitModel struct {
	RequestsPerSecond types.Float64 `tfsdk:"requests_per_second"`
	Burst             types.Int64   `tfsdk:"burst"`
}

type splitModel struct {
	Version types.String `tfsdk:"version"`
	Weight  types.Int64  `tfsdk:"weight"`
}

type faultModel struct {
	Delay        types.String  `tfsdk:"delay"`
	DelayPercent types.Float64 `tfsdk:"delay_percent"`
	AbortStatus  types.Int64   `tfsdk:"abort_status"`
	AbortPercent types.Float64 `tfsdk:"abort_percent"`
}

func policyDuration(desc string) schema.StringAttribute {
	return schema.StringAttribute{
		MarkdownDescription: desc + " A duration such as `250ms`, `5s` or `1m`, at most `24h`.",
		Optional:            true,
		Validators:          []validator.String{durationBetween(0, maxPolicyDuration)},
	}
}

func optionalUint32(desc string, validators ...validator.Int64) schema.Int64Attribute {
	return schema.Int64Attribute{
		MarkdownDescription: desc,
		Optional:            true,
		Validators:          append([]validator.Int64{int64validator.Between(0, 1<<32-1)}, validators...),
	}
}

func percent(desc string) schema.Float64Attribute {
	return schema.Float64Attribute{
		MarkdownDescription: desc + " (0-100).",
		Optional:            true,
		Validators:          []validator.Float64{float64validator.Between(0, 100)},
	}
}

// trafficRuleAttributes are the schema of the rules.
func trafficRuleAttributes() map[string]schema.Attribute {
	return map[string]schema.Attribute{
		"timeouts": schema.SingleNestedAttribute{
			MarkdownDescription: "Timeouts of calls to the destination.",
			Optional:            true,
			Attributes: map[string]schema.Attribute{
				"connect": policyDuration("Connection timeout."),
				"request": policyDuration("Timeout of a whole request, retries included."),
				"idle":    policyDuration("Idle timeout of a connection."),
			},
		},
		"retries": schema.SingleNestedAttribute{
			MarkdownDescription: "Retries of failed requests.",
			Optional:            true,
			Attributes: map[string]schema.Attribute{
				"attempts": schema.Int64Attribute{
					MarkdownDescription: "Total attempts including the first (1-10); 0 or unset means no retries.",
					Optional:            true,
					Validators:          []validator.Int64{int64validator.Between(0, 10)},
				},
				"per_try_timeout": policyDuration("Timeout of each attempt."),
				"retry_on": schema.ListAttribute{
					MarkdownDescription: "Conditions that are retried: " + quotedList(retryConditions) + ".",
					ElementType:         types.StringType,
					Optional:            true,
					Validators: []validator.List{
						listvalidator.SizeAtMost(8),
						listvalidator.UniqueValues(),
						listvalidator.ValueStringsAre(stringvalidator.OneOf(retryConditions...)),
					},
				},
			},
		},
		"circuit_breaker": schema.SingleNestedAttribute{
			MarkdownDescription: "Connection and request limits, and outlier ejection.",
			Optional:            true,
			Attributes: map[string]schema.Attribute{
				"max_connections":      optionalUint32("Maximum connections to the destination."),
				"max_pending_requests": optionalUint32("Maximum requests waiting for a connection."),
				"max_requests":         optionalUint32("Maximum concurrent requests."),
				"consecutive_errors":   optionalUint32("Consecutive 5xx or connection errors after which an endpoint is ejected."),
				"base_ejection_time":   policyDuration("How long an endpoint is ejected the first time."),
				"max_ejection_percent": optionalUint32("Maximum share of endpoints ejected at once (0-100).", int64validator.Between(0, 100)),
			},
		},
		"rate_limit": schema.SingleNestedAttribute{
			MarkdownDescription: "Token bucket rate limit, per destination endpoint.",
			Optional:            true,
			Attributes: map[string]schema.Attribute{
				"requests_per_second": schema.Float64Attribute{
					MarkdownDescription: "Refill rate of the bucket, in requests per second (not negative).",
					Optional:            true,
					Validators:          []validator.Float64{float64validator.AtLeast(0)},
				},
				"burst": optionalUint32("Size of the bucket."),
			},
		},
		"load_balancer": schema.StringAttribute{
			MarkdownDescription: "How a caller picks an endpoint: " + quotedList(loadBalancerChoices) + ".",
			Optional:            true,
			Validators:          []validator.String{stringvalidator.OneOf(loadBalancerChoices...)},
		},
		"splits": schema.ListNestedAttribute{
			MarkdownDescription: "Weighted splits by the workloads' `version_label`; the weights add up to 100.",
			Optional:            true,
			Validators:          []validator.List{listvalidator.SizeAtMost(16), splitWeights{}},
			NestedObject: schema.NestedAttributeObject{
				Attributes: map[string]schema.Attribute{
					"version": schema.StringAttribute{
						MarkdownDescription: "Version label of the workloads that get this share.",
						Required:            true,
						Validators:          []validator.String{labelValue()},
					},
					"weight": schema.Int64Attribute{
						MarkdownDescription: "Share of the traffic, 0-100.",
						Required:            true,
						Validators:          []validator.Int64{int64validator.Between(0, 100)},
					},
				},
			},
		},
		"failover": schema.ListAttribute{
			MarkdownDescription: "Names of clusters to fail over to, in order, when no local endpoint is healthy.",
			ElementType:         types.StringType,
			Optional:            true,
			Validators: []validator.List{
				listvalidator.SizeAtMost(16),
				listvalidator.UniqueValues(),
				listvalidator.ValueStringsAre(dnsLabel()),
			},
		},
		"fault": schema.SingleNestedAttribute{
			MarkdownDescription: "Fault injection, for testing how callers cope.",
			Optional:            true,
			Attributes: map[string]schema.Attribute{
				"delay":         policyDuration("Delay added to delayed requests."),
				"delay_percent": percent("Share of requests delayed"),
				"abort_status": schema.Int64Attribute{
					MarkdownDescription: "HTTP status returned for aborted requests (200-599).",
					Optional:            true,
					Validators:          []validator.Int64{int64validator.Between(200, 599)},
				},
				"abort_percent": percent("Share of requests aborted"),
			},
		},
	}
}

func (m *trafficRulesModel) toAPI(ctx context.Context, p *meshfedv1.TrafficPolicy, d *diag.Diagnostics) {
	if t := m.Timeouts; t != nil {
		p.Timeouts = &meshfedv1.Timeouts{Connect: durationProto(t.Connect), Request: durationProto(t.Request), Idle: durationProto(t.Idle)}
	}
	if r := m.Retries; r != nil {
		p.Retries = &meshfedv1.RetryPolicy{
			Attempts: uint32(r.Attempts.ValueInt64()), PerTryTimeout: durationProto(r.PerTryTimeout), RetryOn: stringList(ctx, r.RetryOn, d),
		}
	}
	if c := m.CircuitBreaker; c != nil {
		p.CircuitBreaker = &meshfedv1.CircuitBreaker{
			MaxConnections: uint32(c.MaxConnections.ValueInt64()), MaxPendingRequests: uint32(c.MaxPendingRequests.ValueInt64()),
			MaxRequests: uint32(c.MaxRequests.ValueInt64()), ConsecutiveErrors: uint32(c.ConsecutiveErrors.ValueInt64()),
			BaseEjectionTime: durationProto(c.BaseEjectionTime), MaxEjectionPercent: uint32(c.MaxEjectionPercent.ValueInt64()),
		}
	}
	if r := m.RateLimit; r != nil {
		p.RateLimit = &meshfedv1.RateLimit{RequestsPerSecond: r.RequestsPerSecond.ValueFloat64(), Burst: uint32(r.Burst.ValueInt64())}
	}
	p.LoadBalancer = meshfedv1.LoadBalancer(enumNumber(meshfedv1.LoadBalancer(0).Descriptor(), m.LoadBalancer.ValueString()))
	for _, s := range m.Splits {
		p.Splits = append(p.Splits, &meshfedv1.TrafficSplit{Version: s.Version.ValueString(), Weight: uint32(s.Weight.ValueInt64())})
	}
	p.Failover = stringList(ctx, m.Failover, d)
	if f := m.Fault; f != nil {
		p.Fault = &meshfedv1.FaultInjection{
			Delay: durationProto(f.Delay), DelayPercent: f.DelayPercent.ValueFloat64(),
			AbortStatus: uint32(f.AbortStatus.ValueInt64()), AbortPercent: f.AbortPercent.ValueFloat64(),
		}
	}
}

// fromAPI reads the rules back, keeping the prior spelling of what the API
// cannot tell apart (unset and zero, "60s" and "1m").
func (m *trafficRulesModel) fromAPI(p *meshfedv1.TrafficPolicy, d *diag.Diagnostics) {
	if t := p.GetTimeouts(); t == nil {
		m.Timeouts = nil
	} else {
		prior := m.Timeouts
		if prior == nil {
			prior = &policyTimeoutsModel{types.StringNull(), types.StringNull(), types.StringNull()}
		}
		m.Timeouts = &policyTimeoutsModel{
			Connect: durationValue(prior.Connect, t.GetConnect()),
			Request: durationValue(prior.Request, t.GetRequest()),
			Idle:    durationValue(prior.Idle, t.GetIdle()),
		}
	}
	if r := p.GetRetries(); r == nil {
		m.Retries = nil
	} else {
		prior := m.Retries
		if prior == nil {
			prior = &retriesModel{types.Int64Null(), types.StringNull(), types.ListNull(types.StringType)}
		}
		m.Retries = &retriesModel{
			Attempts:      int64Value(prior.Attempts, int64(r.GetAttempts())),
			PerTryTimeout: durationValue(prior.PerTryTimeout, r.GetPerTryTimeout()),
			RetryOn:       listValue(prior.RetryOn, r.GetRetryOn(), d),
		}
	}
	if c := p.GetCircuitBreaker(); c == nil {
		m.CircuitBreaker = nil
	} else {
		prior := m.CircuitBreaker
		if prior == nil {
			prior = &circuitBreakerModel{types.Int64Null(), types.Int64Null(), types.Int64Null(), types.Int64Null(), types.StringNull(), types.Int64Null()}
		}
		m.CircuitBreaker = &circuitBreakerModel{
			MaxConnections:     int64Value(prior.MaxConnections, int64(c.GetMaxConnections())),
			MaxPendingRequests: int64Value(prior.MaxPendingRequests, int64(c.GetMaxPendingRequests())),
			MaxRequests:        int64Value(prior.MaxRequests, int64(c.GetMaxRequests())),
			ConsecutiveErrors:  int64Value(prior.ConsecutiveErrors, int64(c.GetConsecutiveErrors())),
			BaseEjectionTime:   durationValue(prior.BaseEjectionTime, c.GetBaseEjectionTime()),
			MaxEjectionPercent: int64Value(prior.MaxEjectionPercent, int64(c.GetMaxEjectionPercent())),
		}
	}
	if r := p.GetRateLimit(); r == nil {
		m.RateLimit = nil
	} else {
		prior := m.RateLimit
		if prior == nil {
			prior = &rateLimitModel{types.Float64Null(), types.Int64Null()}
		}
		m.RateLimit = &rateLimitModel{
			RequestsPerSecond: float64Value(prior.RequestsPerSecond, r.GetRequestsPerSecond()),
			Burst:             int64Value(prior.Burst, int64(r.GetBurst())),
		}
	}
	m.LoadBalancer = enumValue(p.GetLoadBalancer())
	if len(p.GetSplits()) == 0 && m.Splits == nil {
		m.Splits = nil
	} else {
		splits := make([]splitModel, len(p.GetSplits()))
		for i, s := range p.GetSplits() {
			splits[i] = splitModel{Version: types.StringValue(s.GetVersion()), Weight: types.Int64Value(int64(s.GetWeight()))}
		}
		m.Splits = splits
	}
	m.Failover = listValue(m.Failover, p.GetFailover(), d)
	if f := p.GetFault(); f == nil {
		m.Fault = nil
	} else {
		prior := m.Fault
		if prior == nil {
			prior = &faultModel{types.StringNull(), types.Float64Null(), types.Int64Null(), types.Float64Null()}
		}
		m.Fault = &faultModel{
			Delay:        durationValue(prior.Delay, f.GetDelay()),
			DelayPercent: float64Value(prior.DelayPercent, f.GetDelayPercent()),
			AbortStatus:  int64Value(prior.AbortStatus, int64(f.GetAbortStatus())),
			AbortPercent: float64Value(prior.AbortPercent, f.GetAbortPercent()),
		}
	}
}
