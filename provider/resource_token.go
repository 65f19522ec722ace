package provider

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ resource.Resource                   = (*tokenResource)(nil)
	_ resource.ResourceWithConfigure      = (*tokenResource)(nil)
	_ resource.ResourceWithImportState    = (*tokenResource)(nil)
	_ resource.ResourceWithValidateConfig = (*tokenResource)(nil)
)

// maxTokenTTL bounds a token's lifetime.
const maxTokenTTL = 10 * 365 * 24 * time.Hour

// tokenKinds are the kinds this resource manages; server-join tokens are
// made by "meshfed server join-token" when a server joins.
var tokenKinds = []string{"admin", "read", "workload-join"}

// NewTokenResource is the meshfed_token resource.
func NewTokenResource() resource.Resource { return &tokenResource{} }

type tokenResource struct{ resourceBase }

type tokenModel struct {
	ID          types.String `tfsdk:"id"`
	Kind        types.String `tfsdk:"kind"`
	Description types.String `tfsdk:"description"`
	SpiffeID    types.String `tfsdk:"spiffe_id"`
	TTL         types.String `tfsdk:"ttl"`
	MaxUses     types.Int64  `tfsdk:"max_uses"`
	Labels      types.Map    `tfsdk:"labels"`
	ExpireTime  types.String `tfsdk:"expire_time"`
	Uses        types.Int64  `tfsdk:"uses"`
	Version     types.Int64  `tfsdk:"version"`
}

var tokenFields = fieldMap{root: "token", renames: map[string]string{"name": "id"}}

func (r *tokenResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_token"
}

