package provider

import (
	"context"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"
	"google.golang.org/grpc"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/testharness"
)

// The federation tests peer east (the dialer) with west (the acceptor).
// They share the two clusters' peering names, so they do not run in
// parallel with each other.

// peeringConfig is the acceptor's token and the dialer's peering.
func peeringConfig() string {
	return providerConfig(west, "meshfed") + providerConfig(east, "meshfedeast") + `
ephemeral "meshfed_peering_token" "east" {
    peer     = "east"
}

resource "meshfed_peering" "west" {
  provider         = meshfedeast
  name             = "west"
  peering_token_wo = ephemeral.meshfed_peering_token.east.token
}
`
}

// peeringGone checks that neither side has the peering left.
func peeringGone(*terraform.State) error {
	return testharness.Poll(30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if p, err := eastAPI.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: "west"}); !isNotFound(err) {
			return fmt.Errorf("east still has the peering: %v (%v)", p.GetState(), err)
		}
		if p, err := westAPI.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: "east"}); !isNotFound(err) {
			return fmt.Errorf("west still has the peering: %v (%v)", p.GetState(), err)
		}
		return nil
	})
}

// peeringDestroyed is the CheckDestroy of the federation tests: the
// dialer's peering (the resource) is gone, and so is the acceptor's side,
// which the dialer told over the live link.
func peeringDestroyed(t *testing.T) func(*terraform.State) error {
	return func(*terraform.State) error {
		return testharness.Poll(30*time.Second, func() error {
			if _, err := eastAPI.Peering.GetPeering(context.Background(), &meshfedv1.GetRequest{Name: "west"}); !isNotFound(err) {
				return fmt.Errorf("east (the dialer) still has the peering (%v)", err)
			}
			if _, err := westAPI.Peering.GetPeering(context.Background(), &meshfedv1.GetRequest{Name: "east"}); !isNotFound(err) {
				return fmt.Errorf("west (the acceptor) still has the peering (%v)", err)
			}
			return nil
		})
	}
}

// cleanPeerings starts a federation test from two unpeered clusters.
func cleanPeerings(t *testing.T) {
	t.Helper()
	ctx := ctxT(t)
	for _, side := range []struct {
		api interface {
			DeletePeering(context.Context, *meshfedv1.DeleteRequest, ...grpc.CallOption) (*meshfedv1.DeleteResponse, error)
		}
		name string
	}{{eastAPI.Peering, "west"}, {westAPI.Peering, "east"}} {
		if _, err := side.api.DeletePeering(ctx, &meshfedv1.DeleteRequest{Name: side.name}); err != nil && !isNotFound(err) {
			t.Fatal(err)
		}
	}
	if err := peeringGone(nil); err != nil {
		t.Fatal(err)
	}
}

func TestAccPeering(t *testing.T) {
	const addr = "meshfed_peering.west"
	resource.Test(t, resource.TestCase{
		PreCheck:                 func() { cleanPeerings(t) },
		ProtoV6ProviderFactories: protoV6TwoClusters,
		CheckDestroy:             peeringDestroyed(t),
		Steps: []resource.TestStep{
			{
				Config: peeringConfig(),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("state"), knownvalue.StringExact("active")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("peer_cluster"), knownvalue.StringExact("west")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("peer_trust_domain"), knownvalue.StringExact("west.mesh")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("dialer"), knownvalue.Bool(true)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("peering_token_wo"), knownvalue.Null()),
					noSecrets{},
				},
			},
			{
				// A second plan: the token cannot be made again (the
				// peering is established) and nothing changes.
				Config: peeringConfig(),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectEmptyPlan()},
				},
			},
			{
				ResourceName: addr, ImportState: true, ImportStateId: "west", ImportStateVerify: true,
				ImportStateVerifyIgnore: []string{"last_sync", "imported_services", "exported_services", "last_error", "state"},
			},
			{
				// Drift: the peering is deleted out of band, on the acceptor
				// (which tells the dialer); the plan makes it again, with a
				// new token.
				PreConfig: func() {
					ctx := ctxT(t)
					if _, err := westAPI.Peering.DeletePeering(ctx, &meshfedv1.DeleteRequest{Name: "east"}); err != nil {
						t.Fatal(err)
					}
					if err := peeringGone(nil); err != nil {
						t.Fatal(err)
					}
				},
				Config: peeringConfig(),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionCreate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("state"), knownvalue.StringExact("active")),
					noSecrets{},
				},
			},
		},
	})
}

