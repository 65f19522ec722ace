package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ resource.Resource                = (*caResource)(nil)
	_ resource.ResourceWithConfigure   = (*caResource)(nil)
	_ resource.ResourceWithImportState = (*caResource)(nil)
)

// Defaults and bounds of the CA lifetimes (docs/ca.md).
const (
	defaultRotationTimeout = 10 * time.Minute
	minSVIDTTL             = 10 * time.Second
	minIntermediateTTL     = time.Hour
	maxRootTTL             = 100 * 365 * 24 * time.Hour
)

// NewCAResource is the meshfed_ca resource.
func NewCAResource() resource.Resource { return &caResource{} }

type caResource struct{ resourceBase }

type caModel struct {
	ID                types.String   `tfsdk:"id"`
	KeyAlgorithm      types.String   `tfsdk:"key_algorithm"`
	RootTTL           types.String   `tfsdk:"root_ttl"`
	IntermediateTTL   types.String   `tfsdk:"intermediate_ttl"`
	SVIDTTL           types.String   `tfsdk:"svid_ttl"`
	Rotation          types.String   `tfsdk:"rotation"`
	TrustDomain       types.String   `tfsdk:"trust_domain"`
	ActiveAuthorityID types.String   `tfsdk:"active_authority_id"`
	Version           types.Int64    `tfsdk:"version"`
	Timeouts          timeouts.Value `tfsdk:"timeouts"`
}

var caFields = fieldMap{root: "settings"}

var keyAlgorithmChoices = enumChoices(meshfedv1.KeyAlgorithm(0).Descriptor())

func (r *caResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_ca"
}

func (r *caResource) Schema(ctx context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "The settings of the cluster's certificate authority, and its rotation. A cluster has " +
			"one CA: creating this resource takes over its settings, destroying it restores the defaults. Declare it " +
			"at most once per cluster.\n\n" +
			"New lifetimes apply to what is issued next: SVIDs at once, intermediates at their next renewal, the key " +
			"algorithm and the root lifetime at the next rotation.\n\n" +
			"**Rotation.** `rotation` is any string the operator changes to rotate the CA (a date, a counter). When it " +
			"is set or changes, apply runs a whole rotation, like `meshfed ca rotate`: *prepare* (a new root and " +
			"intermediate, cross-signed, added to the trust bundle), *activate* (once every bundle watcher and peer " +
			"has the new root, new certificates are signed by it) and *retire* (once nothing presents a certificate " +
			"of the old authority, its root leaves the bundle). Apply waits for the whole sequence, within the " +
			"`update` (or `create`) timeout; an interrupted rotation resumes where it stopped on the next apply. " +
			"Removing `rotation` does not rotate. After a rotation, clients must trust the new root: a `ca_file` " +
			"pointing at a server's `ca.pem` follows it, a copy must be refreshed (`meshfed_trust_bundle`).",
		Attributes: map[string]schema.Attribute{
			"id": idAttribute("Always `global`."),
			"key_algorithm": schema.StringAttribute{
				MarkdownDescription: "Key algorithm of new CA keys: " + quotedList(keyAlgorithmChoices) + ". Defaults to `ecdsa-p256`.",
				Optional:            true,
				Computed:            true,
				Default:             stringdefault.StaticString("ecdsa-p256"),
				Validators:          []validator.String{stringvalidator.OneOf(keyAlgorithmChoices...)},
			},
			"root_ttl": schema.StringAttribute{
				MarkdownDescription: "Lifetime of new roots, at least twice `intermediate_ttl`. Defaults to `87600h` (10 years).",
				Optional:            true,
				Computed:            true,
				Default:             stringdefault.StaticString("87600h"),
				Validators:          []validator.String{durationBetween(2*minIntermediateTTL, maxRootTTL)},
			},
			"intermediate_ttl": schema.StringAttribute{
				MarkdownDescription: "Lifetime of new intermediates, from `1h` to half of `root_ttl`. Defaults to `720h` (30 days).",
				Optional:            true,
				Computed:            true,
				Default:             stringdefault.StaticString("720h"),
				Validators:          []validator.String{durationBetween(minIntermediateTTL, maxRootTTL/2)},
			},
			"svid_ttl": schema.StringAttribute{
				MarkdownDescription: "Lifetime of new workload SVIDs, from `10s` to half of `intermediate_ttl`. Defaults to `1h`.",
				Optional:            true,
				Computed:            true,
				Default:             stringdefault.StaticString("1h"),
				Validators:          []validator.String{durationBetween(minSVIDTTL, maxRootTTL/4)},
			},
			"rotation": schema.StringAttribute{
				MarkdownDescription: "Any value; setting or changing it rotates the CA (see above). At most 256 bytes.",
				Optional:            true,
				Validators:          []validator.String{stringvalidator.LengthBetween(1, 256)},
			},
			"trust_domain": schema.StringAttribute{
				MarkdownDescription: "The cluster's SPIFFE trust domain.",
				Computed:            true,
				PlanModifiers:       []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"active_authority_id": schema.StringAttribute{
				MarkdownDescription: "ID of the authority that signs new certificates; a rotation changes it.",
				Computed:            true,
				PlanModifiers:       []planmodifier.String{activeAuthorityPlan{}},
			},
			"version": versionAttribute(),
		},
		Blocks: map[string]schema.Block{
			"timeouts": timeouts.Block(ctx, timeouts.Opts{Create: true, Update: true}),
		},
	}
}

