package provider

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ datasource.DataSource              = (*peeringDataSource)(nil)
	_ datasource.DataSourceWithConfigure = (*peeringDataSource)(nil)
)

// NewPeeringDataSource is the meshfed_peering data source.
func NewPeeringDataSource() datasource.DataSource { return &peeringDataSource{} }

type peeringDataSource struct{ dataSourceBase }

type peeringDataModel struct {
	Name types.String `tfsdk:"name"`
	peeringStatusModel
}

func (d *peeringDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_peering"
}

func (d *peeringDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	attrs := map[string]schema.Attribute{
		"name": schema.StringAttribute{
			MarkdownDescription: "Local name of the peering.",
			Required:            true,
			Validators:          []validator.String{dnsLabel()},
		},
		"peer_api_addresses": schema.ListAttribute{
			MarkdownDescription: peeringStatusDescriptions["peer_api_addresses"], Computed: true, ElementType: types.StringType,
		},
		"dialer":            schema.BoolAttribute{MarkdownDescription: peeringStatusDescriptions["dialer"], Computed: true},
		"imported_services": schema.Int64Attribute{MarkdownDescription: peeringStatusDescriptions["imported_services"], Computed: true},
		"exported_services": schema.Int64Attribute{MarkdownDescription: peeringStatusDescriptions["exported_services"], Computed: true},
	}
	for _, n := range []string{"state", "peer_cluster", "peer_trust_domain", "last_sync", "last_error"} {
		attrs[n] = schema.StringAttribute{MarkdownDescription: peeringStatusDescriptions[n], Computed: true}
	}
	resp.Schema = schema.Schema{
		MarkdownDescription: "A peering of this cluster, on either side (dialer or acceptor): its state, the peer " +
			"cluster and trust domain, and how many services flow each way.",
		Attributes: attrs,
	}
}

func (d *peeringDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	var m peeringDataModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() || !d.ready(&resp.Diagnostics) {
		return
	}
	p, err := d.client.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: m.Name.ValueString()})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the peering", err, fieldMap{})
		return
	}
	m.peeringStatusModel = peeringStatusValue(p, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}
