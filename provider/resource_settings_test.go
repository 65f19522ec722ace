package provider

import (
	"context"
	"fmt"
	"regexp"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/compare"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/testharness"
)

func meshSettingsConfig(action string, sampling float64) string {
	return westConfig(fmt.Sprintf(`
resource "meshfed_mesh_settings" "test" {
  default_authorization_action = %q
  access_logs                  = true
  trace_sampling               = %v
  otlp_endpoint                = "otel-collector.monitoring:4317"
  locality = {
    region = "eu-west"
  }
  default_traffic_policy = {
    timeouts = {
      request = "15s"
    }
    retries = {
      attempts = 2
      retry_on = ["unavailable"]
    }
  }
}
`, action, sampling))
}

// TestAccMeshSettings changes west's mesh settings: no other test reads them.
func TestAccMeshSettings(t *testing.T) {
	t.Parallel()
	const addr = "meshfed_mesh_settings.test"
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6Providers,
		CheckDestroy: func(*terraform.State) error {
			s, err := westAPI.Mesh.GetMeshSettings(context.Background(), &meshfedv1.GetMeshSettingsRequest{})
			if err != nil {
				return err
			}
			if s.GetMeta().GetVersion() != 0 || s.GetAccessLogs() || s.GetMtlsMode() != meshfedv1.MTLSMode_MTLS_MODE_UNSPECIFIED {
				return fmt.Errorf("the mesh settings were not reset: %v", s)
			}
			return nil
		},
		Steps: []resource.TestStep{
			{
				Config: meshSettingsConfig("deny", 0.25),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("id"), knownvalue.StringExact("global")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("default_traffic_policy").AtMapKey("timeouts").AtMapKey("request"), knownvalue.StringExact("15s")),
					// Unset: the default, as the server reads it back.
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("mtls_mode"), knownvalue.StringExact("strict")),
				},
			},
			{ResourceName: addr, ImportState: true, ImportStateId: "global", ImportStateVerify: true},
			{
				Config: meshSettingsConfig("allow", 0.5),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("trace_sampling"), knownvalue.Float64Exact(0.5)),
				},
			},
			{
				PreConfig: func() {
					ctx := ctxT(t)
					s, err := westAPI.Mesh.GetMeshSettings(ctx, &meshfedv1.GetMeshSettingsRequest{})
					if err != nil {
						t.Fatal(err)
					}
					s.AccessLogs = false
					s.DefaultTrafficPolicy = nil
					if _, err := westAPI.Mesh.UpdateMeshSettings(ctx, &meshfedv1.UpdateMeshSettingsRequest{Settings: s}); err != nil {
						t.Fatal(err)
					}
				},
				Config: meshSettingsConfig("allow", 0.5),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("access_logs"), knownvalue.Bool(true)),
				},
			},
		},
	})
}

func meshSettingsMTLSConfig(c *testharness.Cluster, mode string) string {
	attr := ""
	if mode != "" {
		attr = fmt.Sprintf("  mtls_mode = %q\n", mode)
	}
	return providerConfig(c, "meshfed") + fmt.Sprintf(`
resource "meshfed_mesh_settings" "test" {
%s}
`, attr)
}