// activeAuthorityPlan keeps the active authority unless the plan rotates.
type activeAuthorityPlan struct{}

func (activeAuthorityPlan) Description(context.Context) string {
	return "unknown when rotation changes, else the prior value"
}
func (m activeAuthorityPlan) MarkdownDescription(ctx context.Context) string {
	return m.Description(ctx)
}

func (activeAuthorityPlan) PlanModifyString(ctx context.Context, req planmodifier.StringRequest, resp *planmodifier.StringResponse) {
	if req.StateValue.IsNull() {
		return
	}
	var planned, prior types.String
	resp.Diagnostics.Append(req.Plan.GetAttribute(ctx, path.Root("rotation"), &planned)...)
	resp.Diagnostics.Append(req.State.GetAttribute(ctx, path.Root("rotation"), &prior)...)
	if !rotates(prior.ValueString(), planned) {
		resp.PlanValue = req.StateValue
	}
}

// rotates says whether changing rotation from prior to planned starts a
// rotation: setting it or changing it does, removing it does not.
func rotates(prior string, planned types.String) bool {
	if planned.IsUnknown() {
		return true
	}
	return !planned.IsNull() && planned.ValueString() != prior
}

func (m *caModel) toAPI(rotation string) *meshfedv1.CASettings {
	return &meshfedv1.CASettings{
		Meta:            &meshfedv1.Meta{Name: singletonName},
		KeyAlgorithm:    meshfedv1.KeyAlgorithm(enumNumber(meshfedv1.KeyAlgorithm(0).Descriptor(), m.KeyAlgorithm.ValueString())),
		RootTtl:         durationProto(m.RootTTL),
		IntermediateTtl: durationProto(m.IntermediateTTL),
		SvidTtl:         durationProto(m.SVIDTTL),
		Rotation:        rotation,
	}
}

func (m *caModel) fromAPI(s *meshfedv1.CASettings, st *meshfedv1.CAStatus) {
	m.ID = types.StringValue(singletonName)
	m.KeyAlgorithm = enumValue(s.GetKeyAlgorithm())
	m.RootTTL = durationValue(m.RootTTL, s.GetRootTtl())
	m.IntermediateTTL = durationValue(m.IntermediateTTL, s.GetIntermediateTtl())
	m.SVIDTTL = durationValue(m.SVIDTTL, s.GetSvidTtl())
	m.Rotation = stringValue(m.Rotation, s.GetRotation())
	m.Version = types.Int64Value(int64(s.GetMeta().GetVersion()))
	if st != nil {
		m.TrustDomain = types.StringValue(st.GetTrustDomain())
		m.ActiveAuthorityID = types.StringValue("")
		for _, a := range st.GetAuthorities() {
			if a.GetState() == meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE {
				m.ActiveAuthorityID = types.StringValue(a.GetId())
			}
		}
	}
}

