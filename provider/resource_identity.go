package provider

import (
	"context"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-validators/setvalidator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ resource.Resource                = (*identityResource)(nil)
	_ resource.ResourceWithConfigure   = (*identityResource)(nil)
	_ resource.ResourceWithImportState = (*identityResource)(nil)
)

// maxIdentitySVIDTTL bounds an identity's SVID lifetime override.
const maxIdentitySVIDTTL = 30 * 24 * time.Hour

// NewIdentityResource is the meshfed_identity resource.
func NewIdentityResource() resource.Resource { return &identityResource{} }

type identityResource struct{ resourceBase }

type identityModel struct {
	ID             types.String `tfsdk:"id"`
	Name           types.String `tfsdk:"name"`
	Namespace      types.String `tfsdk:"namespace"`
	SpiffeID       types.String `tfsdk:"spiffe_id"`
	ServiceAccount types.String `tfsdk:"service_account"`
	SVIDTTL        types.String `tfsdk:"svid_ttl"`
	DNSNames       types.Set    `tfsdk:"dns_names"`
	Labels         types.Map    `tfsdk:"labels"`
	Version        types.Int64  `tfsdk:"version"`
	CreateVersion  types.Int64  `tfsdk:"create_version"`
}

var identityFields = fieldMap{root: "identity", sets: map[string]bool{"dns_names": true}}

func (r *identityResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_identity"
}

func (r *identityResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "A workload identity registration: which SPIFFE ID the workloads of a service account " +
			"hold, and how their SVIDs are issued (their lifetime, overriding the CA's `svid_ttl`, and the DNS names " +
			"they may carry besides the SPIFFE ID). Registration is optional: a workload attests with a " +
			"workload-join token (`meshfed_workload_join_token`) either way, and an unregistered identity gets the " +
			"CA's defaults and no DNS names. Each SPIFFE ID can be registered once.",
		Attributes: map[string]schema.Attribute{
			"id":        idAttribute("`namespace/name` of the registration."),
			"name":      nameAttribute("Name of the registration."),
			"namespace": namespaceAttribute(),
			"service_account": schema.StringAttribute{
				MarkdownDescription: "Service account of the workloads (a DNS label). The SPIFFE ID is derived from it " +
					"(or from `name` when unset) unless `spiffe_id` is given.",
				Optional:   true,
				Validators: []validator.String{dnsLabel()},
			},
			"spiffe_id": schema.StringAttribute{
				MarkdownDescription: "SPIFFE ID of the identity, in this cluster's trust domain. Defaults to " +
					"`spiffe://<trust-domain>/ns/<namespace>/sa/<service_account or name>`.",
				Optional:   true,
				Computed:   true,
				Validators: []validator.String{spiffeID()},
				PlanModifiers: []planmodifier.String{useStateUnlessChanged{deps: []path.Path{
					path.Root("service_account"),
				}}},
			},
			"svid_ttl": schema.StringAttribute{
				MarkdownDescription: "Lifetime of the identity's SVIDs, from `10s` to `720h`, overriding the CA's `svid_ttl`.",
				Optional:            true,
				Validators:          []validator.String{durationBetween(minSVIDTTL, maxIdentitySVIDTTL)},
			},
			"dns_names": schema.SetAttribute{
				MarkdownDescription: "DNS names the identity's SVIDs may carry (lower case; the first label may be `*`).",
				ElementType:         types.StringType,
				Optional:            true,
				Validators: []validator.Set{
					setvalidator.SizeAtMost(32),
					setvalidator.ValueStringsAre(stringvalidator.RegexMatches(dnsNameRE, "must be a lower case DNS name")),
				},
			},
			"labels":         labelsAttribute(),
			"version":        versionAttribute(),
			"create_version": createVersionAttribute(),
		},
	}
}

func (m *identityModel) toAPI(ctx context.Context, d *diag.Diagnostics) *meshfedv1.Identity {
	i := &meshfedv1.Identity{
		Meta:           &meshfedv1.Meta{Name: m.Name.ValueString(), Namespace: m.Namespace.ValueString(), Labels: labelsMap(ctx, m.Labels, d)},
		ServiceAccount: m.ServiceAccount.ValueString(),
		SvidTtl:        durationProto(m.SVIDTTL),
		DnsNames:       stringList(ctx, m.DNSNames, d),
	}
	if !m.SpiffeID.IsUnknown() {
		i.SpiffeId = m.SpiffeID.ValueString()
	}
	return i
}

func (m *identityModel) fromAPI(i *meshfedv1.Identity, d *diag.Diagnostics) {
	meta := i.GetMeta()
	m.ID = types.StringValue(namespacedID(meta))
	m.Name = types.StringValue(meta.GetName())
	m.Namespace = types.StringValue(meta.GetNamespace())
	m.SpiffeID = types.StringValue(i.GetSpiffeId())
	m.ServiceAccount = stringValue(m.ServiceAccount, i.GetServiceAccount())
	m.SVIDTTL = durationValue(m.SVIDTTL, i.GetSvidTtl())
	m.DNSNames = setValue(m.DNSNames, i.GetDnsNames(), d)
	m.Labels = labelsValue(m.Labels, meta.GetLabels(), d)
	m.Version = types.Int64Value(int64(meta.GetVersion()))
	m.CreateVersion = types.Int64Value(int64(meta.GetCreateVersion()))
}

func (r *identityResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan identityModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Identity.CreateIdentity(ctx, &meshfedv1.CreateIdentityRequest{Identity: plan.toAPI(ctx, &resp.Diagnostics)})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot create the identity", err, identityFields)
		return
	}
	plan.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *identityResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state identityModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Identity.GetIdentity(ctx, &meshfedv1.GetRequest{Namespace: state.Namespace.ValueString(), Name: state.Name.ValueString()})
	if isNotFound(err) {
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the identity", err, identityFields)
		return
	}
	state.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *identityResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state identityModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Identity.UpdateIdentity(ctx, &meshfedv1.UpdateIdentityRequest{
		Identity: plan.toAPI(ctx, &resp.Diagnostics), ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot update the identity", err, identityFields)
		return
	}
	plan.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *identityResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state identityModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	_, err := r.client.Identity.DeleteIdentity(ctx, &meshfedv1.DeleteRequest{
		Namespace: state.Namespace.ValueString(), Name: state.Name.ValueString(), ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil && !isNotFound(err) {
		addAPIError(&resp.Diagnostics, "Cannot delete the identity", err, identityFields)
	}
}

func (r *identityResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	importNamespaced(ctx, req, resp)
}
