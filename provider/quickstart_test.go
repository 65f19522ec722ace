package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/testharness"
)

// TestQuickstart applies examples/quickstart with the plain CLI and the
// provider binary, the way README.md's Terraform section says: apply, an
// empty plan, destroy, and nothing left on either cluster.
func TestQuickstart(t *testing.T) {
	t.Parallel()
	root, err := testharness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	binDir := t.TempDir()
	build := exec.Command("go", "build", "-tags", testharness.BuildTags, "-o", filepath.Join(binDir, "terraform-provider-meshfed"), "./cmd/terraform-provider-meshfed")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the provider: %v\n%s", err, out)
	}
	westC := testharness.StartCluster(t, 1, testharness.ClusterOptions{Name: "west", LogLevel: "info"})
	eastC := testharness.StartCluster(t, 1, testharness.ClusterOptions{Name: "east", LogLevel: "info"})

	work := t.TempDir()
	for _, f := range []string{"main.tf", "variables.tf", "outputs.tf"} {
		b, err := os.ReadFile(filepath.Join(root, "examples", "quickstart", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(work, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rc := filepath.Join(work, "terraform.rc")
	if err := os.WriteFile(rc, fmt.Appendf(nil, `provider_installation {
  dev_overrides {
    "meshfed/meshfed" = %q
  }
  direct {}
}
`, binDir), 0o600); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TF_") && !strings.HasPrefix(kv, "MESHFED_") {
			env = append(env, kv)
		}
	}
	env = append(env, "TF_CLI_CONFIG_FILE="+rc, "TF_IN_AUTOMATION=1", "CHECKPOINT_DISABLE=1",
		"TF_VAR_west_address="+westC.Servers[0].APIAddr, "TF_VAR_west_token="+westC.AdminToken, "TF_VAR_west_ca_file="+westC.CAFile,
		"TF_VAR_east_address="+eastC.Servers[0].APIAddr, "TF_VAR_east_token="+eastC.AdminToken, "TF_VAR_east_ca_file="+eastC.CAFile,
	)
	tf := func(args ...string) (string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Getenv("TF_ACC_TERRAFORM_PATH"), append(args, "-no-color", "-input=false")...)
		cmd.Dir, cmd.Env = work, env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return out.String(), 0
		case errors.As(err, &ee):
			return out.String(), ee.ExitCode()
		}
		t.Fatalf("terraform %v: %v\n%s", args, err, out.String())
		return "", -1
	}

	if out, code := tf("apply", "-auto-approve"); code != 0 {
		t.Fatalf("terraform apply: exit %d\n%s", code, out)
	}
	if out, code := tf("plan", "-detailed-exitcode"); code != 0 {
		t.Fatalf("terraform plan after apply: exit %d (0 means no changes)\n%s", code, out)
	}

	westAPI := westC.Client(t, westC.Servers[0])
	eastAPI := eastC.Client(t, eastC.Servers[0])
	ctx := ctxT(t)
	// Cross-cluster discovery works: west resolves payments in east.
	if err := testharness.Poll(30*time.Second, func() error {
		r, err := westAPI.Catalog.Resolve(ctx, &meshfedv1.ResolveRequest{Namespace: "shop", Name: "payments"})
		if err != nil {
			return err
		}
		for _, c := range r.GetClusters() {
			if c.GetCluster() == "east" && len(c.GetEndpoints()) == 1 {
				return nil
			}
		}
		return fmt.Errorf("payments resolves to %v", r.GetClusters())
	}); err != nil {
		t.Fatal(err)
	}

	if out, code := tf("destroy", "-auto-approve"); code != 0 {
		t.Fatalf("terraform destroy: exit %d\n%s", code, out)
	}
	assertEmpty(t, "east", eastAPI)
	assertEmpty(t, "west", westAPI)
}

// assertEmpty checks that the quickstart left nothing on a cluster.
func assertEmpty(t *testing.T, name string, c *client.Client) {
	t.Helper()
	ctx := ctxT(t)
	svcs, err := c.Catalog.ListServices(ctx, &meshfedv1.ListRequest{})
	if err != nil || len(svcs.GetServices()) != 0 {
		t.Errorf("%s: services left: %v (%v)", name, svcs.GetServices(), err)
	}
	wls, err := c.Catalog.ListWorkloads(ctx, &meshfedv1.ListRequest{})
	if err != nil || len(wls.GetWorkloads()) != 0 {
		t.Errorf("%s: workloads left: %v (%v)", name, wls.GetWorkloads(), err)
	}
	az, err := c.Policy.ListAuthorizationPolicies(ctx, &meshfedv1.ListRequest{})
	if err != nil || len(az.GetPolicies()) != 0 {
		t.Errorf("%s: authorization policies left: %v (%v)", name, az.GetPolicies(), err)
	}
	tp, err := c.Policy.ListTrafficPolicies(ctx, &meshfedv1.ListRequest{})
	if err != nil || len(tp.GetPolicies()) != 0 {
		t.Errorf("%s: traffic policies left: %v (%v)", name, tp.GetPolicies(), err)
	}
	ex, err := c.Peering.ListServiceExports(ctx, &meshfedv1.ListRequest{})
	if err != nil || len(ex.GetExports()) != 0 {
		t.Errorf("%s: exports left: %v (%v)", name, ex.GetExports(), err)
	}
	im, err := c.Peering.ListImportedServices(ctx, &meshfedv1.ListRequest{})
	if err != nil || len(im.GetServices()) != 0 {
		t.Errorf("%s: imported services left: %v (%v)", name, im.GetServices(), err)
	}
	// The dialer's peering is the resource; the acceptor's side goes when
	// the dialer tells it.
	err = testharness.Poll(10*time.Second, func() error {
		ps, err := c.Peering.ListPeerings(ctx, &meshfedv1.ListRequest{})
		if err != nil {
			return err
		}
		if len(ps.GetPeerings()) != 0 {
			p := ps.GetPeerings()[0]
			return fmt.Errorf("peering %s left (%s, dialer %v)", p.GetMeta().GetName(), p.GetState(), p.GetDialer())
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s: %v", name, err)
	}
}