// apply writes the settings and, when the plan asks for it, rotates. The
// new rotation value is stored only after the rotation succeeded, so that a
// failed or interrupted rotation shows as a change again and is resumed by
// the next apply.
func (r *caResource) apply(ctx context.Context, plan *caModel, priorRotation string, expected uint64, timeout time.Duration, diags *diag.Diagnostics) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rotate := rotates(priorRotation, plan.Rotation)
	stored := plan.Rotation.ValueString()
	if rotate {
		stored = priorRotation
	}
	out, err := r.client.CA.UpdateCASettings(ctx, &meshfedv1.UpdateCASettingsRequest{Settings: plan.toAPI(stored), ExpectedVersion: expected})
	if err != nil {
		addAPIError(diags, "Cannot update the CA settings", err, caFields)
		return
	}
	if rotate {
		if err := r.rotate(ctx); err != nil {
			addAPIError(diags, "CA rotation failed", err, caFields)
			return
		}
		out, err = r.client.CA.UpdateCASettings(ctx, &meshfedv1.UpdateCASettingsRequest{Settings: plan.toAPI(plan.Rotation.ValueString()), ExpectedVersion: out.GetMeta().GetVersion()})
		if err != nil {
			addAPIError(diags, "Cannot record the CA rotation", err, caFields)
			return
		}
	}
	st, err := r.client.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
	if err != nil {
		addAPIError(diags, "Cannot read the CA status", err, caFields)
		return
	}
	plan.fromAPI(out, st)
}

// rotate runs a whole rotation through the RotateCA stream and waits for
// it to finish. A rotation is resumable (its state is replicated): when the
// stream breaks because the leader changed, it is asked for again and goes
// on from where it stands.
func (r *caResource) rotate(ctx context.Context) error {
	backoff := 500 * time.Millisecond
	for {
		err := r.rotateOnce(ctx)
		if err == nil || ctx.Err() != nil || !isUnavailable(err) {
			return err
		}
		tflog.Warn(ctx, "cluster unavailable during the CA rotation; retrying", map[string]any{"error": err.Error()})
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (r *caResource) rotateOnce(ctx context.Context) error {
	req := &meshfedv1.RotateCARequest{}
	if dl, ok := ctx.Deadline(); ok {
		req.Timeout = durationpb.New(time.Until(dl))
	}
	stream, err := r.client.CA.RotateCA(ctx, req)
	if err != nil {
		return err
	}
	var last *meshfedv1.RotateCAProgress
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if last == nil || !last.GetDone() {
				return fmt.Errorf("the server ended the rotation without reporting it done")
			}
			return nil
		}
		if err != nil {
			return err
		}
		last = p
		tflog.Info(ctx, "CA rotation: "+p.GetMessage(), map[string]any{"step": enumValue(p.GetStep()).ValueString()})
	}
}

func (r *caResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan caModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	timeout, diags := plan.Timeouts.Create(ctx, defaultRotationTimeout)
	resp.Diagnostics.Append(diags...)
	cur, err := r.client.CA.GetCASettings(ctx, &meshfedv1.GetCASettingsRequest{})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the CA settings", err, caFields)
		return
	}
	if resp.Diagnostics.HasError() {
		return
	}
	r.apply(ctx, &plan, cur.GetRotation(), cur.GetMeta().GetVersion(), timeout, &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *caResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state caModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	s, err := r.client.CA.GetCASettings(ctx, &meshfedv1.GetCASettingsRequest{})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the CA settings", err, caFields)
		return
	}
	st, err := r.client.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the CA status", err, caFields)
		return
	}
	state.fromAPI(s, st)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *caResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state caModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	timeout, diags := plan.Timeouts.Update(ctx, defaultRotationTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	r.apply(ctx, &plan, state.Rotation.ValueString(), uint64(state.Version.ValueInt64()), timeout, &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// Delete restores the default settings; it does not rotate.
func (r *caResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state caModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	_, err := r.client.CA.UpdateCASettings(ctx, &meshfedv1.UpdateCASettingsRequest{
		Settings: &meshfedv1.CASettings{Meta: &meshfedv1.Meta{Name: singletonName}}, ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot reset the CA settings", err, caFields)
	}
}

func (r *caResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if req.ID != singletonName {
		resp.Diagnostics.AddError("Invalid import ID", fmt.Sprintf("The CA is imported with the ID %q, not %q.", singletonName, req.ID))
		return
	}
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), singletonName)...)
}
