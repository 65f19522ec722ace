package provider

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ resource.Resource                = (*workloadResource)(nil)
	_ resource.ResourceWithConfigure   = (*workloadResource)(nil)
	_ resource.ResourceWithImportState = (*workloadResource)(nil)
)

// NewWorkloadResource is the meshfed_workload resource.
func NewWorkloadResource() resource.Resource { return &workloadResource{} }

type workloadResource struct{ resourceBase }

type workloadModel struct {
	ID            types.String   `tfsdk:"id"`
	Name          types.String   `tfsdk:"name"`
	Namespace     types.String   `tfsdk:"namespace"`
	Service       types.String   `tfsdk:"service"`
	Address       types.String   `tfsdk:"address"`
	Port          types.Int64    `tfsdk:"port"`
	Locality      *localityModel `tfsdk:"locality"`
	Health        types.String   `tfsdk:"health"`
	SpiffeID      types.String   `tfsdk:"spiffe_id"`
	VersionLabel  types.String   `tfsdk:"version_label"`
	Labels        types.Map      `tfsdk:"labels"`
	Proxy         types.Bool     `tfsdk:"proxy"`
	Version       types.Int64    `tfsdk:"version"`
	CreateVersion types.Int64    `tfsdk:"create_version"`
}

// localityModel is a Locality: where an endpoint or cluster runs.
type localityModel struct {
	Region types.String `tfsdk:"region"`
	Zone   types.String `tfsdk:"zone"`
}

func localitySchema(desc string) schema.SingleNestedAttribute {
	return schema.SingleNestedAttribute{
		MarkdownDescription: desc,
		Optional:            true,
		Attributes: map[string]schema.Attribute{
			"region": schema.StringAttribute{
				MarkdownDescription: "Region, for example `eu-west`.",
				Optional:            true,
				Validators:          []validator.String{labelValue()},
			},
			"zone": schema.StringAttribute{
				MarkdownDescription: "Zone within the region, for example `eu-west-1a`.",
				Optional:            true,
				Validators:          []validator.String{labelValue()},
			},
		},
	}
}

func (l *localityModel) toAPI() *meshfedv1.Locality {
	if l == nil {
		return nil
	}
	return &meshfedv1.Locality{Region: l.Region.ValueString(), Zone: l.Zone.ValueString()}
}

// localityValue reads a locality back; an unset or empty one stays as prior.
func localityValue(prior *localityModel, l *meshfedv1.Locality) *localityModel {
	if l.GetRegion() == "" && l.GetZone() == "" && prior == nil {
		return nil
	}
	if prior == nil {
		prior = &localityModel{Region: types.StringNull(), Zone: types.StringNull()}
	}
	return &localityModel{Region: stringValue(prior.Region, l.GetRegion()), Zone: stringValue(prior.Zone, l.GetZone())}
}

var workloadFields = fieldMap{root: "workload", renames: map[string]string{"version": "version_label"}}

var healthChoices = enumChoices(meshfedv1.HealthStatus(0).Descriptor())

func (r *workloadResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_workload"
}

func (r *workloadResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "A workload: one endpoint of a service. Proxies register the endpoints of pods themselves; " +
			"this resource registers static endpoints, such as a VM, that have no proxy registering them.",
		Attributes: map[string]schema.Attribute{
			"id":        idAttribute("`namespace/name` of the workload."),
			"name":      nameAttribute("ID of the workload, unique in its namespace."),
			"namespace": namespaceAttribute(),
			"service": schema.StringAttribute{
				MarkdownDescription: "Name of the service (in the same namespace) the workload belongs to. It need not " +
					"be registered yet. Changing it replaces the workload.",
				Required:      true,
				Validators:    []validator.String{dnsLabel()},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"address": schema.StringAttribute{
				MarkdownDescription: "IPv4 or IPv6 address the endpoint is reachable on.",
				Required:            true,
				Validators:          []validator.String{ipAddress()},
			},
			"port": schema.Int64Attribute{
				MarkdownDescription: "Port of the endpoint (its proxy's inbound listener), 1-65535.",
				Required:            true,
				Validators:          []validator.Int64{int64validator.Between(1, 65535)},
			},
			"locality": localitySchema("Where the endpoint runs, for locality-aware routing and cross-cluster failover."),
			"health": schema.StringAttribute{
				MarkdownDescription: "Health of the endpoint: " + quotedList(healthChoices) + ". Unset counts as healthy; " +
					"only endpoints that are not `unhealthy` or `unknown` are exported to peers.",
				Optional:   true,
				Validators: []validator.String{stringvalidator.OneOf(healthChoices...)},
			},
			"spiffe_id": schema.StringAttribute{
				MarkdownDescription: "SPIFFE ID the endpoint presents. Defaults to the identity of its service, " +
					"`spiffe://<trust-domain>/ns/<namespace>/sa/<service account>`.",
				Optional:   true,
				Computed:   true,
				Validators: []validator.String{spiffeID()},
				PlanModifiers: []planmodifier.String{
					useStateUnlessChanged{deps: []path.Path{path.Root("service")}},
				},
			},
			"version_label": schema.StringAttribute{
				MarkdownDescription: "Version label of the endpoint, which the weighted `splits` of a " +
					"`meshfed_traffic_policy` select (for example `v2`).",
				Optional:   true,
				Validators: []validator.String{labelValue()},
			},
			"labels": labelsAttribute(),
			"proxy": schema.BoolAttribute{
				MarkdownDescription: "Whether a meshfed-proxy registered the endpoint and reports its health with " +
					"heartbeats. Always `false` for the static endpoints this resource creates; `true` only for an " +
					"imported endpoint of a proxy, which this resource refuses to update (an update would turn it " +
					"into a static endpoint that its proxy can no longer register).",
				Computed:      true,
				PlanModifiers: []planmodifier.Bool{staticEndpoint{}},
			},
			"version":        versionAttribute(),
			"create_version": createVersionAttribute(),
		},
	}
}

