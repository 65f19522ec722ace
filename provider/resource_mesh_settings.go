package provider

import (
	"context"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework-validators/float64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/float64default"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ resource.Resource                = (*meshSettingsResource)(nil)
	_ resource.ResourceWithConfigure   = (*meshSettingsResource)(nil)
	_ resource.ResourceWithImportState = (*meshSettingsResource)(nil)
)

// singletonName is the name of the one mesh settings and CA settings object.
const singletonName = "global"

// NewMeshSettingsResource is the meshfed_mesh_settings resource.
func NewMeshSettingsResource() resource.Resource { return &meshSettingsResource{} }

type meshSettingsResource struct{ resourceBase }

type meshSettingsModel struct {
	ID                         types.String       `tfsdk:"id"`
	DefaultAuthorizationAction types.String       `tfsdk:"default_authorization_action"`
	MTLSMode                   types.String       `tfsdk:"mtls_mode"`
	AccessLogs                 types.Bool         `tfsdk:"access_logs"`
	TraceSampling              types.Float64      `tfsdk:"trace_sampling"`
	OTLPEndpoint               types.String       `tfsdk:"otlp_endpoint"`
	DefaultTrafficPolicy       *trafficRulesModel `tfsdk:"default_traffic_policy"`
	Locality                   *localityModel     `tfsdk:"locality"`
	Version                    types.Int64        `tfsdk:"version"`
}

var meshSettingsFields = fieldMap{root: "settings"}

var mtlsModeChoices = enumChoices(meshfedv1.MTLSMode(0).Descriptor())

func (r *meshSettingsResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_mesh_settings"
}

func (r *meshSettingsResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "The cluster-wide mesh settings. A cluster has exactly one: creating this resource takes " +
			"over the current settings, and destroying it restores the defaults (deny what no policy allows, " +
			"mutual TLS only, no access logs, no tracing). Declare it at most once per cluster.",
		Attributes: map[string]schema.Attribute{
			"id": idAttribute("Always `global`."),
			"default_authorization_action": schema.StringAttribute{
				MarkdownDescription: "Action when no authorization policy allows a call: " + quotedList(actionChoices) +
					". Defaults to `deny` (zero trust).",
				Optional:   true,
				Computed:   true,
				Default:    stringdefault.StaticString("deny"),
				Validators: []validator.String{stringvalidator.OneOf(actionChoices...)},
			},
			"mtls_mode": schema.StringAttribute{
				MarkdownDescription: "What proxies' inbound listeners accept: " + quotedList(mtlsModeChoices) +
					". `strict` accepts mutual TLS only; `permissive` also accepts plain text from callers outside the " +
					"mesh (during a migration), which have no identity and so pass only where the default action is " +
					"`allow` and no DENY rule with the principal `\"*\"` matches. Defaults to `strict`.",
				Optional:   true,
				Computed:   true,
				Default:    stringdefault.StaticString("strict"),
				Validators: []validator.String{stringvalidator.OneOf(mtlsModeChoices...)},
			},
			"access_logs": schema.BoolAttribute{
				MarkdownDescription: "Proxies write JSON access logs. Defaults to `false`.",
				Optional:            true,
				Computed:            true,
				Default:             booldefault.StaticBool(false),
			},
			"trace_sampling": schema.Float64Attribute{
				MarkdownDescription: "Share of requests traced, 0-1. Defaults to `0`.",
				Optional:            true,
				Computed:            true,
				Default:             float64default.StaticFloat64(0),
				Validators:          []validator.Float64{float64validator.Between(0, 1)},
			},
			"otlp_endpoint": schema.StringAttribute{
				MarkdownDescription: "OTLP/gRPC endpoint proxies export traces to: `host:port` or an http(s) URL.",
				Optional:            true,
				Validators:          []validator.String{endpointAddress(), stringvalidator.LengthAtMost(256)},
			},
			"default_traffic_policy": schema.SingleNestedAttribute{
				MarkdownDescription: "Traffic policy applied to destinations that have no `meshfed_traffic_policy`.",
				Optional:            true,
				Attributes:          trafficRuleAttributes(),
			},
			"locality": localitySchema("Locality of this cluster, used by cross-cluster failover."),
			"version":  versionAttribute(),
		},
	}
}

