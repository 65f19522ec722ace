package provider

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-validators/mapvalidator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-framework/types/basetypes"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Validators that catch at plan time what the API would refuse, with the
// same rules as the server (controlplane/validate); the server checks
// again and its errors are mapped onto attributes too (errors.go).

var dnsLabelRE = regexp.MustCompile(`^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)

// dnsLabel: 1-63 of a-z, 0-9 and '-', starting with a letter, not ending
// with '-': the names of services, namespaces, peerings.
func dnsLabel() validator.String {
	return stringvalidator.RegexMatches(dnsLabelRE,
		"must be a DNS label: 1-63 lower case letters, digits and '-', starting with a letter and not ending with '-'")
}

var labelNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

// labelValue: a version label, zone or region.
func labelValue() validator.String {
	return stringvalidator.RegexMatches(labelNameRE,
		"must be 1-63 characters, alphanumeric at both ends, with '-', '_' or '.' inside")
}

var labelKeyRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

// labelsValidators check Kubernetes label syntax.
func labelsValidators() []validator.Map {
	return []validator.Map{
		mapvalidator.SizeAtMost(64),
		mapvalidator.KeysAre(stringvalidator.RegexMatches(labelKeyRE,
			"must be a label key: an optional DNS prefix and '/', then 1-63 characters, alphanumeric at both ends, with '-', '_' or '.' inside")),
		mapvalidator.ValueStringsAre(stringvalidator.Any(
			stringvalidator.LengthAtMost(0),
			stringvalidator.RegexMatches(labelNameRE, "must be empty or 1-63 characters, alphanumeric at both ends, with '-', '_' or '.' inside"),
		)),
	}
}

// stringCheck is a string validator made of a function that returns what
// is wrong with a value, or "".
type stringCheck struct {
	description string
	check       func(string) string
}

func (v stringCheck) Description(context.Context) string         { return v.description }
func (v stringCheck) MarkdownDescription(context.Context) string { return v.description }

func (v stringCheck) ValidateString(_ context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	if problem := v.check(req.ConfigValue.ValueString()); problem != "" {
		resp.Diagnostics.AddAttributeError(req.Path, "Invalid Attribute Value",
			fmt.Sprintf("Attribute %s %s, got: %q", req.Path, problem, req.ConfigValue.ValueString()))
	}
}

// spiffeID accepts a SPIFFE ID (spiffe://trust-domain/path), parsed with
// go-spiffe like the server does.
func spiffeID() validator.String {
	return stringCheck{"must be a SPIFFE ID (spiffe://<trust-domain>/<path>)", func(s string) string {
		if _, err := spiffeid.FromString(s); err != nil {
			return "must be a SPIFFE ID (spiffe://<trust-domain>/<path>): " + err.Error()
		}
		return ""
	}}
}

// principal accepts "*", a SPIFFE ID, or a SPIFFE ID ending in "/*".
func principal() validator.String {
	return stringCheck{`must be "*" or a SPIFFE ID, optionally ending in "/*"`, func(s string) string {
		if s == "*" {
			return ""
		}
		id := strings.TrimSuffix(s, "/*")
		if id == "" || strings.Contains(id, "*") {
			return `must be "*" or a SPIFFE ID, optionally ending in "/*"`
		}
		if _, err := spiffeid.FromString(id); err != nil {
			return `must be "*" or a SPIFFE ID, optionally ending in "/*": ` + err.Error()
		}
		return ""
	}}
}

// durationBetween accepts a Go duration ("30s", "1h30m") within [lo, hi].
func durationBetween(lo, hi time.Duration) validator.String {
	desc := fmt.Sprintf("must be a duration such as \"30s\" or \"1h30m\", between %s and %s", formatDuration(lo), formatDuration(hi))
	return stringCheck{desc, func(s string) string {
		d, err := time.ParseDuration(s)
		switch {
		case err != nil:
			return `must be a duration such as "30s" or "1h30m"`
		case d < 0:
			return "must not be negative"
		case d < lo || d > hi:
			return desc
		}
		return ""
	}}
}

// ipAddress accepts an IPv4 or IPv6 address without zone.
func ipAddress() validator.String {
	return stringCheck{"must be an IPv4 or IPv6 address", func(s string) string {
		if a, err := netip.ParseAddr(s); err != nil || a.Zone() != "" {
			return "must be an IPv4 or IPv6 address"
		}
		return ""
	}}
}

// requestPath accepts an absolute path, '*' only at its end.
func requestPath() validator.String {
	return stringCheck{`must start with "/" and may end in "*" (a prefix)`, func(s string) string {
		switch {
		case !strings.HasPrefix(s, "/"):
			return `must start with "/"`
		case strings.Contains(strings.TrimSuffix(s, "*"), "*"):
			return `may hold "*" only at its end`
		case strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }):
			return "must not contain spaces or control characters"
		}
		return ""
	}}
}

// endpointAddress accepts host:port or an http(s) URL.
func endpointAddress() validator.String {
	return stringCheck{"must be host:port or an http(s) URL", func(s string) string {
		if strings.Contains(s, "://") {
			u, err := url.Parse(s)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return "must be host:port or an http(s) URL"
			}
			return ""
		}
		_, port, err := net.SplitHostPort(s)
		if err != nil {
			return "must be host:port or an http(s) URL"
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return "must have a port between 1 and 65535"
		}
		return ""
	}}
}

// splitWeights checks that the weights of a traffic policy's splits add up
// to 100.
type splitWeights struct{}

func (splitWeights) Description(context.Context) string {
	return "the weights of the splits must add up to 100"
}
func (v splitWeights) MarkdownDescription(ctx context.Context) string { return v.Description(ctx) }

func (splitWeights) ValidateList(ctx context.Context, req validator.ListRequest, resp *validator.ListResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() || len(req.ConfigValue.Elements()) == 0 {
		return
	}
	var total int64
	for _, e := range req.ConfigValue.Elements() {
		o, ok := e.(basetypes.ObjectValue)
		if !ok || o.IsUnknown() {
			return
		}
		w, ok := o.Attributes()["weight"].(types.Int64)
		if !ok || w.IsUnknown() {
			return
		}
		total += w.ValueInt64()
	}
	if total != 100 {
		resp.Diagnostics.AddAttributeError(req.Path, "Invalid Attribute Value",
			fmt.Sprintf("Attribute %s weights add up to %d, not 100", req.Path, total))
	}
}

// dnsNameRE: lower case DNS labels; the first may be "*".
var dnsNameRE = regexp.MustCompile(`^(\*|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
