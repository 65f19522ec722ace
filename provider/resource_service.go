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
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ resource.Resource                = (*serviceResource)(nil)
	_ resource.ResourceWithConfigure   = (*serviceResource)(nil)
	_ resource.ResourceWithImportState = (*serviceResource)(nil)
)

// NewServiceResource is the meshfed_service resource.
func NewServiceResource() resource.Resource { return &serviceResource{} }

type serviceResource struct{ resourceBase }

type serviceModel struct {
	ID             types.String `tfsdk:"id"`
	Name           types.String `tfsdk:"name"`
	Namespace      types.String `tfsdk:"namespace"`
	Port           types.Int64  `tfsdk:"port"`
	Protocol       types.String `tfsdk:"protocol"`
	ServiceAccount types.String `tfsdk:"service_account"`
	Labels         types.Map    `tfsdk:"labels"`
	Version        types.Int64  `tfsdk:"version"`
	CreateVersion  types.Int64  `tfsdk:"create_version"`
}

var serviceFields = fieldMap{root: "service"}

func (r *serviceResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_service"
}

func (r *serviceResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "A service: a named, namespaced destination in the mesh. Its workloads (endpoints) are " +
			"registered by their proxies, or as `meshfed_workload` for static endpoints such as VMs. Workloads of the " +
			"service run as its service account, so their SPIFFE ID is " +
			"`spiffe://<trust-domain>/ns/<namespace>/sa/<service_account>`.",
		Attributes: map[string]schema.Attribute{
			"id":        idAttribute("`namespace/name` of the service."),
			"name":      nameAttribute("Name of the service."),
			"namespace": namespaceAttribute(),
			"port": schema.Int64Attribute{
				MarkdownDescription: "Port the service's workloads listen on (1-65535).",
				Required:            true,
				Validators:          []validator.Int64{int64validator.Between(1, 65535)},
			},
			"protocol": schema.StringAttribute{
				MarkdownDescription: "Application protocol: " + quotedList(enumChoices(meshfedv1.Protocol(0).Descriptor())) + ".",
				Required:            true,
				Validators:          []validator.String{stringvalidator.OneOf(enumChoices(meshfedv1.Protocol(0).Descriptor())...)},
			},
			"service_account": schema.StringAttribute{
				MarkdownDescription: "Service account the service's workloads run as (a DNS label). Defaults to the service's name.",
				Optional:            true,
				Computed:            true,
				Validators:          []validator.String{dnsLabel()},
				PlanModifiers:       []planmodifier.String{defaultFromAttribute{from: path.Root("name")}},
			},
			"labels":         labelsAttribute(),
			"version":        versionAttribute(),
			"create_version": createVersionAttribute(),
		},
	}
}

func (m *serviceModel) toAPI(ctx context.Context, d *diag.Diagnostics) *meshfedv1.Service {
	return &meshfedv1.Service{
		Meta: &meshfedv1.Meta{
			Name: m.Name.ValueString(), Namespace: m.Namespace.ValueString(), Labels: labelsMap(ctx, m.Labels, d),
		},
		Port:           uint32(m.Port.ValueInt64()),
		Protocol:       meshfedv1.Protocol(enumNumber(meshfedv1.Protocol(0).Descriptor(), m.Protocol.ValueString())),
		ServiceAccount: m.ServiceAccount.ValueString(),
	}
}

func (m *serviceModel) fromAPI(s *meshfedv1.Service, d *diag.Diagnostics) {
	meta := s.GetMeta()
	m.ID = types.StringValue(namespacedID(meta))
	m.Name = types.StringValue(meta.GetName())
	m.Namespace = types.StringValue(meta.GetNamespace())
	m.Port = types.Int64Value(int64(s.GetPort()))
	m.Protocol = enumValue(s.GetProtocol())
	m.ServiceAccount = types.StringValue(s.GetServiceAccount())
	m.Labels = labelsValue(m.Labels, meta.GetLabels(), d)
	m.Version = types.Int64Value(int64(meta.GetVersion()))
	m.CreateVersion = types.Int64Value(int64(meta.GetCreateVersion()))
}

func (r *serviceResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan serviceModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	d := &resp.Diagnostics
	out, err := r.client.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: plan.toAPI(ctx, d)})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot create the service", err, serviceFields)
		return
	}
	plan.fromAPI(out, d)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *serviceResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state serviceModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Catalog.GetService(ctx, &meshfedv1.GetRequest{Namespace: state.Namespace.ValueString(), Name: state.Name.ValueString()})
	if isNotFound(err) {
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the service", err, serviceFields)
		return
	}
	state.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *serviceResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state serviceModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	d := &resp.Diagnostics
	out, err := r.client.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{
		Service: plan.toAPI(ctx, d), ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot update the service", err, serviceFields)
		return
	}
	plan.fromAPI(out, d)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *serviceResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state serviceModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	_, err := r.client.Catalog.DeleteService(ctx, &meshfedv1.DeleteRequest{
		Namespace: state.Namespace.ValueString(), Name: state.Name.ValueString(), ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil && !isNotFound(err) {
		addAPIError(&resp.Diagnostics, "Cannot delete the service", err, serviceFields)
	}
}

func (r *serviceResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	importNamespaced(ctx, req, resp)
}
