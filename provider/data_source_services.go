package provider

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ datasource.DataSource              = (*servicesDataSource)(nil)
	_ datasource.DataSourceWithConfigure = (*servicesDataSource)(nil)
)

// NewServicesDataSource is the meshfed_services data source.
func NewServicesDataSource() datasource.DataSource { return &servicesDataSource{} }

type servicesDataSource struct{ dataSourceBase }

type servicesDataModel struct {
	Namespace       types.String       `tfsdk:"namespace"`
	IncludeImported types.Bool         `tfsdk:"include_imported"`
	Cluster         types.String       `tfsdk:"cluster"`
	Services        []serviceDataModel `tfsdk:"services"`
}

type serviceDataModel struct {
	Cluster        types.String `tfsdk:"cluster"`
	Peer           types.String `tfsdk:"peer"`
	TrustDomain    types.String `tfsdk:"trust_domain"`
	Namespace      types.String `tfsdk:"namespace"`
	Name           types.String `tfsdk:"name"`
	Port           types.Int64  `tfsdk:"port"`
	Protocol       types.String `tfsdk:"protocol"`
	ServiceAccount types.String `tfsdk:"service_account"`
	Labels         types.Map    `tfsdk:"labels"`
	Endpoints      types.Int64  `tfsdk:"endpoints"`
	Stale          types.Bool   `tfsdk:"stale"`
	LastSync       types.String `tfsdk:"last_sync"`
}

func (d *servicesDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_services"
}

func (d *servicesDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "The services of this cluster and, unless `include_imported` is false, the services " +
			"peer clusters export to it (like `meshfed services list --all-clusters`): cross-cluster service discovery.",
		Attributes: map[string]schema.Attribute{
			"namespace": schema.StringAttribute{
				MarkdownDescription: "Only this namespace; unset lists every namespace.",
				Optional:            true,
				Validators:          []validator.String{dnsLabel()},
			},
			"include_imported": schema.BoolAttribute{
				MarkdownDescription: "Include the services imported from peer clusters. Defaults to `true`.",
				Optional:            true,
			},
			"cluster": schema.StringAttribute{
				MarkdownDescription: "Name of this cluster.",
				Computed:            true,
			},
			"services": schema.ListNestedAttribute{
				MarkdownDescription: "Local services first, then imported ones; each group by namespace and name.",
				Computed:            true,
				NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
					"cluster":         schema.StringAttribute{MarkdownDescription: "Cluster the service runs in.", Computed: true},
					"peer":            schema.StringAttribute{MarkdownDescription: "Peering the service was imported from; null for local services.", Computed: true},
					"trust_domain":    schema.StringAttribute{MarkdownDescription: "Trust domain of the cluster the service runs in; null for local services.", Computed: true},
					"namespace":       schema.StringAttribute{MarkdownDescription: "Namespace of the service.", Computed: true},
					"name":            schema.StringAttribute{MarkdownDescription: "Name of the service.", Computed: true},
					"port":            schema.Int64Attribute{MarkdownDescription: "Port of its workloads.", Computed: true},
					"protocol":        schema.StringAttribute{MarkdownDescription: "Application protocol.", Computed: true},
					"service_account": schema.StringAttribute{MarkdownDescription: "Service account of its workloads.", Computed: true},
					"labels":          schema.MapAttribute{MarkdownDescription: "Labels.", Computed: true, ElementType: types.StringType},
					"endpoints":       schema.Int64Attribute{MarkdownDescription: "Imported services: number of healthy endpoints the peer sent; null for local services.", Computed: true},
					"stale":           schema.BoolAttribute{MarkdownDescription: "Imported services: true while the peering link is down.", Computed: true},
					"last_sync":       schema.StringAttribute{MarkdownDescription: "Imported services: when the peer's data was last complete.", Computed: true},
				}},
			},
		},
	}
}

func (d *servicesDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	var m servicesDataModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() || !d.ready(&resp.Diagnostics) {
		return
	}
	ns := m.Namespace.ValueString()
	st, err := d.client.Cluster.GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the cluster status", err, fieldMap{})
		return
	}
	m.Cluster = types.StringValue(st.GetCluster())
	local, err := listAll(ctx, &meshfedv1.ListRequest{Namespace: ns}, func(ctx context.Context, r *meshfedv1.ListRequest) ([]*meshfedv1.Service, string, error) {
		resp, err := d.client.Catalog.ListServices(ctx, r)
		return resp.GetServices(), resp.GetNextPageToken(), err
	})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot list the services", err, fieldMap{})
		return
	}
	m.Services = []serviceDataModel{}
	for _, s := range local {
		m.Services = append(m.Services, serviceDataModel{
			Cluster: m.Cluster, Peer: types.StringNull(), TrustDomain: types.StringNull(),
			Namespace: types.StringValue(s.GetMeta().GetNamespace()), Name: types.StringValue(s.GetMeta().GetName()),
			Port: types.Int64Value(int64(s.GetPort())), Protocol: enumValue(s.GetProtocol()),
			ServiceAccount: types.StringValue(s.GetServiceAccount()),
			Labels:         labelsValue(types.MapValueMust(types.StringType, nil), s.GetMeta().GetLabels(), &resp.Diagnostics),
			Endpoints:      types.Int64Null(), Stale: types.BoolValue(false), LastSync: types.StringNull(),
		})
	}
	if m.IncludeImported.IsNull() || m.IncludeImported.ValueBool() {
		imported, err := listAll(ctx, &meshfedv1.ListRequest{Namespace: ns}, func(ctx context.Context, r *meshfedv1.ListRequest) ([]*meshfedv1.ImportedService, string, error) {
			resp, err := d.client.Peering.ListImportedServices(ctx, r)
			return resp.GetServices(), resp.GetNextPageToken(), err
		})
		// A server without federation still has local services to show.
		if err != nil && status.Code(err) != codes.Unimplemented {
			addAPIError(&resp.Diagnostics, "Cannot list the imported services", err, fieldMap{})
			return
		}
		for _, s := range imported {
			svc := s.GetService()
			m.Services = append(m.Services, serviceDataModel{
				Cluster: types.StringValue(s.GetPeerCluster()), Peer: types.StringValue(s.GetMeta().GetPeer()),
				TrustDomain: types.StringValue(s.GetPeerTrustDomain()),
				Namespace:   types.StringValue(s.GetMeta().GetNamespace()), Name: types.StringValue(svc.GetMeta().GetName()),
				Port: types.Int64Value(int64(svc.GetPort())), Protocol: enumValue(svc.GetProtocol()),
				ServiceAccount: types.StringValue(svc.GetServiceAccount()),
				Labels:         labelsValue(types.MapValueMust(types.StringType, nil), svc.GetMeta().GetLabels(), &resp.Diagnostics),
				Endpoints:      types.Int64Value(int64(len(s.GetEndpoints()))), Stale: types.BoolValue(s.GetStale()),
				LastSync: timeValue(s.GetLastSync()),
			})
		}
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// listAll pages through a List RPC.
func listAll[T any](ctx context.Context, req *meshfedv1.ListRequest, page func(context.Context, *meshfedv1.ListRequest) ([]T, string, error)) ([]T, error) {
	var all []T
	req.Page = &meshfedv1.PageRequest{PageSize: 1000}
	for {
		items, next, err := page(ctx, req)
		if err != nil {
			return nil, err
		}
		all = append(all, items...)
		if next == "" || next == req.Page.PageToken {
			return all, nil
		}
		req.Page.PageToken = next
	}
}
