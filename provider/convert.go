package provider

import (
	"context"
	"strings"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Conversions between API messages and Terraform values. The API does not
// tell an unset field from its zero value, so a zero read back keeps
// whatever the prior state (or plan) said: null stays null and an explicit
// zero stays an explicit zero. That is what keeps a plan empty after apply.

// enumPrefix is what every value name of d starts with ("PROTOCOL_").
func enumPrefix(d protoreflect.EnumDescriptor) string {
	zero := d.Values().ByNumber(0)
	if zero == nil {
		return ""
	}
	return strings.TrimSuffix(string(zero.Name()), "UNSPECIFIED")
}

// enumChoices lists the spellings of every non-zero value of d, the same
// as the CLI's flags ("round-robin", "workload-join").
func enumChoices(d protoreflect.EnumDescriptor) []string {
	var out []string
	vals := d.Values()
	for i := 0; i < vals.Len(); i++ {
		if v := vals.Get(i); v.Number() != 0 {
			out = append(out, enumSpelling(d, v))
		}
	}
	return out
}

func enumSpelling(d protoreflect.EnumDescriptor, v protoreflect.EnumValueDescriptor) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(string(v.Name()), enumPrefix(d))), "_", "-")
}

// enumNumber reads a spelling of enumChoices; "" and unknown spellings
// (refused by the schema's validators) are 0.
func enumNumber(d protoreflect.EnumDescriptor, s string) protoreflect.EnumNumber {
	if s == "" {
		return 0
	}
	name := enumPrefix(d) + strings.ToUpper(strings.ReplaceAll(s, "-", "_"))
	if v := d.Values().ByName(protoreflect.Name(name)); v != nil {
		return v.Number()
	}
	return 0
}

// enumValue is the spelling of e, null for the zero value.
func enumValue(e protoreflect.Enum) types.String {
	if e.Number() == 0 {
		return types.StringNull()
	}
	d := e.Descriptor()
	v := d.Values().ByNumber(e.Number())
	if v == nil {
		return types.StringNull()
	}
	return types.StringValue(enumSpelling(d, v))
}

// formatDuration renders a duration without trailing zero units ("720h",
// "1h30m", "45s").
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// durationProto converts a duration attribute (validated at plan time);
// null and empty are unset.
func durationProto(v types.String) *durationpb.Duration {
	if v.IsNull() || v.IsUnknown() || v.ValueString() == "" {
		return nil
	}
	d, err := time.ParseDuration(v.ValueString())
	if err != nil {
		return nil
	}
	return durationpb.New(d)
}

// durationValue converts an API duration back. When prior spells the same
// duration ("60s" for 1m) it is kept, so the configuration's spelling
// never shows as a change.
func durationValue(prior types.String, d *durationpb.Duration) types.String {
	if d == nil {
		if !prior.IsNull() && !prior.IsUnknown() && prior.ValueString() == "" {
			return prior
		}
		return types.StringNull()
	}
	if !prior.IsNull() && !prior.IsUnknown() {
		if p, err := time.ParseDuration(prior.ValueString()); err == nil && p == d.AsDuration() {
			return prior
		}
	}
	return types.StringValue(formatDuration(d.AsDuration()))
}

// stringValue: "" reads back as prior when prior is "" or null.
func stringValue(prior types.String, s string) types.String {
	if s == "" && (prior.IsNull() || prior.IsUnknown()) {
		return types.StringNull()
	}
	return types.StringValue(s)
}

func int64Value(prior types.Int64, v int64) types.Int64 {
	if v == 0 && (prior.IsNull() || prior.IsUnknown()) {
		return types.Int64Null()
	}
	return types.Int64Value(v)
}

func float64Value(prior types.Float64, v float64) types.Float64 {
	if v == 0 && (prior.IsNull() || prior.IsUnknown()) {
		return types.Float64Null()
	}
	return types.Float64Value(v)
}

func boolValue(prior types.Bool, v bool) types.Bool {
	if !v && (prior.IsNull() || prior.IsUnknown()) {
		return types.BoolNull()
	}
	return types.BoolValue(v)
}

// timeValue renders a timestamp in RFC 3339 (UTC), null when unset.
func timeValue(ts *timestamppb.Timestamp) types.String {
	if ts == nil {
		return types.StringNull()
	}
	return types.StringValue(ts.AsTime().UTC().Format(time.RFC3339))
}

// stringList reads a list or set of strings; null and unknown are empty.
func stringList(ctx context.Context, v interface {
	IsNull() bool
	IsUnknown() bool
	ElementsAs(context.Context, any, bool) diag.Diagnostics
}, diags *diag.Diagnostics) []string {
	if v.IsNull() || v.IsUnknown() {
		return nil
	}
	var out []string
	diags.Append(v.ElementsAs(ctx, &out, false)...)
	return out
}

// listValue builds a list of strings; an empty one reads back as prior
// when prior is null or empty.
func listValue(prior types.List, items []string, diags *diag.Diagnostics) types.List {
	if len(items) == 0 && (prior.IsNull() || prior.IsUnknown()) {
		return types.ListNull(types.StringType)
	}
	v, d := types.ListValueFrom(context.Background(), types.StringType, nonNil(items))
	diags.Append(d...)
	return v
}

func setValue(prior types.Set, items []string, diags *diag.Diagnostics) types.Set {
	if len(items) == 0 && (prior.IsNull() || prior.IsUnknown()) {
		return types.SetNull(types.StringType)
	}
	v, d := types.SetValueFrom(context.Background(), types.StringType, nonNil(items))
	diags.Append(d...)
	return v
}

// labelsMap reads the labels attribute.
func labelsMap(ctx context.Context, v types.Map, diags *diag.Diagnostics) map[string]string {
	if v.IsNull() || v.IsUnknown() {
		return nil
	}
	out := map[string]string{}
	diags.Append(v.ElementsAs(ctx, &out, false)...)
	return out
}

// labelsValue builds the labels attribute; no labels read back as prior
// when prior is null or empty.
func labelsValue(prior types.Map, labels map[string]string, diags *diag.Diagnostics) types.Map {
	if len(labels) == 0 && (prior.IsNull() || prior.IsUnknown()) {
		return types.MapNull(types.StringType)
	}
	if labels == nil {
		labels = map[string]string{}
	}
	v, d := types.MapValueFrom(context.Background(), types.StringType, labels)
	diags.Append(d...)
	return v
}

func nonNil(items []string) []string {
	if items == nil {
		return []string{}
	}
	return items
}

// objectAttrs returns the attributes of an object value, nil for null or
// unknown.
func objectAttrs(o types.Object) map[string]attr.Value {
	if o.IsNull() || o.IsUnknown() {
		return nil
	}
	return o.Attributes()
}

// quotedList renders choices for a description: "`a`, `b` or `c`".
func quotedList(choices []string) string {
	q := make([]string, len(choices))
	for i, c := range choices {
		q[i] = "`" + c + "`"
	}
	if len(q) < 2 {
		return strings.Join(q, "")
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}
