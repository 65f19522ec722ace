package provider

import (
	"context"
	"crypto/tls"
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
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
	"github.com/meshfed/meshfed/internal/svidclient"
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
					// An operator's endpoint: no proxy reports for it.
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("proxy"), knownvalue.Bool(false)),
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

// registerAsProxy registers an endpoint of service in namespace on west the
// way meshfed-proxy does: it attests as the service's identity and calls
// ProxyService with that SVID as its TLS client certificate.
func registerAsProxy(t *testing.T, namespace, service, instance string) {
	t.Helper()
	ctx := ctxT(t)
	if _, err := westAPI.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: &meshfedv1.Service{
		Meta: &meshfedv1.Meta{Namespace: namespace, Name: service}, Port: 8080, Protocol: meshfedv1.Protocol_PROTOCOL_HTTP,
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		westAPI.Catalog.DeleteService(ctx, &meshfedv1.DeleteRequest{Namespace: namespace, Name: service})
	})
	id := spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("west.mesh"), "/ns/"+namespace+"/sa/"+service)
	tok, err := westAPI.Tokens.CreateToken(ctx, &meshfedv1.CreateTokenRequest{
		Kind: meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN, SpiffeId: id.String(), MaxUses: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	svids, err := svidclient.New(svidclient.Config{Addrs: []string{west.Servers[0].APIAddr}, CAFile: west.CAFile, Token: tok.GetSecret()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svids.Close() })
	if err := svids.Start(ctx); err != nil {
		t.Fatal(err)
	}
	tc := tlsconfig.MTLSClientConfig(svids, svids, tlsconfig.AdaptMatcher(mfid.MatchServerOf(id.TrustDomain())))
	tc.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient(west.Servers[0].APIAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := meshfedv1.NewProxyServiceClient(conn).RegisterEndpoint(ctx, &meshfedv1.RegisterEndpointRequest{
		Service: service, Instance: instance, Address: "10.0.0.9", Port: 15443, Version: "v1",
	}); err != nil {
		t.Fatal(err)
	}
}

func proxiedWorkloadConfig(version string) string {
	return westConfig(fmt.Sprintf(`
resource "meshfed_workload" "test" {
  name          = "web-0"
  namespace     = "acc-proxied"
  service       = "web"
  address       = "10.0.0.9"
  port          = 15443
  version_label = %q
}
`, version))
}

// TestAccWorkloadOfProxy imports an endpoint that a proxy registered:
// proxy reads true, and an update, which would turn the endpoint into a
// static one, is refused at plan time.
func TestAccWorkloadOfProxy(t *testing.T) {
	t.Parallel()
	const addr = "meshfed_workload.test"
	registerAsProxy(t, "acc-proxied", "web", "web-0")
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: protoV6Providers,
		CheckDestroy: checkGone("workload acc-proxied/web-0", func(ctx context.Context) error {
			_, err := westAPI.Catalog.GetWorkload(ctx, &meshfedv1.GetRequest{Namespace: "acc-proxied", Name: "web-0"})
			return err
		}),
		Steps: []resource.TestStep{
			{
				Config:             proxiedWorkloadConfig("v1"),
				ResourceName:       addr,
				ImportState:        true,
				ImportStateId:      "acc-proxied/web-0",
				ImportStatePersist: true,
				ImportStateCheck: func(states []*terraform.InstanceState) error {
					if len(states) != 1 || states[0].Attributes["proxy"] != "true" {
						return fmt.Errorf("imported %v, want one workload with proxy = true", states)
					}
					return nil
				},
			},
			{
				Config:      proxiedWorkloadConfig("v2"),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)Workload registered by meshfed-proxy.*acc-proxied/web-0 was registered by\s+meshfed-proxy`),
			},
		},
	})
}
