package provider

import (
	"context"
	"encoding/json"

	"github.com/hashicorp/terraform-plugin-framework/ephemeral"
	"github.com/hashicorp/terraform-plugin-framework/ephemeral/schema"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ ephemeral.EphemeralResource              = (*peeringTokenEphemeral)(nil)
	_ ephemeral.EphemeralResourceWithConfigure = (*peeringTokenEphemeral)(nil)
	_ ephemeral.EphemeralResourceWithClose     = (*peeringTokenEphemeral)(nil)
)

// pendingKey is the private data key under which Open leaves the pending
// peering it made for Close.
const pendingKey = "pending"

// NewPeeringTokenEphemeralResource is the meshfed_peering_token ephemeral
// resource.
func NewPeeringTokenEphemeralResource() ephemeral.EphemeralResource { return &peeringTokenEphemeral{} }

type peeringTokenEphemeral struct{ ephemeralBase }

type peeringTokenModel struct {
	Peer        types.String `tfsdk:"peer"`
	Token       types.String `tfsdk:"token"`
	Established types.Bool   `tfsdk:"established"`
}

// pendingPeering is what Open made: the pending peering at its version.
type pendingPeering struct {
	Name    string `json:"name"`
	Version uint64 `json:"version"`
}

func (e *peeringTokenEphemeral) Metadata(_ context.Context, req ephemeral.MetadataRequest, resp *ephemeral.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_peering_token"
}

func (e *peeringTokenEphemeral) Schema(_ context.Context, _ ephemeral.SchemaRequest, resp *ephemeral.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "A peering token made by this (the accepting) cluster for another cluster, which uses it " +
			"once to establish the peering (`meshfed_peering` there, with the token as `peering_token_wo`). The token " +
			"holds this cluster's name, trust domain, API addresses, trust bundle and a one-time secret; it is " +
			"valid for 24 hours and only for the cluster named `peer`. Being ephemeral, it is never stored in plan " +
			"or state.\n\n" +
			"Each plan and apply makes a new token, which replaces the secret of the pending peering `peer` here. " +
			"When the token is not used by the end of the run (a plan, or an apply that did not establish the " +
			"peering), the pending peering it created is deleted again, so a plan leaves nothing behind.\n\n" +
			"**Once the peering is established** this cluster refuses to make another token for it. The ephemeral " +
			"resource then returns `established = true` and a null `token` instead of failing, so that a " +
			"configuration that makes the token and establishes the peering in one apply plans cleanly afterwards " +
			"(`meshfed_peering` needs the token only to be created). To peer again, destroy the `meshfed_peering` " +
			"(which deletes both sides) and apply.",
		Attributes: map[string]schema.Attribute{
			"peer": schema.StringAttribute{
				MarkdownDescription: "Local name of the peering on this cluster, which must be the name of the cluster " +
					"that will use the token (its `meshfed_cluster` name): the token works for that cluster only.",
				Required:   true,
				Validators: []validator.String{dnsLabel()},
			},
			"token": schema.StringAttribute{
				MarkdownDescription: "The peering token; null when `established` is true.",
				Computed:            true,
				Sensitive:           true,
			},
			"established": schema.BoolAttribute{
				MarkdownDescription: "True when this cluster already has an established peering named `peer`: no token is made then.",
				Computed:            true,
			},
		},
	}
}

func (e *peeringTokenEphemeral) Open(ctx context.Context, req ephemeral.OpenRequest, resp *ephemeral.OpenResponse) {
	var m peeringTokenModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() || !e.ready(&resp.Diagnostics) {
		return
	}
	name := m.Peer.ValueString()
	var out *meshfedv1.GeneratePeeringTokenResponse
	var err error
	for attempt := 0; ; attempt++ {
		out, err = e.client.Peering.GeneratePeeringToken(ctx, &meshfedv1.GeneratePeeringTokenRequest{Peer: name})
		if status.Code(err) != codes.FailedPrecondition {
			break
		}
		// The server refuses a token for an established peering; say so
		// instead of failing every plan after the peering was made.
		p, gerr := e.client.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: name})
		if gerr == nil && (p.GetDialer() || p.GetPeerTrustDomain() != "") {
			m.Token, m.Established = types.StringNull(), types.BoolValue(true)
			resp.Diagnostics.Append(resp.Result.Set(ctx, &m)...)
			return
		}
		// Gone in between (a destroy of the peering running alongside):
		// ask again.
		if !isNotFound(gerr) || attempt == 2 {
			break
		}
	}
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot make a peering token", err, fieldMap{renames: map[string]string{"peer": "peer"}})
		return
	}
	m.Token, m.Established = types.StringValue(out.GetToken()), types.BoolValue(false)
	resp.Diagnostics.Append(resp.Result.Set(ctx, &m)...)

	// Remember the pending peering as it is now, for Close.
	p, err := e.client.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: name, Read: &meshfedv1.ReadOptions{Consistent: true}})
	if err != nil {
		tflog.Warn(ctx, "cannot read the pending peering", map[string]any{"peer": name, "error": err.Error()})
		return
	}
	b, _ := json.Marshal(pendingPeering{Name: name, Version: p.GetMeta().GetVersion()})
	resp.Diagnostics.Append(resp.Private.SetKey(ctx, pendingKey, b)...)
}

// Close deletes the pending peering Open made if no cluster used its token:
// its version is then still the one Open saw (the acceptor records the
// dialer, and so changes the version, before the dialer's peering becomes
// active).
func (e *peeringTokenEphemeral) Close(ctx context.Context, req ephemeral.CloseRequest, resp *ephemeral.CloseResponse) {
	b, diags := req.Private.GetKey(ctx, pendingKey)
	resp.Diagnostics.Append(diags...)
	if len(b) == 0 || e.client == nil {
		return
	}
	var p pendingPeering
	if err := json.Unmarshal(b, &p); err != nil || p.Version == 0 {
		return
	}
	// Only a peering still pending at the version Open saw is ours to
	// delete. Look first: a delete of an established peering ends its link
	// and tells the peer before the server checks the expected version.
	cur, err := e.client.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: p.Name, Read: &meshfedv1.ReadOptions{Consistent: true}})
	if err != nil || cur.GetState() != meshfedv1.PeeringState_PEERING_STATE_PENDING || cur.GetMeta().GetVersion() != p.Version {
		return
	}
	_, err = e.client.Peering.DeletePeering(ctx, &meshfedv1.DeleteRequest{Name: p.Name, ExpectedVersion: p.Version})
	switch status.Code(err) {
	case codes.OK:
		tflog.Debug(ctx, "deleted the unused pending peering", map[string]any{"peer": p.Name})
	case codes.NotFound, codes.FailedPrecondition:
		// Used (or replaced, or deleted): leave it.
	default:
		tflog.Warn(ctx, "cannot delete the unused pending peering", map[string]any{"peer": p.Name, "error": err.Error()})
	}
}
