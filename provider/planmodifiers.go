package provider

import (
	"context"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

// defaultFromAttribute plans an unset optional+computed string as the value
// of another attribute (a service's service account defaults to its name),
// so that the plan says what the server will store.
type defaultFromAttribute struct{ from path.Path }

func (m defaultFromAttribute) Description(context.Context) string {
	return "defaults to the value of " + m.from.String()
}
func (m defaultFromAttribute) MarkdownDescription(ctx context.Context) string {
	return m.Description(ctx)
}

func (m defaultFromAttribute) PlanModifyString(ctx context.Context, req planmodifier.StringRequest, resp *planmodifier.StringResponse) {
	if !req.ConfigValue.IsNull() {
		return
	}
	var from types.String
	resp.Diagnostics.Append(req.Plan.GetAttribute(ctx, m.from, &from)...)
	if !from.IsUnknown() && !from.IsNull() {
		resp.PlanValue = from
	}
}

// useStateUnlessChanged is UseStateForUnknown for a value the server
// derives from other attributes: the prior value is kept unless one of
// those changes (a workload's SPIFFE ID follows its service).
type useStateUnlessChanged struct{ deps []path.Path }

func (m useStateUnlessChanged) Description(context.Context) string {
	return "keeps the prior value unless an attribute it is derived from changes"
}
func (m useStateUnlessChanged) MarkdownDescription(ctx context.Context) string {
	return m.Description(ctx)
}

func (m useStateUnlessChanged) PlanModifyString(ctx context.Context, req planmodifier.StringRequest, resp *planmodifier.StringResponse) {
	if req.StateValue.IsNull() || !req.PlanValue.IsUnknown() || req.ConfigValue.IsUnknown() {
		return
	}
	for _, p := range m.deps {
		var planned, prior types.String
		resp.Diagnostics.Append(req.Plan.GetAttribute(ctx, p, &planned)...)
		resp.Diagnostics.Append(req.State.GetAttribute(ctx, p, &prior)...)
		if !planned.Equal(prior) {
			return
		}
	}
	resp.PlanValue = req.StateValue
}

// staticEndpoint plans a workload's proxy attribute. The provider writes
// static endpoints only (the server refuses proxy = true from anyone but a
// proxy), so a created or updated workload reads back false. An endpoint a
// meshfed-proxy registered, imported into Terraform, is refused instead:
// the update would make it static, the proxy's heartbeats would stop
// counting, and the proxy could not register it again under that name.
type staticEndpoint struct{}

func (staticEndpoint) Description(context.Context) string {
	return "false for endpoints this provider writes; refuses to update an endpoint a proxy registered"
}
func (m staticEndpoint) MarkdownDescription(ctx context.Context) string {
	return m.Description(ctx)
}

func (staticEndpoint) PlanModifyBool(ctx context.Context, req planmodifier.BoolRequest, resp *planmodifier.BoolResponse) {
	// Known: no change to the workload is planned.
	if !req.PlanValue.IsUnknown() {
		return
	}
	if req.StateValue.ValueBool() {
		var ns, name types.String
		resp.Diagnostics.Append(req.State.GetAttribute(ctx, path.Root("namespace"), &ns)...)
		resp.Diagnostics.Append(req.State.GetAttribute(ctx, path.Root("name"), &name)...)
		resp.Diagnostics.AddAttributeError(req.Path, "Workload registered by meshfed-proxy",
			fmt.Sprintf("Workload %s/%s was registered by meshfed-proxy, which keeps it current. meshfed_workload "+
				"manages static endpoints only: an update would turn this one into a static endpoint that its proxy "+
				"can no longer register. Stop managing it with Terraform (a removed block, or terraform state rm).", ns.ValueString(), name.ValueString()))
		return
	}
	resp.PlanValue = types.BoolValue(false)
}
