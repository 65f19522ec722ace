package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"
	"github.com/hashicorp/terraform-plugin-go/tfprotov6"
	"github.com/hashicorp/terraform-plugin-testing/echoprovider"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/testharness"
)

// The acceptance tests drive the real terraform (or OpenTofu) CLI against
// real meshfed servers: two clusters, west and east, started once for the
// whole package and shared by the tests (each test uses its own names),
// plus clusters of their own for the tests that change a whole cluster
// (the CA rotation, the quickstart).

// minTerraform is the oldest CLI with write-only arguments and ephemeral
// resources.
const minTerraform = "1.11.0"

var (
	west, east       *testharness.Cluster
	westAPI, eastAPI *client.Client
)

// protoV6Providers runs the provider in the test process.
var protoV6Providers = map[string]func() (tfprotov6.ProviderServer, error){
	"meshfed": providerserver.NewProtocol6WithError(New("test")()),
}

// protoV6ProvidersWithEcho adds the echo provider, which turns an
// ephemeral value into state so that a test can look at it.
var protoV6ProvidersWithEcho = map[string]func() (tfprotov6.ProviderServer, error){
	"meshfed": providerserver.NewProtocol6WithError(New("test")()),
	"echo":    echoprovider.NewProviderServer(),
}

// protoV6TwoClusters serves the provider twice, as meshfed (west) and
// meshfedeast (east). Aliases of one provider cannot stand for two
// clusters here: Terraform reaches an in-process provider through one
// reattached server, which every alias would configure in turn.
var protoV6TwoClusters = map[string]func() (tfprotov6.ProviderServer, error){
	"meshfed":     providerserver.NewProtocol6WithError(New("test")()),
	"meshfedeast": providerserver.NewProtocol6WithError(New("test")()),
	"echo":        echoprovider.NewProviderServer(),
}

func TestMain(m *testing.M) {
	if err := setupTerraform(); err != nil {
		fmt.Fprintf(os.Stderr, "provider tests: %v\n\nRun the tests with `make test`, which finds or builds a terraform (>= %s) or OpenTofu binary and sets TF_ACC_TERRAFORM_PATH.\n", err, minTerraform)
		os.Exit(1)
	}
	shared := testharness.NewShared("provider")
	err := shared.Do(func() {
		west = testharness.StartCluster(shared, 1, testharness.ClusterOptions{Name: "west", LogLevel: "info"})
		east = testharness.StartCluster(shared, 1, testharness.ClusterOptions{Name: "east", LogLevel: "info"})
		westAPI = west.Client(shared, west.Servers[0])
		eastAPI = east.Client(shared, east.Servers[0])
	})
	code := 1
	if err != nil {
		fmt.Fprintf(os.Stderr, "provider tests: starting the clusters: %v\n", err)
		shared.Fail()
	} else {
		code = testharness.Main(m)
	}
	if code != 0 {
		shared.Fail()
	}
	shared.Close()
	os.Exit(code)
}

// setupTerraform finds the CLI and sets the environment of
// terraform-plugin-testing: TF_ACC (the tests are the point of this
// package: they run, they are not skipped), TF_ACC_TERRAFORM_PATH, and a
// CLI configuration of our own.
func setupTerraform() error {
	bin, err := findTerraform()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "meshfed-tfcli-")
	if err != nil {
		return err
	}
	cfg := filepath.Join(dir, "terraform.rc")
	if err := os.WriteFile(cfg, nil, 0o600); err != nil {
		return err
	}
	env := map[string]string{
		"TF_ACC":                "1",
		"TF_ACC_TERRAFORM_PATH": bin,
		"TF_CLI_CONFIG_FILE":    cfg,
		"CHECKPOINT_DISABLE":    "1",
	}
	if isTofu(bin) && os.Getenv("TF_ACC_PROVIDER_HOST") == "" {
		env["TF_ACC_PROVIDER_HOST"] = "registry.opentofu.org"
	}
	for k, v := range env {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	return nil
}

