package provider

import (
	"context"
	"fmt"
	"regexp"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func identityConfig(ttl, dnsNames string) string {
	return westConfig(fmt.Sprintf(`
resource "meshfed_identity" "test" {
  name            = "acc-payments"
  namespace       = "acc-identity"
  service_account = "payments-sa"
  svid_ttl        = %q
  dns_names       = %s
}
`, ttl, dnsNames))
}

func TestAccIdentity(t *testing.T) {
	t.Parallel()
	const addr = "meshfed_identity.test"
	get := func(ctx context.Context) (*meshfedv1.Identity, error) {
		return westAPI.Identity.GetIdentity(ctx, &meshfedv1.GetRequest{Namespace: "acc-identity", Name: "acc-payments"})
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6Providers,
		CheckDestroy: checkGone("identity", func(ctx context.Context) error {
			_, err := get(ctx)
			return err
		}),
		Steps: []resource.TestStep{
			{
				Config: identityConfig("15m", `["payments.acc-identity.svc", "payments.example.com"]`),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("spiffe_id"), knownvalue.StringExact("spiffe://west.mesh/ns/acc-identity/sa/payments-sa")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("dns_names"), knownvalue.SetSizeExact(2)),
				},
			},
			{ResourceName: addr, ImportState: true, ImportStateId: "acc-identity/acc-payments", ImportStateVerify: true},
			{
				Config: identityConfig("900s", `["payments.example.com"]`),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("dns_names"), knownvalue.SetExact([]knownvalue.Check{knownvalue.StringExact("payments.example.com")})),
				},
			},
			{
				PreConfig: func() {
					ctx := ctxT(t)
					i, err := get(ctx)
					if err != nil {
						t.Fatal(err)
					}
					i.DnsNames = append(i.DnsNames, "rogue.example.com")
					if _, err := westAPI.Identity.UpdateIdentity(ctx, &meshfedv1.UpdateIdentityRequest{Identity: i}); err != nil {
						t.Fatal(err)
					}
				},
				Config: identityConfig("900s", `["payments.example.com"]`),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("dns_names"), knownvalue.SetSizeExact(1)),
				},
			},
		},
	})
}

func tokenConfig(description string) string {
	return westConfig(fmt.Sprintf(`
resource "meshfed_token" "dashboards" {
  kind        = "read"
  description = %q
  ttl         = "720h"
  labels      = { team = "observability" }
}

resource "meshfed_token" "vm_join" {
  kind      = "workload-join"
  spiffe_id = "spiffe://west.mesh/ns/acc-token/sa/batch"
  max_uses  = 3
  ttl       = "10m"
}
`, description))
}

func TestAccToken(t *testing.T) {
	t.Parallel()
	const addr = "meshfed_token.dashboards"
	var accessor string
	get := func(ctx context.Context) (*meshfedv1.Token, error) {
		return westAPI.Tokens.GetToken(ctx, &meshfedv1.GetRequest{Name: accessor})
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6Providers,
		CheckDestroy: checkGone("token", func(ctx context.Context) error {
			_, err := get(ctx)
			return err
		}),
		Steps: []resource.TestStep{
			{
				Config: tokenConfig("Grafana"),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("id"), knownvalue.StringRegexp(regexp.MustCompile(`^tok-`))),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("expire_time"), knownvalue.NotNull()),
					statecheck.ExpectKnownValue("meshfed_token.vm_join", tfjsonpath.New("max_uses"), knownvalue.Int64Exact(3)),
					noSecrets{},
				},
				Check: func(s *terraform.State) error {
					accessor = s.RootModule().Resources[addr].Primary.ID
					return nil
				},
			},
			{ResourceName: addr, ImportState: true, ImportStateVerify: true, ImportStateVerifyIgnore: []string{"ttl"}},
			{
				Config: tokenConfig("Grafana dashboards"),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("description"), knownvalue.StringExact("Grafana dashboards")),
					noSecrets{},
				},
			},
			{
				PreConfig: func() {
					ctx := ctxT(t)
					tok, err := get(ctx)
					if err != nil {
						t.Fatal(err)
					}
					tok.Description = "changed by hand"
					if _, err := westAPI.Tokens.UpdateToken(ctx, &meshfedv1.UpdateTokenRequest{Token: tok}); err != nil {
						t.Fatal(err)
					}
				},
				Config: tokenConfig("Grafana dashboards"),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("description"), knownvalue.StringExact("Grafana dashboards")),
				},
			},
		},
	})
}

// TestAccWorkloadJoinToken feeds the ephemeral token into the echo
// provider to look at it, and checks the token works as the server says.
func TestAccWorkloadJoinToken(t *testing.T) {
	t.Parallel()
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6ProvidersWithEcho,
		Steps: []resource.TestStep{{
			Config: westConfig(`
ephemeral "meshfed_workload_join_token" "vm" {
  spiffe_id   = "spiffe://west.mesh/ns/acc-join/sa/vm"
  ttl         = "5m"
  description = "acceptance test"
}

provider "echo" {
  data = ephemeral.meshfed_workload_join_token.vm
}

resource "echo" "token" {}
`),
			ConfigStateChecks: []statecheck.StateCheck{
				statecheck.ExpectKnownValue("echo.token", tfjsonpath.New("data").AtMapKey("token"), knownvalue.StringRegexp(regexp.MustCompile(`^mfd_`))),
				statecheck.ExpectKnownValue("echo.token", tfjsonpath.New("data").AtMapKey("accessor_id"), knownvalue.StringRegexp(regexp.MustCompile(`^tok-`))),
			},
			Check: func(s *terraform.State) error {
				id := s.RootModule().Resources["echo.token"].Primary.Attributes["data.accessor_id"]
				tok, err := westAPI.Tokens.GetToken(context.Background(), &meshfedv1.GetRequest{Name: id})
				if err != nil {
					return err
				}
				if tok.GetKind() != meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN || tok.GetMaxUses() != 1 || tok.GetSpiffeId() != "spiffe://west.mesh/ns/acc-join/sa/vm" {
					return fmt.Errorf("token %v", tok)
				}
				return nil
			},
		}},
	})
}

func TestAccDataSourcesCluster(t *testing.T) {
	t.Parallel()
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6Providers,
		Steps: []resource.TestStep{{
			Config: westConfig(`
data "meshfed_cluster" "this" {}
data "meshfed_trust_bundle" "this" {}
`),
			ConfigStateChecks: []statecheck.StateCheck{
				statecheck.ExpectKnownValue("data.meshfed_cluster.this", tfjsonpath.New("name"), knownvalue.StringExact("west")),
				statecheck.ExpectKnownValue("data.meshfed_cluster.this", tfjsonpath.New("trust_domain"), knownvalue.StringExact("west.mesh")),
				statecheck.ExpectKnownValue("data.meshfed_cluster.this", tfjsonpath.New("members"), knownvalue.ListSizeExact(1)),
				statecheck.ExpectKnownValue("data.meshfed_trust_bundle.this", tfjsonpath.New("trust_domain"), knownvalue.StringExact("west.mesh")),
				statecheck.ExpectKnownValue("data.meshfed_trust_bundle.this", tfjsonpath.New("roots_pem"), knownvalue.ListSizeExact(1)),
				statecheck.ExpectKnownValue("data.meshfed_trust_bundle.this", tfjsonpath.New("bundle_pem"), knownvalue.StringRegexp(regexp.MustCompile(`^-----BEGIN CERTIFICATE-----`))),
			},
		}},
	})
}
