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

func authzConfig(action, paths string) string {
	return westConfig(fmt.Sprintf(`
resource "meshfed_authorization_policy" "test" {
  name        = "acc-allow-frontend"
  namespace   = "acc-authz"
  destination = "payments"
  action      = %q
  rules = [
    {
      principals = ["spiffe://west.mesh/ns/acc-authz/sa/frontend", "spiffe://east.mesh/ns/shop/*"]
      methods    = ["GET", "POST"]
      paths      = %s
    },
    {
      principals = ["*"]
    },
  ]
}
`, action, paths))
}

func TestAccAuthorizationPolicy(t *testing.T) {
	t.Parallel()
	const addr = "meshfed_authorization_policy.test"
	get := func(ctx context.Context) (*meshfedv1.AuthorizationPolicy, error) {
		return westAPI.Policy.GetAuthorizationPolicy(ctx, &meshfedv1.GetRequest{Namespace: "acc-authz", Name: "acc-allow-frontend"})
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6Providers,
		CheckDestroy: checkGone("authorization policy", func(ctx context.Context) error {
			_, err := get(ctx)
			return err
		}),
		Steps: []resource.TestStep{
			{
				Config: authzConfig("allow", `["/api/*"]`),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("rules").AtSliceIndex(1).AtMapKey("methods"), knownvalue.Null()),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("rules").AtSliceIndex(0).AtMapKey("principals").AtSliceIndex(1),
						knownvalue.StringExact("spiffe://east.mesh/ns/shop/*")),
				},
			},
			{ResourceName: addr, ImportState: true, ImportStateId: "acc-authz/acc-allow-frontend", ImportStateVerify: true},
			{
				Config: authzConfig("deny", `["/admin", "/debug/*"]`),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("action"), knownvalue.StringExact("deny")),
				},
			},
			{
				PreConfig: func() {
					ctx := ctxT(t)
					p, err := get(ctx)
					if err != nil {
						t.Fatal(err)
					}
					p.Rules = p.Rules[:1]
					if _, err := westAPI.Policy.UpdateAuthorizationPolicy(ctx, &meshfedv1.UpdateAuthorizationPolicyRequest{Policy: p}); err != nil {
						t.Fatal(err)
					}
				},
				Config: authzConfig("deny", `["/admin", "/debug/*"]`),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("rules"), knownvalue.ListSizeExact(2)),
				},
			},
		},
	})
}

func trafficConfig(connect, weights string) string {
	return westConfig(fmt.Sprintf(`
resource "meshfed_traffic_policy" "test" {
  name        = "acc-payments"
  namespace   = "acc-traffic"
  destination = "payments"
  timeouts = {
    connect = %q
    request = "1m"
  }
  retries = {
    attempts        = 3
    per_try_timeout = "500ms"
    retry_on        = ["connect-failure", "5xx"]
  }
  circuit_breaker = {
    max_connections      = 100
    consecutive_errors   = 5
    base_ejection_time   = "30s"
    max_ejection_percent = 50
  }
  rate_limit = {
    requests_per_second = 250.5
    burst               = 50
  }
  load_balancer = "least-request"
  splits = [%s]
  failover = ["east"]
  fault = {
    delay         = "100ms"
    delay_percent = 1.5
  }
}
`, connect, weights))
}

func TestAccTrafficPolicy(t *testing.T) {
	t.Parallel()
	const addr = "meshfed_traffic_policy.test"
	get := func(ctx context.Context) (*meshfedv1.TrafficPolicy, error) {
		return westAPI.Policy.GetTrafficPolicy(ctx, &meshfedv1.GetRequest{Namespace: "acc-traffic", Name: "acc-payments"})
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6Providers,
		CheckDestroy: checkGone("traffic policy", func(ctx context.Context) error {
			_, err := get(ctx)
			return err
		}),
		Steps: []resource.TestStep{
			{
				// "60s" is stored as 1m: the configuration's spelling is kept
				// (no diff on the next plan, which the framework checks).
				Config: trafficConfig("60s", `{ version = "v1", weight = 90 }, { version = "v2", weight = 10 }`),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("timeouts").AtMapKey("connect"), knownvalue.StringExact("60s")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("timeouts").AtMapKey("idle"), knownvalue.Null()),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("circuit_breaker").AtMapKey("max_requests"), knownvalue.Null()),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("rate_limit").AtMapKey("requests_per_second"), knownvalue.Float64Exact(250.5)),
				},
			},
			{ResourceName: addr, ImportState: true, ImportStateId: "acc-traffic/acc-payments", ImportStateVerify: true,
				// Imported durations are read in the API's spelling.
				ImportStateVerifyIgnore: []string{"timeouts.connect"}},
			{
				Config: trafficConfig("2s", `{ version = "v1", weight = 50 }, { version = "v2", weight = 50 }`),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("splits").AtSliceIndex(1).AtMapKey("weight"), knownvalue.Int64Exact(50)),
				},
			},
			{
				PreConfig: func() {
					ctx := ctxT(t)
					p, err := get(ctx)
					if err != nil {
						t.Fatal(err)
					}
					p.LoadBalancer = meshfedv1.LoadBalancer_LOAD_BALANCER_RANDOM
					p.Fault = nil
					if _, err := westAPI.Policy.UpdateTrafficPolicy(ctx, &meshfedv1.UpdateTrafficPolicyRequest{Policy: p}); err != nil {
						t.Fatal(err)
					}
				},
				Config: trafficConfig("2s", `{ version = "v1", weight = 50 }, { version = "v2", weight = 50 }`),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("load_balancer"), knownvalue.StringExact("least-request")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("fault").AtMapKey("delay"), knownvalue.StringExact("100ms")),
				},
			},
		},
	})
}
