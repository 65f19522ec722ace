package provider

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ resource.Resource                = (*trafficPolicyResource)(nil)
	_ resource.ResourceWithConfigure   = (*trafficPolicyResource)(nil)
	_ resource.ResourceWithImportState = (*trafficPolicyResource)(nil)
)

// NewTrafficPolicyResource is the meshfed_traffic_policy resource.
func NewTrafficPolicyResource() resource.Resource { return &trafficPolicyResource{} }

type trafficPolicyResource struct{ resourceBase }

type trafficPolicyModel struct {
	ID            types.String `tfsdk:"id"`
	Name          types.String `tfsdk:"name"`
	Namespace     types.String `tfsdk:"namespace"`
	Destination   types.String `tfsdk:"destination"`
	Labels        types.Map    `tfsdk:"labels"`
	Version       types.Int64  `tfsdk:"version"`
	CreateVersion types.Int64  `tfsdk:"create_version"`
	trafficRulesModel
}

var trafficPolicyFields = fieldMap{root: "policy"}

func (r *trafficPolicyResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_traffic_policy"
}

func (r *trafficPolicyResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	attrs := trafficRuleAttributes()
	attrs["id"] = idAttribute("`namespace/name` of the policy.")
	attrs["name"] = nameAttribute("Name of the policy.")
	attrs["namespace"] = namespaceAttribute()
	attrs["destination"] = schema.StringAttribute{
		MarkdownDescription: "Name of the destination service in the policy's namespace.",
		Required:            true,
		Validators:          []validator.String{dnsLabel()},
	}
	attrs["labels"] = labelsAttribute()
	attrs["version"] = versionAttribute()
	attrs["create_version"] = createVersionAttribute()
	resp.Schema = schema.Schema{
		MarkdownDescription: "A traffic policy tunes how callers reach a destination service: timeouts, retries, " +
			"circuit breaking and outlier ejection, rate limits, load balancing, weighted splits by version, " +
			"cross-cluster failover and fault injection. The mesh settings' `default_traffic_policy` applies to " +
			"destinations without one.",
		Attributes: attrs,
	}
}

func (m *trafficPolicyModel) toAPI(ctx context.Context, d *diag.Diagnostics) *meshfedv1.TrafficPolicy {
	p := &meshfedv1.TrafficPolicy{
		Meta:        &meshfedv1.Meta{Name: m.Name.ValueString(), Namespace: m.Namespace.ValueString(), Labels: labelsMap(ctx, m.Labels, d)},
		Destination: m.Destination.ValueString(),
	}
	m.trafficRulesModel.toAPI(ctx, p, d)
	return p
}

func (m *trafficPolicyModel) fromAPI(p *meshfedv1.TrafficPolicy, d *diag.Diagnostics) {
	meta := p.GetMeta()
	m.ID = types.StringValue(namespacedID(meta))
	m.Name = types.StringValue(meta.GetName())
	m.Namespace = types.StringValue(meta.GetNamespace())
	m.Destination = types.StringValue(p.GetDestination())
	m.Labels = labelsValue(m.Labels, meta.GetLabels(), d)
	m.Version = types.Int64Value(int64(meta.GetVersion()))
	m.CreateVersion = types.Int64Value(int64(meta.GetCreateVersion()))
	m.trafficRulesModel.fromAPI(p, d)
}

func (r *trafficPolicyResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan trafficPolicyModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Policy.CreateTrafficPolicy(ctx, &meshfedv1.CreateTrafficPolicyRequest{Policy: plan.toAPI(ctx, &resp.Diagnostics)})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot create the traffic policy", err, trafficPolicyFields)
		return
	}
	plan.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *trafficPolicyResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state trafficPolicyModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Policy.GetTrafficPolicy(ctx, &meshfedv1.GetRequest{Namespace: state.Namespace.ValueString(), Name: state.Name.ValueString()})
	if isNotFound(err) {
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the traffic policy", err, trafficPolicyFields)
		return
	}
	state.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *trafficPolicyResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state trafficPolicyModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Policy.UpdateTrafficPolicy(ctx, &meshfedv1.UpdateTrafficPolicyRequest{
		Policy: plan.toAPI(ctx, &resp.Diagnostics), ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot update the traffic policy", err, trafficPolicyFields)
		return
	}
	plan.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *trafficPolicyResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state trafficPolicyModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	_, err := r.client.Policy.DeleteTrafficPolicy(ctx, &meshfedv1.DeleteRequest{
		Namespace: state.Namespace.ValueString(), Name: state.Name.ValueString(), ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil && !isNotFound(err) {
		addAPIError(&resp.Diagnostics, "Cannot delete the traffic policy", err, trafficPolicyFields)
	}
}

func (r *trafficPolicyResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	importNamespaced(ctx, req, resp)
}