// findTerraform looks at TF_ACC_TERRAFORM_PATH, then terraform and tofu on
// PATH, then the OpenTofu that `make terraform` builds into .cache/.
func findTerraform() (string, error) {
	if p := os.Getenv("TF_ACC_TERRAFORM_PATH"); p != "" {
		if err := checkTerraformVersion(p); err != nil {
			return "", fmt.Errorf("TF_ACC_TERRAFORM_PATH=%s: %w", p, err)
		}
		return p, nil
	}
	var tried []string
	var candidates []string
	for _, name := range []string{"terraform", "tofu"} {
		if p, err := exec.LookPath(name); err == nil {
			candidates = append(candidates, p)
		}
	}
	if root, err := testharness.ModuleRoot(); err == nil {
		candidates = append(candidates, filepath.Join(root, ".cache", "tofu", "tofu"))
	}
	for _, p := range candidates {
		err := checkTerraformVersion(p)
		if err == nil {
			return p, nil
		}
		tried = append(tried, fmt.Sprintf("%s: %v", p, err))
	}
	return "", fmt.Errorf("no terraform >= %s or OpenTofu found (tried: %s)", minTerraform, strings.Join(tried, "; "))
}

func checkTerraformVersion(bin string) error {
	cmd := exec.Command(bin, "version", "-json")
	// An empty CLI configuration: OpenTofu warns on standard output about
	// a TF_CLI_CONFIG_FILE that does not exist.
	cmd.Env = append(os.Environ(), "TF_CLI_CONFIG_FILE="+os.DevNull, "CHECKPOINT_DISABLE=1")
	out, err := cmd.Output()
	if err != nil {
		return err
	}
	// Anything printed before the JSON document is not part of it.
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var v struct {
		Version string `json:"terraform_version"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return fmt.Errorf("reading its version: %w", err)
	}
	if !versionAtLeast(v.Version, minTerraform) {
		return fmt.Errorf("version %s is older than %s", v.Version, minTerraform)
	}
	return nil
}

// versionAtLeast compares dotted versions ("1.11.4" >= "1.11.0").
func versionAtLeast(v, min string) bool {
	a, b := strings.Split(strings.SplitN(v, "-", 2)[0], "."), strings.Split(min, ".")
	for i := range b {
		var x, y int
		if i < len(a) {
			x, _ = strconv.Atoi(a[i])
		}
		y, _ = strconv.Atoi(b[i])
		if x != y {
			return x > y
		}
	}
	return true
}

func isTofu(bin string) bool {
	out, _ := exec.Command(bin, "version").Output()
	return strings.Contains(string(out), "OpenTofu")
}

// providerConfig is a block for the provider named local, connected to
// the first server of c.
func providerConfig(c *testharness.Cluster, local string) string {
	return fmt.Sprintf("provider %q {\n  address = %q\n  token   = %q\n  ca_file = %q\n}\n", local, c.Servers[0].APIAddr, c.AdminToken, c.CAFile)
}

// westConfig prefixes a configuration with the provider block of west.
func westConfig(body string) string { return providerConfig(west, "meshfed") + body }

// ctxT is a context for one API call of a test.
func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// checkGone is a CheckDestroy that asserts get answers NOT_FOUND.
func checkGone(what string, get func(context.Context) error) func(*terraform.State) error {
	return func(*terraform.State) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := get(ctx)
		if err == nil {
			return fmt.Errorf("%s still exists after destroy", what)
		}
		if !isNotFound(err) {
			return fmt.Errorf("reading %s after destroy: %w", what, err)
		}
		return nil
	}
}

// noSecrets fails when the state (as terraform show -json gives it,
// sensitive values included) holds a secret: an API token's secret
// (mfd_...) or a peering token (mfpeer1....).
type noSecrets struct{}

func (noSecrets) CheckState(_ context.Context, req statecheck.CheckStateRequest, resp *statecheck.CheckStateResponse) {
	b, err := json.Marshal(req.State)
	if err != nil {
		resp.Error = err
		return
	}
	if len(b) < 100 {
		resp.Error = fmt.Errorf("the state is unexpectedly small: %s", b)
		return
	}
	for _, prefix := range []string{"mfd_", "mfpeer1."} {
		if strings.Contains(string(b), prefix) {
			resp.Error = fmt.Errorf("the state holds a secret (%q...)", prefix)
			return
		}
	}
}
