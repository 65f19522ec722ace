// Package provider is the Terraform provider for meshfed: resources for what
// an operator declares (services, workloads, policies, settings, exports,
// peerings, the CA, identities, tokens), data sources for what a cluster
// reports, and ephemeral resources for the secrets that must not be stored
// in Terraform state. It talks to a cluster only through the gRPC management
// API (internal/client).
package provider

import (
	"context"
	"os"

	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/ephemeral"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/hashicorp/terraform-plugin-framework/provider/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/meshfed/meshfed/internal/client"
)

// Address is the provider's registry address.
const Address = "registry.terraform.io/meshfed/meshfed"

// Compile-time checks of the interfaces the provider implements.
var (
	_ provider.Provider                       = (*meshfedProvider)(nil)
	_ provider.ProviderWithEphemeralResources = (*meshfedProvider)(nil)
)

// New returns a constructor of the provider, as providerserver wants it.
func New(version string) func() provider.Provider {
	return func() provider.Provider {
		return &meshfedProvider{version: version}
	}
}

type meshfedProvider struct {
	version string
}

// providerModel is the provider block.
type providerModel struct {
	Address types.String `tfsdk:"address"`
	Token   types.String `tfsdk:"token"`
	CAFile  types.String `tfsdk:"ca_file"`
	CAPEM   types.String `tfsdk:"ca_pem"`
}

func (p *meshfedProvider) Metadata(_ context.Context, _ provider.MetadataRequest, resp *provider.MetadataResponse) {
	resp.TypeName = "meshfed"
	resp.Version = p.version
}

func (p *meshfedProvider) Schema(_ context.Context, _ provider.SchemaRequest, resp *provider.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "The meshfed provider manages a meshfed cluster (the control plane of a multi-cluster " +
			"service mesh) through its gRPC management API: services, workloads, authorization and traffic policies, " +
			"mesh and CA settings, workload identities, API tokens, service exports and peerings between clusters.\n\n" +
			"Every connection is TLS 1.3, verified against the cluster's trust bundle (`ca_file` or `ca_pem`), and " +
			"authenticated with an API token (`token`). A cluster's servers write both into their data directory " +
			"(`ca.pem`, `admin.token`) and print them as `MESHFED_*` environment variables, which the provider reads " +
			"when the arguments are not set.",
		Attributes: map[string]schema.Attribute{
			"address": schema.StringAttribute{
				MarkdownDescription: "`host:port` of the API address of any server of the cluster (default port 7700). " +
					"Defaults to the `" + client.EnvAddr + "` environment variable.",
				Optional: true,
			},
			"token": schema.StringAttribute{
				MarkdownDescription: "Secret of the API token sent as a bearer token on every call; an `admin` token to " +
					"manage resources, a `read` token is enough for data sources. Defaults to the `" + client.EnvToken +
					"` environment variable.",
				Optional:  true,
				Sensitive: true,
			},
			"ca_file": schema.StringAttribute{
				MarkdownDescription: "Path of a PEM file with the cluster's trust bundle, which verifies the servers' " +
					"certificates (`ca.pem` in a server's data directory, or the output of `meshfed ca bundle`). " +
					"Defaults to the `" + client.EnvCAFile + "` environment variable. Conflicts with `ca_pem`.",
				Optional:   true,
				Validators: []validator.String{stringvalidator.ConflictsWith(path.MatchRoot("ca_pem"))},
			},
			"ca_pem": schema.StringAttribute{
				MarkdownDescription: "The cluster's trust bundle itself, PEM, instead of `ca_file`.",
				Optional:            true,
			},
		},
	}
}

// Configure builds the API client shared by every resource, data source and
// ephemeral resource. gRPC connects lazily, so nothing is dialed here.
func (p *meshfedProvider) Configure(ctx context.Context, req provider.ConfigureRequest, resp *provider.ConfigureResponse) {
	var cfg providerModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &cfg)...)
	if resp.Diagnostics.HasError() {
		return
	}
	for name, v := range map[string]types.String{"address": cfg.Address, "token": cfg.Token, "ca_file": cfg.CAFile, "ca_pem": cfg.CAPEM} {
		if v.IsUnknown() {
			resp.Diagnostics.AddAttributeError(path.Root(name), "Unknown meshfed provider "+name,
				"The provider cannot connect while "+name+" is unknown (it depends on a resource not created yet). "+
					"Set it to a value known at plan time, or apply the resource it depends on first (-target).")
		}
	}
	if resp.Diagnostics.HasError() {
		return
	}
	c := client.Config{
		Addr:   stringOr(cfg.Address, os.Getenv(client.EnvAddr)),
		Token:  stringOr(cfg.Token, os.Getenv(client.EnvToken)),
		CAFile: stringOr(cfg.CAFile, os.Getenv(client.EnvCAFile)),
	}
	if pem := cfg.CAPEM.ValueString(); pem != "" {
		c.CAPEM, c.CAFile = []byte(pem), ""
	}
	if c.Addr == "" {
		resp.Diagnostics.AddAttributeError(path.Root("address"), "Missing meshfed API address",
			"Set the provider's address argument or the "+client.EnvAddr+" environment variable to host:port of a "+
				"meshfed server's API (for example 127.0.0.1:7700).")
	}
	if c.Token == "" {
		resp.Diagnostics.AddAttributeError(path.Root("token"), "Missing meshfed API token",
			"Set the provider's token argument or the "+client.EnvToken+" environment variable to the secret of an "+
				"API token (a bootstrapped server writes admin.token into its data directory).")
	}
	if c.CAFile == "" && len(c.CAPEM) == 0 {
		resp.Diagnostics.AddAttributeError(path.Root("ca_file"), "Missing meshfed trust bundle",
			"Set the provider's ca_file or ca_pem argument, or the "+client.EnvCAFile+" environment variable, to the "+
				"cluster's trust bundle (ca.pem in a server's data directory, or the output of \"meshfed ca bundle\").")
	}
	if resp.Diagnostics.HasError() {
		return
	}
	cl, err := client.New(c)
	if err != nil {
		at := path.Root("ca_file")
		if len(c.CAPEM) > 0 {
			at = path.Root("ca_pem")
		}
		resp.Diagnostics.AddAttributeError(at, "Cannot configure the meshfed client", err.Error())
		return
	}
	resp.ResourceData = cl
	resp.DataSourceData = cl
	resp.EphemeralResourceData = cl
}

func (p *meshfedProvider) Resources(context.Context) []func() resource.Resource {
	return []func() resource.Resource{
		NewServiceResource,
		NewWorkloadResource,
		NewAuthorizationPolicyResource,
		NewTrafficPolicyResource,
		NewMeshSettingsResource,
		NewServiceExportResource,
		NewPeeringResource,
		NewCAResource,
		NewIdentityResource,
		NewTokenResource,
	}
}

func (p *meshfedProvider) DataSources(context.Context) []func() datasource.DataSource {
	return []func() datasource.DataSource{
		NewServicesDataSource,
		NewTrustBundleDataSource,
		NewClusterDataSource,
		NewPeeringDataSource,
	}
}

func (p *meshfedProvider) EphemeralResources(context.Context) []func() ephemeral.EphemeralResource {
	return []func() ephemeral.EphemeralResource{
		NewPeeringTokenEphemeralResource,
		NewWorkloadJoinTokenEphemeralResource,
	}
}

// stringOr returns v's value, or def when v is null or empty.
func stringOr(v types.String, def string) string {
	if s := v.ValueString(); s != "" {
		return s
	}
	return def
}
