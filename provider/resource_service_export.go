package provider

import (
	"context"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework-validators/setvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ resource.Resource                = (*serviceExportResource)(nil)
	_ resource.ResourceWithConfigure   = (*serviceExportResource)(nil)
	_ resource.ResourceWithImportState = (*serviceExportResource)(nil)
)

// NewServiceExportResource is the meshfed_service_export resource.
func NewServiceExportResource() resource.Resource { return &serviceExportResource{} }

type serviceExportResource struct{ resourceBase }

type serviceExportModel struct {
	ID            types.String `tfsdk:"id"`
	Name          types.String `tfsdk:"name"`
	Namespace     types.String `tfsdk:"namespace"`
	Peers         types.Set    `tfsdk:"peers"`
	Version       types.Int64  `tfsdk:"version"`
	CreateVersion types.Int64  `tfsdk:"create_version"`
}

var serviceExportFields = fieldMap{root: "export", sets: map[string]bool{"peers": true}}

func (r *serviceExportResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_service_export"
}

func (r *serviceExportResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "Exports a service of this cluster to peer clusters: each listed peering receives the " +
			"service with its healthy endpoints, and its workloads can then resolve and call it across clusters. " +
			"The service may be registered later; each peering must exist.",
		Attributes: map[string]schema.Attribute{
			"id":        idAttribute("`namespace/name` of the exported service."),
			"name":      nameAttribute("Name of the exported service."),
			"namespace": namespaceAttribute(),
			"peers": schema.SetAttribute{
				MarkdownDescription: "Names of the peerings (local names, as in `meshfed_peering` or `meshfed_peering_token`) the service is exported to.",
				ElementType:         types.StringType,
				Required:            true,
				Validators: []validator.Set{
					setvalidator.SizeBetween(1, 256),
					setvalidator.ValueStringsAre(dnsLabel()),
				},
			},
			"version":        versionAttribute(),
			"create_version": createVersionAttribute(),
		},
	}
}

func (m *serviceExportModel) toAPI(ctx context.Context, d *diag.Diagnostics) *meshfedv1.ServiceExport {
	return &meshfedv1.ServiceExport{
		Meta:  &meshfedv1.Meta{Name: m.Name.ValueString(), Namespace: m.Namespace.ValueString()},
		Peers: stringList(ctx, m.Peers, d),
	}
}

func (m *serviceExportModel) read(e *meshfedv1.ServiceExport, d *diag.Diagnostics) {
	meta := e.GetMeta()
	m.ID = types.StringValue(namespacedID(meta))
	m.Name = types.StringValue(meta.GetName())
	m.Namespace = types.StringValue(meta.GetNamespace())
	m.Peers = setValue(m.Peers, e.GetPeers(), d)
	m.Version = types.Int64Value(int64(meta.GetVersion()))
	m.CreateVersion = types.Int64Value(int64(meta.GetCreateVersion()))
}

func (r *serviceExportResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan serviceExportModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	// SetServiceExport creates or replaces: refuse to take over an export
	// that exists, as Create* RPCs do.
	_, err := r.client.Peering.GetServiceExport(ctx, &meshfedv1.GetRequest{
		Namespace: plan.Namespace.ValueString(), Name: plan.Name.ValueString(), Read: &meshfedv1.ReadOptions{Consistent: true},
	})
	switch {
	case err == nil:
		resp.Diagnostics.AddError("Cannot create the service export",
			fmt.Sprintf("The service %s/%s is already exported. Import it with terraform import (ID %s/%s) to manage it.",
				plan.Namespace.ValueString(), plan.Name.ValueString(), plan.Namespace.ValueString(), plan.Name.ValueString()))
		return
	case !isNotFound(err):
		addAPIError(&resp.Diagnostics, "Cannot create the service export", err, serviceExportFields)
		return
	}
	out, err := r.client.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: plan.toAPI(ctx, &resp.Diagnostics)})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot create the service export", err, serviceExportFields)
		return
	}
	plan.read(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *serviceExportResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state serviceExportModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Peering.GetServiceExport(ctx, &meshfedv1.GetRequest{Namespace: state.Namespace.ValueString(), Name: state.Name.ValueString()})
	if isNotFound(err) {
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the service export", err, serviceExportFields)
		return
	}
	state.read(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *serviceExportResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state serviceExportModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{
		Export: plan.toAPI(ctx, &resp.Diagnostics), ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot update the service export", err, serviceExportFields)
		return
	}
	plan.read(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *serviceExportResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state serviceExportModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	_, err := r.client.Peering.DeleteServiceExport(ctx, &meshfedv1.DeleteRequest{
		Namespace: state.Namespace.ValueString(), Name: state.Name.ValueString(), ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil && !isNotFound(err) {
		addAPIError(&resp.Diagnostics, "Cannot delete the service export", err, serviceExportFields)
	}
}

func (r *serviceExportResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	importNamespaced(ctx, req, resp)
}
