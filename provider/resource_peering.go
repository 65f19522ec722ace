package provider

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/boolplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/listplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ resource.Resource                = (*peeringResource)(nil)
	_ resource.ResourceWithConfigure   = (*peeringResource)(nil)
	_ resource.ResourceWithImportState = (*peeringResource)(nil)
	_ resource.ResourceWithModifyPlan  = (*peeringResource)(nil)
)

// defaultPeeringTimeout bounds the wait for a new peering to become active.
const defaultPeeringTimeout = 5 * time.Minute

// NewPeeringResource is the meshfed_peering resource.
func NewPeeringResource() resource.Resource { return &peeringResource{} }

type peeringResource struct{ resourceBase }

// peeringStatusModel are the attributes a peering reports, shared with the
// meshfed_peering data source.
type peeringStatusModel struct {
	State            types.String `tfsdk:"state"`
	PeerCluster      types.String `tfsdk:"peer_cluster"`
	PeerTrustDomain  types.String `tfsdk:"peer_trust_domain"`
	PeerAPIAddresses types.List   `tfsdk:"peer_api_addresses"`
	Dialer           types.Bool   `tfsdk:"dialer"`
	LastSync         types.String `tfsdk:"last_sync"`
	ImportedServices types.Int64  `tfsdk:"imported_services"`
	ExportedServices types.Int64  `tfsdk:"exported_services"`
	LastError        types.String `tfsdk:"last_error"`
}

type peeringModel struct {
	ID             types.String   `tfsdk:"id"`
	Name           types.String   `tfsdk:"name"`
	PeeringTokenWO types.String   `tfsdk:"peering_token_wo"`
	Timeouts       timeouts.Value `tfsdk:"timeouts"`
	peeringStatusModel
}

var peeringFields = fieldMap{renames: map[string]string{"peer": "name", "token": "peering_token_wo"}}

// peeringStatusDescriptions describe the reported attributes.
var peeringStatusDescriptions = map[string]string{
	"state":              "State of the link: `pending` (token made, waiting for the dialer), `establishing`, `active`, `disconnected` (imports kept, marked stale) or `deleting`.",
	"peer_cluster":       "Name of the peer cluster.",
	"peer_trust_domain":  "SPIFFE trust domain of the peer cluster.",
	"peer_api_addresses": "API addresses of the peer's servers.",
	"dialer":             "True on the side that dialed (established the peering with a token).",
	"last_sync":          "When the peer's data was last complete (RFC 3339).",
	"imported_services":  "Number of services the peer exports to this cluster.",
	"exported_services":  "Number of services this cluster exports to the peer.",
	"last_error":         "Last error of the link, if any.",
}

func (r *peeringResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_peering"
}

func (r *peeringResource) Schema(ctx context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	resp.Schema = schema.Schema{
		MarkdownDescription: "A peering, established from the dialing side: this cluster uses a peering token made by " +
			"the accepting cluster (`meshfed_peering_token` there, or `meshfed peering token`) to link to it. The " +
			"two clusters then exchange trust bundles and exported services. Creating the resource waits until the " +
			"link is `active`; destroying it deletes the peering on both sides, with its imported services and the " +
			"peer's trust bundle.\n\n" +
			"The token is a write-only argument: Terraform sends it once, when the peering is created, and never " +
			"stores it. A peering cannot change: a new `name` replaces it (with a new token).",
		Attributes: map[string]schema.Attribute{
			"id":   idAttribute("Name of the peering."),
			"name": nameAttribute("Local name of the peering (the name of the peer cluster, by convention)."),
			"peering_token_wo": schema.StringAttribute{
				MarkdownDescription: "The peering token from the accepting cluster, usually " +
					"`ephemeral.meshfed_peering_token.<name>.token`. Write-only: used to create the peering, never " +
					"stored. Required to create the peering; ignored afterwards (so it may be null once the peering " +
					"is established, as `meshfed_peering_token` returns then).",
				Optional:  true,
				Sensitive: true,
				WriteOnly: true,
			},
			"state": schema.StringAttribute{MarkdownDescription: peeringStatusDescriptions["state"], Computed: true},
			"peer_cluster": schema.StringAttribute{
				MarkdownDescription: peeringStatusDescriptions["peer_cluster"], Computed: true, PlanModifiers: keep,
			},
			"peer_trust_domain": schema.StringAttribute{
				MarkdownDescription: peeringStatusDescriptions["peer_trust_domain"], Computed: true, PlanModifiers: keep,
			},
			"peer_api_addresses": schema.ListAttribute{
				MarkdownDescription: peeringStatusDescriptions["peer_api_addresses"], Computed: true, ElementType: types.StringType,
				PlanModifiers: []planmodifier.List{listplanmodifier.UseStateForUnknown()},
			},
			"dialer": schema.BoolAttribute{
				MarkdownDescription: peeringStatusDescriptions["dialer"], Computed: true,
				PlanModifiers: []planmodifier.Bool{boolplanmodifier.UseStateForUnknown()},
			},
			"last_sync":         schema.StringAttribute{MarkdownDescription: peeringStatusDescriptions["last_sync"], Computed: true},
			"imported_services": schema.Int64Attribute{MarkdownDescription: peeringStatusDescriptions["imported_services"], Computed: true},
			"exported_services": schema.Int64Attribute{MarkdownDescription: peeringStatusDescriptions["exported_services"], Computed: true},
			"last_error":        schema.StringAttribute{MarkdownDescription: peeringStatusDescriptions["last_error"], Computed: true},
		},
		Blocks: map[string]schema.Block{
			"timeouts": timeouts.Block(ctx, timeouts.Opts{Create: true}),
		},
	}
}