func (m *meshSettingsModel) toAPI(ctx context.Context, d *diag.Diagnostics) *meshfedv1.MeshSettings {
	s := &meshfedv1.MeshSettings{
		Meta: &meshfedv1.Meta{Name: singletonName},
		DefaultAuthorizationAction: meshfedv1.AuthorizationAction(enumNumber(meshfedv1.AuthorizationAction(0).Descriptor(),
			m.DefaultAuthorizationAction.ValueString())),
		MtlsMode:      meshfedv1.MTLSMode(enumNumber(meshfedv1.MTLSMode(0).Descriptor(), m.MTLSMode.ValueString())),
		AccessLogs:    m.AccessLogs.ValueBool(),
		TraceSampling: m.TraceSampling.ValueFloat64(),
		OtlpEndpoint:  m.OTLPEndpoint.ValueString(),
		Locality:      m.Locality.toAPI(),
	}
	if m.DefaultTrafficPolicy != nil {
		s.DefaultTrafficPolicy = &meshfedv1.TrafficPolicy{}
		m.DefaultTrafficPolicy.toAPI(ctx, s.DefaultTrafficPolicy, d)
	}
	return s
}

func (m *meshSettingsModel) fromAPI(s *meshfedv1.MeshSettings, d *diag.Diagnostics) {
	m.ID = types.StringValue(singletonName)
	m.DefaultAuthorizationAction = enumValue(s.GetDefaultAuthorizationAction())
	if m.DefaultAuthorizationAction.IsNull() {
		m.DefaultAuthorizationAction = types.StringValue("deny")
	}
	// Unset means strict: the server's default reads back as the schema's.
	m.MTLSMode = enumValue(s.GetMtlsMode())
	if m.MTLSMode.IsNull() {
		m.MTLSMode = types.StringValue("strict")
	}
	m.AccessLogs = types.BoolValue(s.GetAccessLogs())
	m.TraceSampling = types.Float64Value(s.GetTraceSampling())
	m.OTLPEndpoint = stringValue(m.OTLPEndpoint, s.GetOtlpEndpoint())
	if p := s.GetDefaultTrafficPolicy(); p == nil {
		m.DefaultTrafficPolicy = nil
	} else {
		if m.DefaultTrafficPolicy == nil {
			m.DefaultTrafficPolicy = &trafficRulesModel{LoadBalancer: types.StringNull(), Failover: types.ListNull(types.StringType)}
		}
		m.DefaultTrafficPolicy.fromAPI(p, d)
	}
	m.Locality = localityValue(m.Locality, s.GetLocality())
	m.Version = types.Int64Value(int64(s.GetMeta().GetVersion()))
}

// write replaces the settings, guarded by expected.
func (r *meshSettingsResource) write(ctx context.Context, m *meshSettingsModel, expected uint64, diags *diag.Diagnostics) {
	out, err := r.client.Mesh.UpdateMeshSettings(ctx, &meshfedv1.UpdateMeshSettingsRequest{Settings: m.toAPI(ctx, diags), ExpectedVersion: expected})
	if err != nil {
		addAPIError(diags, "Cannot update the mesh settings", err, meshSettingsFields)
		return
	}
	m.fromAPI(out, diags)
}

func (r *meshSettingsResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan meshSettingsModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	// The settings always exist (as defaults until changed): take them over
	// at the version they are at now.
	cur, err := r.client.Mesh.GetMeshSettings(ctx, &meshfedv1.GetMeshSettingsRequest{Read: &meshfedv1.ReadOptions{Consistent: true}})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the mesh settings", err, meshSettingsFields)
		return
	}
	r.write(ctx, &plan, cur.GetMeta().GetVersion(), &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *meshSettingsResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state meshSettingsModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Mesh.GetMeshSettings(ctx, &meshfedv1.GetMeshSettingsRequest{})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the mesh settings", err, meshSettingsFields)
		return
	}
	state.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *meshSettingsResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state meshSettingsModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	r.write(ctx, &plan, uint64(state.Version.ValueInt64()), &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *meshSettingsResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state meshSettingsModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	if _, err := r.client.Mesh.ResetMeshSettings(ctx, &meshfedv1.ResetMeshSettingsRequest{ExpectedVersion: uint64(state.Version.ValueInt64())}); err != nil {
		addAPIError(&resp.Diagnostics, "Cannot reset the mesh settings", err, meshSettingsFields)
	}
}

func (r *meshSettingsResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if req.ID != singletonName {
		resp.Diagnostics.AddError("Invalid import ID", fmt.Sprintf("The mesh settings are imported with the ID %q, not %q.", singletonName, req.ID))
		return
	}
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), singletonName)...)
}
