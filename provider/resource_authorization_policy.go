package provider

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework-validators/listvalidator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

var (
	_ resource.Resource                = (*authorizationPolicyResource)(nil)
	_ resource.ResourceWithConfigure   = (*authorizationPolicyResource)(nil)
	_ resource.ResourceWithImportState = (*authorizationPolicyResource)(nil)
)

// NewAuthorizationPolicyResource is the meshfed_authorization_policy resource.
func NewAuthorizationPolicyResource() resource.Resource { return &authorizationPolicyResource{} }

type authorizationPolicyResource struct{ resourceBase }

type authorizationPolicyModel struct {
	ID            types.String             `tfsdk:"id"`
	Name          types.String             `tfsdk:"name"`
	Namespace     types.String             `tfsdk:"namespace"`
	Destination   types.String             `tfsdk:"destination"`
	Action        types.String             `tfsdk:"action"`
	Rules         []authorizationRuleModel `tfsdk:"rules"`
	Labels        types.Map                `tfsdk:"labels"`
	Version       types.Int64              `tfsdk:"version"`
	CreateVersion types.Int64              `tfsdk:"create_version"`
}

type authorizationRuleModel struct {
	Principals types.List `tfsdk:"principals"`
	Methods    types.List `tfsdk:"methods"`
	Paths      types.List `tfsdk:"paths"`
}

var authorizationPolicyFields = fieldMap{root: "policy"}

// httpMethods are the methods a rule may name (the server's list).
var httpMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

var actionChoices = enumChoices(meshfedv1.AuthorizationAction(0).Descriptor())

func (r *authorizationPolicyResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_authorization_policy"
}

func (r *authorizationPolicyResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "An authorization policy allows or denies callers of a destination service, by the " +
			"SPIFFE ID they present over mutual TLS and, for HTTP and gRPC, by method and path. `deny` policies are " +
			"evaluated before `allow` ones; a call that no policy allows gets the mesh settings' " +
			"`default_authorization_action` (`deny` unless changed: zero trust).",
		Attributes: map[string]schema.Attribute{
			"id":        idAttribute("`namespace/name` of the policy."),
			"name":      nameAttribute("Name of the policy."),
			"namespace": namespaceAttribute(),
			"destination": schema.StringAttribute{
				MarkdownDescription: "Name of the destination service in the policy's namespace, or `*` for every service of the namespace.",
				Required:            true,
				Validators:          []validator.String{stringvalidator.Any(stringvalidator.OneOf("*"), dnsLabel())},
			},
			"action": schema.StringAttribute{
				MarkdownDescription: "What a matching rule does: " + quotedList(actionChoices) + ".",
				Required:            true,
				Validators:          []validator.String{stringvalidator.OneOf(actionChoices...)},
			},
			"rules": schema.ListNestedAttribute{
				MarkdownDescription: "Rules matching callers and requests; a call matching any rule gets the policy's action (1-100 rules).",
				Required:            true,
				Validators:          []validator.List{listvalidator.SizeBetween(1, 100)},
				NestedObject: schema.NestedAttributeObject{
					Attributes: map[string]schema.Attribute{
						"principals": schema.ListAttribute{
							MarkdownDescription: "SPIFFE IDs of callers. An ID may end in `/*` to match every ID below a " +
								"path (`spiffe://east.mesh/ns/shop/*`) and may name a peer cluster's trust domain; `*` " +
								"matches any authenticated caller. At least one.",
							ElementType: types.StringType,
							Required:    true,
							Validators: []validator.List{
								listvalidator.SizeBetween(1, 100),
								listvalidator.UniqueValues(),
								listvalidator.ValueStringsAre(principal()),
							},
						},
						"methods": schema.ListAttribute{
							MarkdownDescription: "HTTP methods (" + quotedList(httpMethods) + "); unset matches any.",
							ElementType:         types.StringType,
							Optional:            true,
							Validators: []validator.List{
								listvalidator.SizeAtMost(16),
								listvalidator.ValueStringsAre(stringvalidator.OneOf(httpMethods...)),
							},
						},
						"paths": schema.ListAttribute{
							MarkdownDescription: "Request paths; a path ending in `*` is a prefix. Unset matches any.",
							ElementType:         types.StringType,
							Optional:            true,
							Validators: []validator.List{
								listvalidator.SizeAtMost(100),
								listvalidator.ValueStringsAre(requestPath()),
							},
						},
					},
				},
			},
			"labels":         labelsAttribute(),
			"version":        versionAttribute(),
			"create_version": createVersionAttribute(),
		},
	}
}