// TestAccMeshSettingsMTLSMode: mtls_mode is written, read back and
// imported; unset, it is strict without a diff, whether the server stores
// STRICT or nothing; drift is corrected; a bad value fails at plan time.
// It runs on a cluster of its own: a cluster has one set of mesh settings,
// and TestAccMeshSettings owns west's.
func TestAccMeshSettingsMTLSMode(t *testing.T) {
	t.Parallel()
	c := testharness.StartCluster(t, 1, testharness.ClusterOptions{Name: "mtls", LogLevel: "info"})
	api := c.Client(t, c.Servers[0])
	const addr = "meshfed_mesh_settings.test"
	stored := func(ctx context.Context) meshfedv1.MTLSMode {
		t.Helper()
		s, err := api.Mesh.GetMeshSettings(ctx, &meshfedv1.GetMeshSettingsRequest{Read: &meshfedv1.ReadOptions{Consistent: true}})
		if err != nil {
			t.Fatal(err)
		}
		return s.GetMtlsMode()
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6Providers,
		CheckDestroy: func(*terraform.State) error {
			if m := stored(context.Background()); m != meshfedv1.MTLSMode_MTLS_MODE_UNSPECIFIED {
				return fmt.Errorf("mtls_mode after destroy: %v, want the default", m)
			}
			return nil
		},
		Steps: []resource.TestStep{
			{
				Config: meshSettingsMTLSConfig(c, "permissive"),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("mtls_mode"), knownvalue.StringExact("permissive")),
				},
				Check: func(*terraform.State) error {
					if m := stored(ctxT(t)); m != meshfedv1.MTLSMode_MTLS_MODE_PERMISSIVE {
						return fmt.Errorf("the server stores %v", m)
					}
					return nil
				},
			},
			// The same configuration again plans nothing.
			{Config: meshSettingsMTLSConfig(c, "permissive"), PlanOnly: true},
			{ResourceName: addr, ImportState: true, ImportStateId: "global", ImportStateVerify: true},
			{
				// A bad value fails at plan time, on its attribute.
				Config:      meshSettingsMTLSConfig(c, "optional"),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)mtls_mode = "optional".*Attribute mtls_mode value must be one of:.*"strict".*"permissive"`),
			},
			{
				// Unset: back to the default, which the plan shows.
				Config: meshSettingsMTLSConfig(c, ""),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{
						plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
						plancheck.ExpectKnownValue(addr, tfjsonpath.New("mtls_mode"), knownvalue.StringExact("strict")),
					},
				},
				Check: func(*terraform.State) error {
					if m := stored(ctxT(t)); m != meshfedv1.MTLSMode_MTLS_MODE_STRICT {
						return fmt.Errorf("the server stores %v", m)
					}
					return nil
				},
			},
			{Config: meshSettingsMTLSConfig(c, ""), PlanOnly: true},
			{
				// The server's own default (unset, as after "meshfed mesh
				// reset") reads as strict: still no diff.
				PreConfig: func() {
					ctx := ctxT(t)
					s, err := api.Mesh.GetMeshSettings(ctx, &meshfedv1.GetMeshSettingsRequest{})
					if err != nil {
						t.Fatal(err)
					}
					s.MtlsMode = meshfedv1.MTLSMode_MTLS_MODE_UNSPECIFIED
					if _, err := api.Mesh.UpdateMeshSettings(ctx, &meshfedv1.UpdateMeshSettingsRequest{Settings: s}); err != nil {
						t.Fatal(err)
					}
				},
				Config:   meshSettingsMTLSConfig(c, ""),
				PlanOnly: true,
			},
			{
				// Drift: permissive set outside Terraform is put back.
				PreConfig: func() {
					ctx := ctxT(t)
					s, err := api.Mesh.GetMeshSettings(ctx, &meshfedv1.GetMeshSettingsRequest{})
					if err != nil {
						t.Fatal(err)
					}
					s.MtlsMode = meshfedv1.MTLSMode_MTLS_MODE_PERMISSIVE
					if _, err := api.Mesh.UpdateMeshSettings(ctx, &meshfedv1.UpdateMeshSettingsRequest{Settings: s}); err != nil {
						t.Fatal(err)
					}
				},
				Config: meshSettingsMTLSConfig(c, "strict"),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("mtls_mode"), knownvalue.StringExact("strict")),
				},
			},
		},
	})
}

func caConfig(c *testharness.Cluster, svidTTL, rotation string) string {
	r := ""
	if rotation != "" {
		r = fmt.Sprintf("  rotation = %q\n", rotation)
	}
	return providerConfig(c, "meshfed") + fmt.Sprintf(`
resource "meshfed_ca" "test" {
  key_algorithm    = "ecdsa-p256"
  intermediate_ttl = "48h"
  svid_ttl         = %q
%s
  timeouts {
    update = "3m"
  }
}
`, svidTTL, r)
}

// TestAccCA runs on a cluster of its own: rotating the CA changes the
// certificates every client of the cluster verifies.
func TestAccCA(t *testing.T) {
	t.Parallel()
	c := testharness.StartCluster(t, 1, testharness.ClusterOptions{Name: "rotating", LogLevel: "info"})
	api := c.Client(t, c.Servers[0])
	const addr = "meshfed_ca.test"
	sameAuthority := statecheck.CompareValue(compare.ValuesSame())
	newAuthority := statecheck.CompareValue(compare.ValuesDiffer())
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6Providers,
		CheckDestroy: func(*terraform.State) error {
			s, err := api.CA.GetCASettings(context.Background(), &meshfedv1.GetCASettingsRequest{})
			if err != nil {
				return err
			}
			if s.GetSvidTtl().AsDuration().String() != "1h0m0s" || s.GetIntermediateTtl().AsDuration().String() != "720h0m0s" {
				return fmt.Errorf("the CA settings were not reset: %v", s)
			}
			return nil
		},
		Steps: []resource.TestStep{
			{
				Config: caConfig(c, "30m", ""),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("trust_domain"), knownvalue.StringExact("rotating.mesh")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("root_ttl"), knownvalue.StringExact("87600h")),
					sameAuthority.AddStateValue(addr, tfjsonpath.New("active_authority_id")),
					newAuthority.AddStateValue(addr, tfjsonpath.New("active_authority_id")),
				},
			},
			{ResourceName: addr, ImportState: true, ImportStateId: "global", ImportStateVerify: true, ImportStateVerifyIgnore: []string{"timeouts"}},
			{
				Config: caConfig(c, "20m", ""),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					// No rotation: the same authority signs.
					sameAuthority.AddStateValue(addr, tfjsonpath.New("active_authority_id")),
				},
			},
			{
				// Drift.
				PreConfig: func() {
					ctx := ctxT(t)
					s, err := api.CA.GetCASettings(ctx, &meshfedv1.GetCASettingsRequest{})
					if err != nil {
						t.Fatal(err)
					}
					s.SvidTtl = durationpb.New(5 * 60e9)
					if _, err := api.CA.UpdateCASettings(ctx, &meshfedv1.UpdateCASettingsRequest{Settings: s}); err != nil {
						t.Fatal(err)
					}
				},
				Config: caConfig(c, "20m", ""),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("svid_ttl"), knownvalue.StringExact("20m")),
				},
			},
			{
				// A value the server refuses, reported on its attribute:
				// an SVID may live at most half as long as its intermediate.
				Config:      caConfig(c, "30h", ""),
				ExpectError: regexp.MustCompile(`(?s)svid_ttl\s+= "30h".*invalid settings.svid_ttl`),
			},
			{
				// Setting rotation rotates the CA: another authority signs.
				Config: caConfig(c, "20m", "2026-11"),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)},
				},
				ConfigStateChecks: []statecheck.StateCheck{
					newAuthority.AddStateValue(addr, tfjsonpath.New("active_authority_id")),
				},
				Check: func(*terraform.State) error {
					st, err := c.Client(t, c.Servers[0]).CA.GetCAStatus(context.Background(), &meshfedv1.GetCAStatusRequest{})
					if err != nil {
						return err
					}
					states := map[meshfedv1.AuthorityState]int{}
					for _, a := range st.GetAuthorities() {
						states[a.GetState()]++
					}
					if states[meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE] != 1 || states[meshfedv1.AuthorityState_AUTHORITY_STATE_RETIRED] != 1 || st.GetRotationStep() != "" {
						return fmt.Errorf("after the rotation: %v", st)
					}
					return nil
				},
			},
			{
				// The same value again does not rotate.
				Config:   caConfig(c, "20m", "2026-11"),
				PlanOnly: true,
			},
		},
	})
}
