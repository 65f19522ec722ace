package provider

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ datasource.DataSource              = (*clusterDataSource)(nil)
	_ datasource.DataSourceWithConfigure = (*clusterDataSource)(nil)
)

// NewClusterDataSource is the meshfed_cluster data source.
func NewClusterDataSource() datasource.DataSource { return &clusterDataSource{} }

type clusterDataSource struct{ dataSourceBase }

type clusterDataModel struct {
	Name             types.String        `tfsdk:"name"`
	TrustDomain      types.String        `tfsdk:"trust_domain"`
	Version          types.String        `tfsdk:"version"`
	LeaderID         types.String        `tfsdk:"leader_id"`
	LeaderAPIAddr    types.String        `tfsdk:"leader_api_addr"`
	Healthy          types.Bool          `tfsdk:"healthy"`
	Voters           types.Int64         `tfsdk:"voters"`
	FailureTolerance types.Int64         `tfsdk:"failure_tolerance"`
	Members          []clusterMemberData `tfsdk:"members"`
}

type clusterMemberData struct {
	NodeID   types.String `tfsdk:"node_id"`
	APIAddr  types.String `tfsdk:"api_addr"`
	HTTPAddr types.String `tfsdk:"http_addr"`
	Voter    types.Bool   `tfsdk:"voter"`
	Leader   types.Bool   `tfsdk:"leader"`
	Healthy  types.Bool   `tfsdk:"healthy"`
	Status   types.String `tfsdk:"status"`
}

func (d *clusterDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_cluster"
}

func (d *clusterDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	str := func(desc string) schema.StringAttribute {
		return schema.StringAttribute{MarkdownDescription: desc, Computed: true}
	}
	resp.Schema = schema.Schema{
		MarkdownDescription: "The cluster the provider is connected to: its name, trust domain, leader and servers " +
			"(like `meshfed status` and `meshfed members`).",
		Attributes: map[string]schema.Attribute{
			"name":              str("Name of the cluster."),
			"trust_domain":      str("SPIFFE trust domain of the cluster."),
			"version":           str("meshfed version of the server that answered."),
			"leader_id":         str("Node ID of the Raft leader."),
			"leader_api_addr":   str("API address of the Raft leader."),
			"healthy":           schema.BoolAttribute{MarkdownDescription: "True when the cluster has a leader and can lose a server.", Computed: true},
			"voters":            schema.Int64Attribute{MarkdownDescription: "Number of voting servers.", Computed: true},
			"failure_tolerance": schema.Int64Attribute{MarkdownDescription: "How many servers the cluster can lose and keep a quorum.", Computed: true},
			"members": schema.ListNestedAttribute{
				MarkdownDescription: "The servers of the cluster.",
				Computed:            true,
				NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
					"node_id":   str("Node ID of the server."),
					"api_addr":  str("API address (gRPC)."),
					"http_addr": str("HTTP address (health, metrics, SPIFFE bundle endpoint)."),
					"voter":     schema.BoolAttribute{MarkdownDescription: "True for a Raft voter.", Computed: true},
					"leader":    schema.BoolAttribute{MarkdownDescription: "True for the leader.", Computed: true},
					"healthy":   schema.BoolAttribute{MarkdownDescription: "Healthy as judged by autopilot.", Computed: true},
					"status":    str("`alive`, `failed` or `left`."),
				}},
			},
		},
	}
}

func (d *clusterDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	if !d.ready(&resp.Diagnostics) {
		return
	}
	st, err := d.client.Cluster.GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the cluster status", err, fieldMap{})
		return
	}
	members, err := d.client.Cluster.ListMembers(ctx, &meshfedv1.ListMembersRequest{})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot list the cluster's servers", err, fieldMap{})
		return
	}
	m := clusterDataModel{
		Name: types.StringValue(st.GetCluster()), TrustDomain: types.StringValue(st.GetTrustDomain()),
		Version: types.StringValue(st.GetVersion()), LeaderID: types.StringValue(st.GetLeaderId()),
		LeaderAPIAddr: types.StringValue(st.GetLeaderApiAddr()), Healthy: types.BoolValue(st.GetHealthy()),
		Voters: types.Int64Value(int64(st.GetVoters())), FailureTolerance: types.Int64Value(int64(st.GetFailureTolerance())),
		Members: []clusterMemberData{},
	}
	for _, s := range members.GetMembers() {
		m.Members = append(m.Members, clusterMemberData{
			NodeID: types.StringValue(s.GetNodeId()), APIAddr: types.StringValue(s.GetApiAddr()), HTTPAddr: types.StringValue(s.GetHttpAddr()),
			Voter: types.BoolValue(s.GetVoter()), Leader: types.BoolValue(s.GetLeader()), Healthy: types.BoolValue(s.GetHealthy()),
			Status: types.StringValue(s.GetStatus()),
		})
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}