// peeringStatusValue reads what a peering reports.
func peeringStatusValue(p *meshfedv1.Peering, d *diag.Diagnostics) peeringStatusModel {
	addrs, diags := types.ListValueFrom(context.Background(), types.StringType, nonNil(p.GetPeerApiAddresses()))
	d.Append(diags...)
	return peeringStatusModel{
		State:            enumValue(p.GetState()),
		PeerCluster:      types.StringValue(p.GetPeerCluster()),
		PeerTrustDomain:  types.StringValue(p.GetPeerTrustDomain()),
		PeerAPIAddresses: addrs,
		Dialer:           types.BoolValue(p.GetDialer()),
		LastSync:         timeValue(p.GetLastSync()),
		ImportedServices: types.Int64Value(int64(p.GetImportedServices())),
		ExportedServices: types.Int64Value(int64(p.GetExportedServices())),
		LastError:        types.StringValue(p.GetLastError()),
	}
}

func (m *peeringModel) read(p *meshfedv1.Peering, d *diag.Diagnostics) {
	m.ID = types.StringValue(p.GetMeta().GetName())
	m.Name = types.StringValue(p.GetMeta().GetName())
	m.PeeringTokenWO = types.StringNull()
	m.peeringStatusModel = peeringStatusValue(p, d)
}

func (r *peeringResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	if !req.State.Raw.IsNull() || req.Plan.Raw.IsNull() {
		return
	}
	var token types.String
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("peering_token_wo"), &token)...)
	if token.IsNull() {
		resp.Diagnostics.AddAttributeError(path.Root("peering_token_wo"), "Missing peering token",
			"A new peering needs a peering token from the accepting cluster (ephemeral meshfed_peering_token there, or "+
				"\"meshfed peering token --peer NAME\"). If meshfed_peering_token reports established = true, the "+
				"accepting cluster already has an established peering of that name: delete it there first.")
	}
}

func (r *peeringResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan, config peeringModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.Config.Get(ctx, &config)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	timeout, diags := plan.Timeouts.Create(ctx, defaultPeeringTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	name := plan.Name.ValueString()
	p, err := r.client.Peering.EstablishPeering(ctx, &meshfedv1.EstablishPeeringRequest{Peer: name, Token: config.PeeringTokenWO.ValueString()})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot establish the peering", err, peeringFields)
		return
	}
	// The peering exists from here on: record it even if it never becomes
	// active, so that Terraform deletes it (it is tainted).
	timeoutsValue := plan.Timeouts
	plan.read(p, &resp.Diagnostics)
	plan.Timeouts = timeoutsValue
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)

	// The dialer's leader connects in the background: wait for the link.
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for p.GetState() != meshfedv1.PeeringState_PEERING_STATE_ACTIVE {
		select {
		case <-ctx.Done():
			resp.Diagnostics.AddError("Peering did not become active",
				fmt.Sprintf("The peering %q is %s after %s; last error: %q. The peering was created and will be "+
					"replaced on the next apply; check that the accepting cluster's API addresses in the token are "+
					"reachable from this cluster.", name, enumValue(p.GetState()).ValueString(), timeout, p.GetLastError()))
			return
		case <-tick.C:
		}
		next, err := r.client.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: name})
		if err != nil {
			if ctx.Err() == nil {
				addAPIError(&resp.Diagnostics, "Cannot read the peering", err, peeringFields)
				return
			}
			continue
		}
		p = next
	}
	plan.read(p, &resp.Diagnostics)
	plan.Timeouts = timeoutsValue
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *peeringResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state peeringModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	p, err := r.client.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: state.Name.ValueString()})
	if isNotFound(err) {
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the peering", err, peeringFields)
		return
	}
	to := state.Timeouts
	state.read(p, &resp.Diagnostics)
	state.Timeouts = to
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

// Update only changes timeouts: everything else replaces the peering.
func (r *peeringResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan peeringModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	p, err := r.client.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: plan.Name.ValueString()})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the peering", err, peeringFields)
		return
	}
	to := plan.Timeouts
	plan.read(p, &resp.Diagnostics)
	plan.Timeouts = to
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *peeringResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state peeringModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	name := state.Name.ValueString()
	_, err := r.client.Peering.DeletePeering(ctx, &meshfedv1.DeleteRequest{Name: name})
	if err != nil {
		if !isNotFound(err) {
			addAPIError(&resp.Diagnostics, "Cannot delete the peering", err, peeringFields)
		}
		return
	}
	// The server keeps the peering, as deleting, until the peer cluster has
	// heard of the deletion, which takes a moment over a live link. If the
	// link is down, a second delete removes it here anyway, so that the
	// name can be used again; the peer then keeps its side.
	if waitPeeringGone(ctx, r.client.Peering, name, peeringDeleteWait) == nil {
		return
	}
	if _, err := r.client.Peering.DeletePeering(ctx, &meshfedv1.DeleteRequest{Name: name}); err != nil && !isNotFound(err) {
		addAPIError(&resp.Diagnostics, "Cannot delete the peering", err, peeringFields)
		return
	}
	resp.Diagnostics.AddWarning("The peer cluster was not told of the deletion",
		fmt.Sprintf("The link to the peer of peering %q was down, so the peer cluster still has its side of the peering. Delete it there too (meshfed peering delete).", name))
}

// peeringDeleteWait is how long Delete waits for the peer to confirm.
const peeringDeleteWait = 15 * time.Second

// waitPeeringGone polls until the peering no longer exists.
func waitPeeringGone(ctx context.Context, c meshfedv1.PeeringServiceClient, name string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		_, err := c.GetPeering(ctx, &meshfedv1.GetRequest{Name: name})
		if isNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (r *peeringResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), req.ID)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("name"), req.ID)...)
}
