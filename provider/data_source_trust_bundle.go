package provider

import (
	"context"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ datasource.DataSource              = (*trustBundleDataSource)(nil)
	_ datasource.DataSourceWithConfigure = (*trustBundleDataSource)(nil)
)

// NewTrustBundleDataSource is the meshfed_trust_bundle data source.
func NewTrustBundleDataSource() datasource.DataSource { return &trustBundleDataSource{} }

type trustBundleDataSource struct{ dataSourceBase }

type trustBundleDataModel struct {
	TrustDomain      types.String       `tfsdk:"trust_domain"`
	RootsPEM         types.List         `tfsdk:"roots_pem"`
	BundlePEM        types.String       `tfsdk:"bundle_pem"`
	Sequence         types.Int64        `tfsdk:"sequence"`
	FederatedBundles []bundleEntryModel `tfsdk:"federated_bundles"`
}

type bundleEntryModel struct {
	TrustDomain types.String `tfsdk:"trust_domain"`
	Peer        types.String `tfsdk:"peer"`
	RootsPEM    types.List   `tfsdk:"roots_pem"`
	BundlePEM   types.String `tfsdk:"bundle_pem"`
	Sequence    types.Int64  `tfsdk:"sequence"`
}

func (d *trustBundleDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_trust_bundle"
}

func (d *trustBundleDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "The cluster's trust bundle: the roots of every authority that is not retired (both the " +
			"old and the new root during a CA rotation), and the bundles of the peer trust domains it federates " +
			"with. `bundle_pem` is what clients use to verify the servers (a provider's `ca_pem`).",
		Attributes: map[string]schema.Attribute{
			"trust_domain": schema.StringAttribute{MarkdownDescription: "The cluster's trust domain.", Computed: true},
			"roots_pem": schema.ListAttribute{
				MarkdownDescription: "The roots, one PEM certificate each.", Computed: true, ElementType: types.StringType,
			},
			"bundle_pem": schema.StringAttribute{MarkdownDescription: "The roots concatenated, PEM.", Computed: true},
			"sequence":   schema.Int64Attribute{MarkdownDescription: "Sequence number of the bundle; grows with every change.", Computed: true},
			"federated_bundles": schema.ListNestedAttribute{
				MarkdownDescription: "The bundle of every peer trust domain, as last received over its peering.",
				Computed:            true,
				NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
					"trust_domain": schema.StringAttribute{MarkdownDescription: "The peer's trust domain.", Computed: true},
					"peer":         schema.StringAttribute{MarkdownDescription: "The peering it came from.", Computed: true},
					"roots_pem":    schema.ListAttribute{MarkdownDescription: "The peer's roots.", Computed: true, ElementType: types.StringType},
					"bundle_pem":   schema.StringAttribute{MarkdownDescription: "The peer's roots concatenated, PEM.", Computed: true},
					"sequence":     schema.Int64Attribute{MarkdownDescription: "The peer's bundle sequence.", Computed: true},
				}},
			},
		},
	}
}

func joinPEM(roots []string) string {
	var b strings.Builder
	for _, r := range roots {
		b.WriteString(strings.TrimRight(r, "\n") + "\n")
	}
	return b.String()
}

func (d *trustBundleDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	if !d.ready(&resp.Diagnostics) {
		return
	}
	out, err := d.client.CA.GetTrustBundle(ctx, &meshfedv1.GetTrustBundleRequest{Federated: true})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the trust bundle", err, fieldMap{})
		return
	}
	m := trustBundleDataModel{FederatedBundles: []bundleEntryModel{}}
	for _, b := range out.GetBundles() {
		roots, diags := types.ListValueFrom(ctx, types.StringType, nonNil(b.GetRootsPem()))
		resp.Diagnostics.Append(diags...)
		if b.GetPeer() == "" {
			m.TrustDomain = types.StringValue(b.GetTrustDomain())
			m.RootsPEM = roots
			m.BundlePEM = types.StringValue(joinPEM(b.GetRootsPem()))
			m.Sequence = types.Int64Value(int64(b.GetSequence()))
			continue
		}
		m.FederatedBundles = append(m.FederatedBundles, bundleEntryModel{
			TrustDomain: types.StringValue(b.GetTrustDomain()), Peer: types.StringValue(b.GetPeer()),
			RootsPEM: roots, BundlePEM: types.StringValue(joinPEM(b.GetRootsPem())), Sequence: types.Int64Value(int64(b.GetSequence())),
		})
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}
