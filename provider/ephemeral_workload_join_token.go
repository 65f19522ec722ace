package provider

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/ephemeral"
	"github.com/hashicorp/terraform-plugin-framework/ephemeral/schema"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ ephemeral.EphemeralResource              = (*workloadJoinTokenEphemeral)(nil)
	_ ephemeral.EphemeralResourceWithConfigure = (*workloadJoinTokenEphemeral)(nil)
)

// NewWorkloadJoinTokenEphemeralResource is the meshfed_workload_join_token
// ephemeral resource.
func NewWorkloadJoinTokenEphemeralResource() ephemeral.EphemeralResource {
	return &workloadJoinTokenEphemeral{}
}

type workloadJoinTokenEphemeral struct{ ephemeralBase }

type workloadJoinTokenModel struct {
	SpiffeID    types.String `tfsdk:"spiffe_id"`
	TTL         types.String `tfsdk:"ttl"`
	MaxUses     types.Int64  `tfsdk:"max_uses"`
	Description types.String `tfsdk:"description"`
	Token       types.String `tfsdk:"token"`
	AccessorID  types.String `tfsdk:"accessor_id"`
	ExpireTime  types.String `tfsdk:"expire_time"`
}

var workloadJoinTokenFields = fieldMap{root: "token"}

func (e *workloadJoinTokenEphemeral) Metadata(_ context.Context, req ephemeral.MetadataRequest, resp *ephemeral.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_workload_join_token"
}

func (e *workloadJoinTokenEphemeral) Schema(_ context.Context, _ ephemeral.SchemaRequest, resp *ephemeral.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "A new workload-join token: the secret a workload (a VM, say) presents once, with a CSR, " +
			"to get an SVID for exactly `spiffe_id` (`meshfed svid fetch --token`, or the proxy's `--token`). Pass it " +
			"to the workload through a write-only argument (cloud-init user data, a secret store); being ephemeral, " +
			"it is never stored in plan or state.\n\n" +
			"Every plan and apply makes a new token. Tokens are short-lived and limited in uses, and are not revoked " +
			"when the run ends (the workload may not have used its token yet): they expire after `ttl`.",
		Attributes: map[string]schema.Attribute{
			"spiffe_id": schema.StringAttribute{
				MarkdownDescription: "The one SPIFFE ID (of the cluster's trust domain) the token lets a workload attest as.",
				Required:            true,
				Validators:          []validator.String{spiffeID()},
			},
			"ttl": schema.StringAttribute{
				MarkdownDescription: "Time to live, for example `10m`. Defaults to 30 minutes.",
				Optional:            true,
				Validators:          []validator.String{durationBetween(0, maxTokenTTL)},
			},
			"max_uses": schema.Int64Attribute{
				MarkdownDescription: "How many times the token may be used. Defaults to 1; 0 is unlimited.",
				Optional:            true,
				Validators:          []validator.Int64{int64validator.Between(0, 1<<32-1)},
			},
			"description": schema.StringAttribute{
				MarkdownDescription: "Description of the token, shown in `meshfed tokens list`.",
				Optional:            true,
				Validators:          []validator.String{stringvalidator.LengthAtMost(256)},
			},
			"token":       schema.StringAttribute{MarkdownDescription: "The token's secret.", Computed: true, Sensitive: true},
			"accessor_id": schema.StringAttribute{MarkdownDescription: "The token's accessor ID (not a secret), to find or revoke it.", Computed: true},
			"expire_time": schema.StringAttribute{MarkdownDescription: "When the token expires (RFC 3339).", Computed: true},
		},
	}
}

func (e *workloadJoinTokenEphemeral) Open(ctx context.Context, req ephemeral.OpenRequest, resp *ephemeral.OpenResponse) {
	var m workloadJoinTokenModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() || !e.ready(&resp.Diagnostics) {
		return
	}
	uses := uint32(1)
	if !m.MaxUses.IsNull() {
		uses = uint32(m.MaxUses.ValueInt64())
	}
	tok, err := e.client.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{
		Kind:        meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN,
		SpiffeId:    m.SpiffeID.ValueString(),
		Ttl:         durationProto(m.TTL),
		MaxUses:     uses,
		Description: m.Description.ValueString(),
	})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot make a workload-join token", err, workloadJoinTokenFields)
		return
	}
	m.Token = types.StringValue(tok.GetSecret())
	m.AccessorID = types.StringValue(tok.GetMeta().GetName())
	m.ExpireTime = timeValue(tok.GetExpireTime())
	resp.Diagnostics.Append(resp.Result.Set(ctx, &m)...)
}
