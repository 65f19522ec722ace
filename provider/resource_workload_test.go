package provider

import (
	"context"
	"fmt"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func workloadConfig(address, zone string) string {
	return westConfig(fmt.Sprintf(`
resource "meshfed_service" "db" {
  name      = "acc-db"
  namespace = "acc-workload"
  port      = 5432
  protocol  = "tcp"
  service_account = "database"
}

resource "meshfed_workload" "test" {
  name          = "acc-db-vm1"
  namespace     = meshfed_service.db.namespace
  service       = meshfed_service.db.name
  address       = %q
  port          = 15443
  version_label = "v1"
  health        = "healthy"
  locality = {
    region = "eu-west"
    zone   = %q
  }
}
`, address, zone))
}

func TestAccWorkload(t *testing.T) {
	t.Parallel()
	const addr = "meshfed_workload.test"
	get := func(ctx context.Context) (*meshfedv1.Workload, error) {
		return westAPI.Catalog.GetWorkload(ctx, &meshfedv1.GetRequest{Namespace: "acc-workload", Name: "acc-db-vm1"})
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6Providers,
		CheckDestroy: checkGone("workload acc-workload/acc-db-vm1", func(ctx context.Context) error {
			_, err := get(ctx)
			return err
		}),
		Steps: []resource.TestStep{
			{
				Config: workloadConfig("10.0.0.5", "eu-west-1a"),
				ConfigStateChecks: []statecheck.StateCheck{
					// The server derives the SPIFFE ID from the service's account.
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("spiffe_id"), knownvalue.StringExact("spiffe://west.mesh/ns/acc-workload/sa/database")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("locality").AtMapKey("zone"), knownvalue.StringExact("eu-west-1a")),
				},
			},
			{ResourceName: addr, ImportState: true, ImportStateId: "acc-workload/acc-db-vm1", ImportStateVerify: true},
			{
				Config: workloadConfig("2001:db8::5", "eu-west-1b"),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("address"), knownvalue.StringExact("2001:db8::5")),
				},
			},
			{
				// Drift: an operator marks the endpoint unhealthy by hand.
				PreConfig: func() {
					ctx := ctxT(t)
					w, err := get(ctx)
					if err != nil {
						t.Fatal(err)
					}
					w.Health = meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
					if _, err := westAPI.Catalog.UpdateWorkload(ctx, &meshfedv1.UpdateWorkloadRequest{Workload: w}); err != nil {
						t.Fatal(err)
					}
				},
				Config: workloadConfig("2001:db8::5", "eu-west-1b"),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("health"), knownvalue.StringExact("healthy")),
				},
			},
		},
	})
}