func (r *tokenResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	replace := []planmodifier.String{stringplanmodifier.RequiresReplace()}
	resp.Schema = schema.Schema{
		MarkdownDescription: "An API token: its kind, description, labels and expiry, and its revocation when the " +
			"resource is destroyed.\n\n" +
			"**The secret is never exposed.** The server keeps only a hash of a token's secret and returns the secret " +
			"once, in the answer to its creation; Terraform could only hand it on by storing it in state. This " +
			"resource therefore discards it: use it to create tokens whose secret is not needed (and revoke them " +
			"later), and to manage tokens made elsewhere, such as with `meshfed tokens create` (import them by " +
			"accessor ID: change their description, labels or expiry, revoke them with `terraform destroy`). To pass " +
			"a workload-join secret to a workload, use the ephemeral resource `meshfed_workload_join_token`, whose " +
			"value never reaches state or plan.",
		Attributes: map[string]schema.Attribute{
			"id": idAttribute("Accessor ID of the token (`tok-...`), chosen by the server. It is not a secret."),
			"kind": schema.StringAttribute{
				MarkdownDescription: "What the token may do: `admin` (every API call), `read` (read-only operator) or " +
					"`workload-join` (lets a workload attest as `spiffe_id`). Changing it replaces the token.",
				Required:      true,
				Validators:    []validator.String{stringvalidator.OneOf(tokenKinds...)},
				PlanModifiers: replace,
			},
			"description": schema.StringAttribute{
				MarkdownDescription: "Free-form description, at most 256 bytes.",
				Optional:            true,
				Validators:          []validator.String{stringvalidator.LengthAtMost(256)},
			},
			"spiffe_id": schema.StringAttribute{
				MarkdownDescription: "`workload-join` only, and required there: the one SPIFFE ID (of this cluster's " +
					"trust domain) the token lets a workload attest as. Changing it replaces the token.",
				Optional:      true,
				Validators:    []validator.String{spiffeID()},
				PlanModifiers: replace,
			},
			"ttl": schema.StringAttribute{
				MarkdownDescription: "Time to live from creation, for example `720h`. Unset: no expiry for `admin` and " +
					"`read` tokens, 30 minutes for `workload-join` tokens. Changing it replaces the token.",
				Optional:      true,
				Validators:    []validator.String{durationBetween(0, maxTokenTTL)},
				PlanModifiers: replace,
			},
			"max_uses": schema.Int64Attribute{
				MarkdownDescription: "How many times a `workload-join` token may be used; 0 or unset is unlimited. " +
					"Changing it replaces the token.",
				Optional:      true,
				Validators:    []validator.Int64{int64validator.Between(0, 1<<32-1)},
				PlanModifiers: []planmodifier.Int64{int64planmodifier.RequiresReplace()},
			},
			"labels": labelsAttribute(),
			"expire_time": schema.StringAttribute{
				MarkdownDescription: "When the token stops working (RFC 3339), null if never.",
				Computed:            true,
				PlanModifiers:       []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"uses": schema.Int64Attribute{
				MarkdownDescription: "How many times the token has been used.",
				Computed:            true,
			},
			"version": versionAttribute(),
		},
	}
}

func (r *tokenResource) ValidateConfig(ctx context.Context, req resource.ValidateConfigRequest, resp *resource.ValidateConfigResponse) {
	var m tokenModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() || m.Kind.IsUnknown() || m.SpiffeID.IsUnknown() {
		return
	}
	switch {
	case m.Kind.ValueString() == "workload-join" && m.SpiffeID.IsNull():
		resp.Diagnostics.AddAttributeError(path.Root("spiffe_id"), "Missing SPIFFE ID",
			"A workload-join token is bound to one SPIFFE ID: set spiffe_id.")
	case m.Kind.ValueString() != "workload-join" && !m.SpiffeID.IsNull() && !m.Kind.IsNull():
		resp.Diagnostics.AddAttributeError(path.Root("spiffe_id"), "Invalid Attribute Combination",
			fmt.Sprintf("Attribute spiffe_id only applies to workload-join tokens, not %s tokens.", m.Kind.ValueString()))
	}
}

func (m *tokenModel) fromAPI(t *meshfedv1.Token, d *diag.Diagnostics) {
	m.ID = types.StringValue(t.GetMeta().GetName())
	m.Kind = enumValue(t.GetKind())
	m.Description = stringValue(m.Description, t.GetDescription())
	m.SpiffeID = stringValue(m.SpiffeID, t.GetSpiffeId())
	m.MaxUses = int64Value(m.MaxUses, int64(t.GetMaxUses()))
	m.Labels = labelsValue(m.Labels, t.GetMeta().GetLabels(), d)
	m.ExpireTime = timeValue(t.GetExpireTime())
	m.Uses = types.Int64Value(int64(t.GetUses()))
	m.Version = types.Int64Value(int64(t.GetMeta().GetVersion()))
}

func (r *tokenResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan tokenModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{
		Kind:        meshfedv1.TokenKind(enumNumber(meshfedv1.TokenKind(0).Descriptor(), plan.Kind.ValueString())),
		Description: plan.Description.ValueString(),
		SpiffeId:    plan.SpiffeID.ValueString(),
		Ttl:         durationProto(plan.TTL),
		MaxUses:     uint32(plan.MaxUses.ValueInt64()),
		Labels:      labelsMap(ctx, plan.Labels, &resp.Diagnostics),
	})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot create the token", err, tokenFields)
		return
	}
	// The secret is dropped here: see the resource's description.
	out.Secret = ""
	plan.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *tokenResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state tokenModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Tokens.GetToken(ctx, &meshfedv1.GetRequest{Name: state.ID.ValueString()})
	if isNotFound(err) {
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the token", err, tokenFields)
		return
	}
	state.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

// Update changes the description and labels; the expiry is kept.
func (r *tokenResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state tokenModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Tokens.UpdateToken(ctx, &meshfedv1.UpdateTokenRequest{
		Token: &meshfedv1.Token{
			Meta:        &meshfedv1.Meta{Name: state.ID.ValueString(), Labels: labelsMap(ctx, plan.Labels, &resp.Diagnostics)},
			Description: plan.Description.ValueString(),
		},
		ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot update the token", err, tokenFields)
		return
	}
	plan.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// Delete revokes the token.
func (r *tokenResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state tokenModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	_, err := r.client.Tokens.DeleteToken(ctx, &meshfedv1.DeleteRequest{Name: state.ID.ValueString(), ExpectedVersion: uint64(state.Version.ValueInt64())})
	if err != nil && !isNotFound(err) {
		addAPIError(&resp.Diagnostics, "Cannot revoke the token", err, tokenFields)
	}
}

func (r *tokenResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), req.ID)...)
}
