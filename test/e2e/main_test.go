package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/testharness"
)

func TestMain(m *testing.M) { os.Exit(testharness.Main(m)) }

// callTimeout bounds one CLI run or API call that is expected to succeed
// promptly on a healthy cluster.
const callTimeout = 20 * time.Second

// waitTimeout bounds the polls for replication, elections and catch-up.
const waitTimeout = 30 * time.Second

// skipShort skips tests that start real servers under -short.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real meshfed server processes")
	}
}

// cliResult is what one run of the meshfed binary printed.
type cliResult struct {
	Stdout, Stderr string
	Err            error
}

func (r cliResult) String() string {
	return fmt.Sprintf("err=%v stdout=%q stderr=%q", r.Err, r.Stdout, r.Stderr)
}

// runCLI runs the meshfed binary with args, pointed at server s through
// MESHFED_ADDR, MESHFED_TOKEN (the cluster's admin token; a --token flag
// overrides it) and MESHFED_CA_FILE, and kills it after timeout. It is safe
// to call from any goroutine: it never touches t or the cluster's test.
func runCLI(bin string, c *testharness.Cluster, s *testharness.Server, timeout time.Duration, args ...string) cliResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(environWithoutMeshfed(), c.Env(s)...)
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("meshfed %s: killed after %s: %w (%v)", strings.Join(args, " "), timeout, ctx.Err(), err)
	}
	return cliResult{Stdout: out.String(), Stderr: errb.String(), Err: err}
}

// environWithoutMeshfed is the test's environment minus MESHFED_* variables,
// so that a developer's shell settings do not leak into the CLI.
func environWithoutMeshfed() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MESHFED_") {
			env = append(env, kv)
		}
	}
	return env
}

// mustCLI runs the CLI against s and fails the test unless it exits 0.
func mustCLI(t *testing.T, c *testharness.Cluster, s *testharness.Server, args ...string) string {
	t.Helper()
	r := runCLI(testharness.Binary(t, "meshfed"), c, s, callTimeout, args...)
	if r.Err != nil {
		t.Fatalf("meshfed %s (via %s): %s", strings.Join(args, " "), s.NodeID, r)
	}
	return r.Stdout
}

// unmarshalJSON decodes the one JSON document a command printed.
func unmarshalJSON(t *testing.T, out string, m proto.Message) {
	t.Helper()
	if err := protojson.Unmarshal([]byte(out), m); err != nil {
		t.Fatalf("decoding %T from %q: %v", m, out, err)
	}
}

// listServices lists every service through the Go client (the CLI's
// "services list" has no --consistent flag), paging through the result.
func listServices(ctx context.Context, cl *client.Client, consistent bool) ([]*meshfedv1.Service, error) {
	var all []*meshfedv1.Service
	req := &meshfedv1.ListRequest{Page: &meshfedv1.PageRequest{PageSize: 1000}, Read: &meshfedv1.ReadOptions{Consistent: consistent}}
	for {
		resp, err := cl.Catalog.ListServices(ctx, req)
		if err != nil {
			return nil, err
		}
		all = append(all, resp.GetServices()...)
		if resp.GetNextPageToken() == "" {
			return all, nil
		}
		req.Page.PageToken = resp.GetNextPageToken()
	}
}

// versions maps "namespace/name" to version.
func versions(services []*meshfedv1.Service) map[string]uint64 {
	out := make(map[string]uint64, len(services))
	for _, s := range services {
		out[s.GetMeta().GetNamespace()+"/"+s.GetMeta().GetName()] = s.GetMeta().GetVersion()
	}
	return out
}

// diffVersions describes how got differs from want, or returns "".
func diffVersions(want, got map[string]uint64) string {
	var diffs []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s missing (want version %d)", k, v))
		} else if g != v {
			diffs = append(diffs, fmt.Sprintf("%s at version %d, want %d", k, g, v))
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s (version %d) unexpected", k, v))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 10 {
		diffs = append(diffs[:10], fmt.Sprintf("... and %d more", len(diffs)-10))
	}
	return strings.Join(diffs, "; ")
}

// apiCall runs fn with a fresh client for s (admin token) and a deadline.
// A fresh connection per call matters for paused servers: a reused one may
// already have a request queued in the kernel.
func apiCall(c *testharness.Cluster, s *testharness.Server, token string, timeout time.Duration, fn func(context.Context, *client.Client) error) error {
	cl, err := client.New(client.Config{Addr: s.APIAddr, Token: token, CAFile: c.CAFile})
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return fn(ctx, cl)
}

// statusCode is the gRPC code of err (context errors included).
func statusCode(err error) codes.Code {
	if errors.Is(err, context.DeadlineExceeded) {
		return codes.DeadlineExceeded
	}
	return status.Code(err)
}

// jsonDiff compares two JSON documents field by field and returns the
// paths that differ (at most 20).
func jsonDiff(want, got []byte) ([]string, error) {
	var w, g any
	if err := json.Unmarshal(want, &w); err != nil {
		return nil, fmt.Errorf("want: %w", err)
	}
	if err := json.Unmarshal(got, &g); err != nil {
		return nil, fmt.Errorf("got: %w", err)
	}
	var diffs []string
	diffValue("$", w, g, &diffs)
	return diffs, nil
}

func diffValue(path string, w, g any, diffs *[]string) {
	if len(*diffs) >= 20 {
		return
	}
	switch wv := w.(type) {
	case map[string]any:
		gv, ok := g.(map[string]any)
		if !ok {
			*diffs = append(*diffs, fmt.Sprintf("%s: want object, got %v", path, g))
			return
		}
		keys := map[string]bool{}
		for k := range wv {
			keys[k] = true
		}
		for k := range gv {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			a, aok := wv[k]
			b, bok := gv[k]
			switch {
			case !aok:
				*diffs = append(*diffs, fmt.Sprintf("%s.%s: unexpected, got %v", path, k, b))
			case !bok:
				*diffs = append(*diffs, fmt.Sprintf("%s.%s: missing, want %v", path, k, a))
			default:
				diffValue(path+"."+k, a, b, diffs)
			}
		}
	case []any:
		gv, ok := g.([]any)
		if !ok || len(gv) != len(wv) {
			*diffs = append(*diffs, fmt.Sprintf("%s: want %d items %v, got %v", path, len(wv), w, g))
			return
		}
		for i := range wv {
			diffValue(fmt.Sprintf("%s[%d]", path, i), wv[i], gv[i], diffs)
		}
	default:
		if !reflect.DeepEqual(w, g) {
			*diffs = append(*diffs, fmt.Sprintf("%s: want %v, got %v", path, w, g))
		}
	}
}