func exportConfig(withReads bool) string {
	cfg := peeringConfig() + `
resource "meshfed_service" "api" {
  provider  = meshfedeast
  name      = "acc-api"
  namespace = "acc-fed"
  port      = 8443
  protocol  = "grpc"
}

resource "meshfed_workload" "api1" {
  provider  = meshfedeast
  name      = "acc-api-1"
  namespace = meshfed_service.api.namespace
  service   = meshfed_service.api.name
  address   = "10.1.0.1"
  port      = 15443
}

resource "meshfed_service_export" "api" {
  provider  = meshfedeast
  name      = meshfed_service.api.name
  namespace = meshfed_service.api.namespace
  peers     = [meshfed_peering.west.name]
}
`
	if withReads {
		cfg += `
data "meshfed_services" "west" {
  namespace = "acc-fed"
}

data "meshfed_peering" "east" {
    name     = "east"
}

provider "echo" {
  data = ephemeral.meshfed_peering_token.east.established
}

resource "echo" "established" {}
`
	}
	return cfg
}

func TestAccServiceExport(t *testing.T) {
	const addr = "meshfed_service_export.api"
	get := func(ctx context.Context) (*meshfedv1.ServiceExport, error) {
		return eastAPI.Peering.GetServiceExport(ctx, &meshfedv1.GetRequest{Namespace: "acc-fed", Name: "acc-api"})
	}
	resource.Test(t, resource.TestCase{
		PreCheck:                 func() { cleanPeerings(t) },
		ProtoV6ProviderFactories: protoV6TwoClusters,
		CheckDestroy: func(s *terraform.State) error {
			if err := checkGone("export", func(ctx context.Context) error { _, err := get(ctx); return err })(s); err != nil {
				return err
			}
			return peeringDestroyed(t)(s)
		},
		Steps: []resource.TestStep{
			{
				Config: exportConfig(false),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("peers"), knownvalue.SetExact([]knownvalue.Check{knownvalue.StringExact("west")})),
				},
			},
			{
				// West sees the imported service, its peering, and the token
				// resource says the peering is established.
				PreConfig: func() {
					err := testharness.Poll(30*time.Second, func() error {
						resp, err := westAPI.Peering.ListImportedServices(context.Background(), &meshfedv1.ListRequest{Namespace: "acc-fed"})
						if err != nil {
							return err
						}
						if len(resp.GetServices()) != 1 || len(resp.GetServices()[0].GetEndpoints()) != 1 {
							return fmt.Errorf("imported services %v", resp.GetServices())
						}
						return nil
					})
					if err != nil {
						t.Fatal(err)
					}
				},
				Config: exportConfig(true),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("data.meshfed_services.west", tfjsonpath.New("services"), knownvalue.ListExact([]knownvalue.Check{
						knownvalue.ObjectPartial(map[string]knownvalue.Check{
							"cluster":   knownvalue.StringExact("east"),
							"peer":      knownvalue.StringExact("east"),
							"name":      knownvalue.StringExact("acc-api"),
							"protocol":  knownvalue.StringExact("grpc"),
							"endpoints": knownvalue.Int64Exact(1),
							"stale":     knownvalue.Bool(false),
						}),
					})),
					statecheck.ExpectKnownValue("data.meshfed_peering.east", tfjsonpath.New("state"), knownvalue.StringExact("active")),
					statecheck.ExpectKnownValue("data.meshfed_peering.east", tfjsonpath.New("dialer"), knownvalue.Bool(false)),
					statecheck.ExpectKnownValue("data.meshfed_peering.east", tfjsonpath.New("imported_services"), knownvalue.Int64Exact(1)),
					statecheck.ExpectKnownValue("echo.established", tfjsonpath.New("data"), knownvalue.Bool(true)),
					noSecrets{},
				},
			},
			{ResourceName: addr, ImportState: true, ImportStateId: "acc-fed/acc-api", ImportStateVerify: true},
			{
				PreConfig: func() {
					ctx := ctxT(t)
					e, err := get(ctx)
					if err != nil {
						t.Fatal(err)
					}
					e.Peers = nil
					if _, err := eastAPI.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: e}); err != nil {
						t.Fatal(err)
					}
				},
				Config: exportConfig(true),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("peers"), knownvalue.SetSizeExact(1)),
				},
			},
		},
	})
}

// TestAccPeeringToken looks at a token through the echo provider; the
// pending peering it made is deleted when the run ends, since no cluster
// used the token.
func TestAccPeeringToken(t *testing.T) {
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6ProvidersWithEcho,
		CheckDestroy: checkGone("pending peering north", func(ctx context.Context) error {
			_, err := westAPI.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: "north"})
			return err
		}),
		Steps: []resource.TestStep{{
			Config: westConfig(`
ephemeral "meshfed_peering_token" "north" {
  peer = "north"
}

provider "echo" {
  data = ephemeral.meshfed_peering_token.north
}

resource "echo" "token" {}
`),
			ConfigStateChecks: []statecheck.StateCheck{
				statecheck.ExpectKnownValue("echo.token", tfjsonpath.New("data").AtMapKey("token"), knownvalue.StringRegexp(regexp.MustCompile(`^mfpeer1\.`))),
				statecheck.ExpectKnownValue("echo.token", tfjsonpath.New("data").AtMapKey("established"), knownvalue.Bool(false)),
			},
		}},
	})
}
