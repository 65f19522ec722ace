package provider

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/ephemeral"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

// defaultNamespace is the namespace of namespaced resources that name none.
const defaultNamespace = "default"

// clientFrom takes the client the provider's Configure handed over. Before
// the provider is configured (validation), data is nil and so is the client.
func clientFrom(data any, diags *diag.Diagnostics) *client.Client {
	if data == nil {
		return nil
	}
	c, ok := data.(*client.Client)
	if !ok {
		diags.AddError("Unexpected provider data", fmt.Sprintf("expected *client.Client, got %T", data))
		return nil
	}
	return c
}

// resourceBase holds the client of a resource.
type resourceBase struct{ client *client.Client }

func (b *resourceBase) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	b.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

// ready reports whether the resource can call the API.
func (b *resourceBase) ready(diags *diag.Diagnostics) bool {
	if b.client == nil {
		notConfigured(diags)
		return false
	}
	return true
}

type dataSourceBase struct{ client *client.Client }

func (b *dataSourceBase) Configure(_ context.Context, req datasource.ConfigureRequest, resp *datasource.ConfigureResponse) {
	b.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

func (b *dataSourceBase) ready(diags *diag.Diagnostics) bool {
	if b.client == nil {
		notConfigured(diags)
		return false
	}
	return true
}

type ephemeralBase struct{ client *client.Client }

func (b *ephemeralBase) Configure(_ context.Context, req ephemeral.ConfigureRequest, resp *ephemeral.ConfigureResponse) {
	b.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

func (b *ephemeralBase) ready(diags *diag.Diagnostics) bool {
	if b.client == nil {
		notConfigured(diags)
		return false
	}
	return true
}

// Attributes shared by the resources.

func idAttribute(desc string) schema.StringAttribute {
	return schema.StringAttribute{
		MarkdownDescription: desc,
		Computed:            true,
		PlanModifiers:       []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
	}
}

func nameAttribute(desc string) schema.StringAttribute {
	return schema.StringAttribute{
		MarkdownDescription: desc + " A DNS label: 1-63 lower case letters, digits and `-`, starting with a letter. Changing it replaces the resource.",
		Required:            true,
		Validators:          []validator.String{dnsLabel()},
		PlanModifiers:       []planmodifier.String{stringplanmodifier.RequiresReplace()},
	}
}

func namespaceAttribute() schema.StringAttribute {
	return schema.StringAttribute{
		MarkdownDescription: "Namespace of the resource (a DNS label). Defaults to `default`. Changing it replaces the resource.",
		Optional:            true,
		Computed:            true,
		Default:             stringdefault.StaticString(defaultNamespace),
		Validators:          []validator.String{dnsLabel()},
		PlanModifiers:       []planmodifier.String{stringplanmodifier.RequiresReplace()},
	}
}

func labelsAttribute() schema.MapAttribute {
	return schema.MapAttribute{
		MarkdownDescription: "Free-form labels (Kubernetes label syntax, at most 64).",
		ElementType:         types.StringType,
		Optional:            true,
		Validators:          labelsValidators(),
	}
}

// versionAttribute is meta.version: the Raft index of the last change,
// sent back as expected_version so that an update or delete applies only
// to the object Terraform last read (compare-and-swap).
func versionAttribute() schema.Int64Attribute {
	return schema.Int64Attribute{
		MarkdownDescription: "Raft index of the last change to the object. Updates and deletes send it as " +
			"`expected_version`, so they apply only to the object as Terraform last read it.",
		Computed: true,
	}
}

// createVersionAttribute is meta.create_version.
func createVersionAttribute() schema.Int64Attribute {
	return schema.Int64Attribute{
		MarkdownDescription: "Raft index at which the object was created.",
		Computed:            true,
		PlanModifiers:       []planmodifier.Int64{int64planmodifier.UseStateForUnknown()},
	}
}

// namespacedID is the ID of a namespaced resource: "namespace/name".
func namespacedID(m *meshfedv1.Meta) string {
	return m.GetNamespace() + "/" + m.GetName()
}

// importNamespaced reads an import ID "namespace/name" (or "name" in the
// default namespace) into the namespace and name attributes.
func importNamespaced(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	ns, name, ok := strings.Cut(req.ID, "/")
	if !ok {
		ns, name = defaultNamespace, req.ID
	}
	if ns == "" || name == "" || strings.Contains(name, "/") {
		resp.Diagnostics.AddError("Invalid import ID",
			fmt.Sprintf("The import ID %q must be NAMESPACE/NAME, or NAME in the namespace %q.", req.ID, defaultNamespace))
		return
	}
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), ns+"/"+name)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("namespace"), ns)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("name"), name)...)
}
