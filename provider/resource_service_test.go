package provider

import (
	"context"
	"fmt"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func serviceConfig(port int, labels string) string {
	return westConfig(fmt.Sprintf(`
resource "meshfed_service" "test" {
  name      = "acc-web"
  namespace = "acc-service"
  port      = %d
  protocol  = "http"
  labels    = %s
}
`, port, labels))
}

func TestAccService(t *testing.T) {
	t.Parallel()
	const addr = "meshfed_service.test"
	get := func(ctx context.Context) (*meshfedv1.Service, error) {
		return westAPI.Catalog.GetService(ctx, &meshfedv1.GetRequest{Namespace: "acc-service", Name: "acc-web"})
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6Providers,
		CheckDestroy: checkGone("service acc-service/acc-web", func(ctx context.Context) error {
			_, err := get(ctx)
			return err
		}),
		Steps: []resource.TestStep{
			{
				Config: serviceConfig(8080, `{ team = "web" }`),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("id"), knownvalue.StringExact("acc-service/acc-web")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("service_account"), knownvalue.StringExact("acc-web")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("port"), knownvalue.Int64Exact(8080)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("labels"), knownvalue.MapExact(map[string]knownvalue.Check{"team": knownvalue.StringExact("web")})),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("version"), knownvalue.NotNull()),
				},
			},
			{
				ResourceName:      addr,
				ImportState:       true,
				ImportStateId:     "acc-service/acc-web",
				ImportStateVerify: true,
			},
			{
				Config: serviceConfig(9090, `{ team = "web", tier = "frontend" }`),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("port"), knownvalue.Int64Exact(9090)),
				},
			},
			{
				// Drift: the port changes out of band; the plan puts it back.
				PreConfig: func() {
					ctx := ctxT(t)
					s, err := get(ctx)
					if err != nil {
						t.Fatal(err)
					}
					s.Port = 7000
					if _, err := westAPI.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{Service: s}); err != nil {
						t.Fatal(err)
					}
				},
				Config: serviceConfig(9090, `{ team = "web", tier = "frontend" }`),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				Check: func(*terraform.State) error {
					s, err := get(context.Background())
					if err != nil {
						return err
					}
					if s.GetPort() != 9090 {
						return fmt.Errorf("port %d after apply, want 9090", s.GetPort())
					}
					return nil
				},
			},
		},
	})
}