func (m *authorizationPolicyModel) toAPI(ctx context.Context, d *diag.Diagnostics) *meshfedv1.AuthorizationPolicy {
	p := &meshfedv1.AuthorizationPolicy{
		Meta:        &meshfedv1.Meta{Name: m.Name.ValueString(), Namespace: m.Namespace.ValueString(), Labels: labelsMap(ctx, m.Labels, d)},
		Destination: m.Destination.ValueString(),
		Action:      meshfedv1.AuthorizationAction(enumNumber(meshfedv1.AuthorizationAction(0).Descriptor(), m.Action.ValueString())),
	}
	for _, r := range m.Rules {
		p.Rules = append(p.Rules, &meshfedv1.AuthorizationRule{
			Principals: stringList(ctx, r.Principals, d),
			Methods:    stringList(ctx, r.Methods, d),
			Paths:      stringList(ctx, r.Paths, d),
		})
	}
	return p
}

func (m *authorizationPolicyModel) fromAPI(p *meshfedv1.AuthorizationPolicy, d *diag.Diagnostics) {
	meta := p.GetMeta()
	m.ID = types.StringValue(namespacedID(meta))
	m.Name = types.StringValue(meta.GetName())
	m.Namespace = types.StringValue(meta.GetNamespace())
	m.Destination = types.StringValue(p.GetDestination())
	m.Action = enumValue(p.GetAction())
	rules := make([]authorizationRuleModel, len(p.GetRules()))
	for i, r := range p.GetRules() {
		prior := authorizationRuleModel{Principals: types.ListNull(types.StringType), Methods: types.ListNull(types.StringType), Paths: types.ListNull(types.StringType)}
		if i < len(m.Rules) {
			prior = m.Rules[i]
		}
		rules[i] = authorizationRuleModel{
			Principals: listValue(prior.Principals, r.GetPrincipals(), d),
			Methods:    listValue(prior.Methods, r.GetMethods(), d),
			Paths:      listValue(prior.Paths, r.GetPaths(), d),
		}
	}
	m.Rules = rules
	m.Labels = labelsValue(m.Labels, meta.GetLabels(), d)
	m.Version = types.Int64Value(int64(meta.GetVersion()))
	m.CreateVersion = types.Int64Value(int64(meta.GetCreateVersion()))
}

func (r *authorizationPolicyResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan authorizationPolicyModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Policy.CreateAuthorizationPolicy(ctx, &meshfedv1.CreateAuthorizationPolicyRequest{Policy: plan.toAPI(ctx, &resp.Diagnostics)})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot create the authorization policy", err, authorizationPolicyFields)
		return
	}
	plan.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *authorizationPolicyResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state authorizationPolicyModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Policy.GetAuthorizationPolicy(ctx, &meshfedv1.GetRequest{Namespace: state.Namespace.ValueString(), Name: state.Name.ValueString()})
	if isNotFound(err) {
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot read the authorization policy", err, authorizationPolicyFields)
		return
	}
	state.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *authorizationPolicyResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state authorizationPolicyModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	out, err := r.client.Policy.UpdateAuthorizationPolicy(ctx, &meshfedv1.UpdateAuthorizationPolicyRequest{
		Policy: plan.toAPI(ctx, &resp.Diagnostics), ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil {
		addAPIError(&resp.Diagnostics, "Cannot update the authorization policy", err, authorizationPolicyFields)
		return
	}
	plan.fromAPI(out, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *authorizationPolicyResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state authorizationPolicyModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() || !r.ready(&resp.Diagnostics) {
		return
	}
	_, err := r.client.Policy.DeleteAuthorizationPolicy(ctx, &meshfedv1.DeleteRequest{
		Namespace: state.Namespace.ValueString(), Name: state.Name.ValueString(), ExpectedVersion: uint64(state.Version.ValueInt64()),
	})
	if err != nil && !isNotFound(err) {
		addAPIError(&resp.Diagnostics, "Cannot delete the authorization policy", err, authorizationPolicyFields)
	}
}

func (r *authorizationPolicyResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	importNamespaced(ctx, req, resp)
}