func (m *workloadModel) toAPI(ctx context.Context, d *diag.Diagnostics) *meshfedv1.Workload {
	w := &meshfedv1.Workload{
		Meta:     &meshfedv1.Meta{Name: m.Name.ValueString(), Namespace: m.Namespace.ValueString(), Labels: labelsMap(ctx, m.Labels, d)},
		Service:  m.Service.ValueString(),
		Address:  m.Address.ValueString(),
		Port:     uint32(m.Port.ValueInt64()),
		Locality: m.Locality.toAPI(),
		Health:   meshfedv1.HealthStatus(enumNumber(meshfedv1.HealthStatus(0).Descriptor(), m.Health.ValueString())),
		Version:  m.VersionLabel.ValueString(),
	}
	if !m.SpiffeID.IsUnknown() {
		w.SpiffeId = m.SpiffeID.ValueString()
	}
	return w
}

func (m *workloadModel) fromAPI(w *meshfedv1.Workload, d *diag.Diagnostics) {
	meta := w.GetMeta()
	m.ID = types.StringValue(namespacedID(meta))
	m.Name = types.StringValue(meta.GetName())
	m.Namespace = types.StringValue(meta.GetNamespace())
	m.Service = types.StringValue(w.GetService())
	m.Address = types.StringValue(w.GetAddress())
	m.Port = types.Int64Value(int64(w.GetPort()))
	m.Locality = localityValue(m.Locality, w.GetLocality())
	m.Health = enumValue(w.GetHealth())
	m.SpiffeID = types.StringValue(w.GetSpiffeId())
	m.VersionLabel = stringValue(m.VersionLabel, w.GetVersion())
	m.Labels = labelsValue(m.Labels, meta.GetLabels(), d)
	m.Proxy = types.BoolValue(w.GetProxy())
	m.Version = types.Int64Value(int64(meta.GetVersion()))
	m.CreateVersion = types.Int64Value(int64(meta.GetCreateVersion()))
}

func (r *workloadResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan workloadModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Catalog.CreateWorkload(ctx, &meshfedv1.CreateWorkloadRequest{Workload: plan.toAPI(ctx, &resp.Diagnostics)})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot create the workload", err, workloadFields)
		return
	}
	plan.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *workloadResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state workloadModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Catalog.GetWorkload(ctx, &meshfedv1.GetRequest{Namespace: state.Namespace.ValueString(), Name: state.Name.ValueString()})
	if isNotFound(err) {
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the workload", err, workloadFields)
		return
	}
	state.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *workloadResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state workloadModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Catalog.UpdateWorkload(ctx, &meshfedv1.UpdateWorkloadRequest{
		Workload: plan.toAPI(ctx, &resp.Diagnostics), ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot update the workload", err, workloadFields)
		return
	}
	plan.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *workloadResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state workloadModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	_, err := r.client.Catalog.DeleteWorkload(ctx, &meshfedv1.DeleteRequest{
		Namespace: state.Namespace.ValueString(), Name: state.Name.ValueString(), ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil && !isNotFound(err) {
		addAPIError(&resp.Diagnostics, "Cannot delete the workload", err, workloadFields)
	}
}

func (r *workloadResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	importNamespaced(ctx, req, resp)
}
