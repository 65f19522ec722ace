package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/testharness"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// Raft reports through go-metrics under the "meshfed" prefix; the
// Prometheus sink flattens the keys (and the labels Raft adds, such as the
// peer) into names. The leader commits and applies; a follower receives
// AppendEntries. Both carry fresh samples right after a write.
var (
	leaderRaftMetrics   = []string{"meshfed_raft_commitTime", "meshfed_raft_apply"}
	followerRaftMetrics = []string{"meshfed_raft_rpc_appendEntries"}
)

// metricName is the name of a sample line in the Prometheus text format.
var metricName = regexp.MustCompile(`(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s`)

// httpsGet fetches https://<addr><path>, verifying the server with the
// cluster's CA bundle only (no client certificate, no token).
func httpsGet(caFile, addr, path string) (int, string, error) {
	roots, err := tlsutil.LoadCertificatesFile(caFile)
	if err != nil {
		return 0, "", err
	}
	hc := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsutil.APIClient(roots), DisableKeepAlives: true},
	}
	resp, err := hc.Get("https://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, string(body), err
}

// TestMetricsAndHealth: every server of a formed cluster answers /healthz
// and /readyz with 200 and serves Prometheus metrics with the API request
// counter and Raft's metrics over HTTPS verified by ca.pem; the gRPC API
// offers reflection (to token holders) and the standard health check (to
// anyone).
func TestMetricsAndHealth(t *testing.T) {
	skipShort(t)
	c := testharness.StartCluster(t, 3, testharness.ClusterOptions{Name: "east"})
	leader := c.Leader()
	// Every server answers an API call, so that each counts one.
	mustCLI(t, c, leader, "services", "register", "web", "--port", "80", "--protocol", "http")
	for _, s := range c.Servers {
		mustCLI(t, c, s, "status")
	}

	for _, s := range c.Servers {
		t.Run(s.NodeID, func(t *testing.T) {
			for _, path := range []string{"/healthz", "/readyz"} {
				code, body, err := httpsGet(c.CAFile, s.HTTPAddr, path)
				if err != nil || code != http.StatusOK {
					t.Fatalf("GET %s on %s: %d %q %v", path, s.NodeID, code, body, err)
				}
				var doc struct {
					Node  string `json:"node"`
					Ready *bool  `json:"ready"`
				}
				if err := json.Unmarshal([]byte(body), &doc); err != nil || doc.Node != s.NodeID {
					t.Errorf("GET %s on %s: %q (%v), want JSON naming node %s", path, s.NodeID, body, err, s.NodeID)
				}
				if path == "/readyz" && (doc.Ready == nil || !*doc.Ready) {
					t.Errorf("GET /readyz on %s: %q, want ready: true", s.NodeID, body)
				}
			}

			// Raft's gauges are emitted periodically: poll until they are.
			var names []string
			err := testharness.Poll(waitTimeout, func() error {
				code, body, err := httpsGet(c.CAFile, s.HTTPAddr, "/metrics")
				if err != nil {
					return err
				}
				if code != http.StatusOK {
					return fmt.Errorf("GET /metrics: %d", code)
				}
				names = names[:0]
				for _, m := range metricName.FindAllStringSubmatch(body, -1) {
					if !slices.Contains(names, m[1]) {
						names = append(names, m[1])
					}
				}
				if !strings.Contains(body, `meshfed_api_requests_total{`) {
					return fmt.Errorf("no meshfed_api_requests_total sample")
				}
				if !strings.Contains(body, "\nmeshfed_ca_bundle_watchers 0\n") || !strings.Contains(body, "\nmeshfed_ca_svids_issued_total 0\n") {
					return fmt.Errorf("no CA metrics (bundle watchers, SVIDs issued)")
				}
				want := followerRaftMetrics
				if s == leader {
					want = leaderRaftMetrics
				}
				for _, w := range want {
					if !slices.Contains(names, w) {
						return fmt.Errorf("no %s", w)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatalf("/metrics of %s (leader: %v): %v\nmetric names: %v", s.NodeID, s == leader, err, names)
			}
		})
	}

	// The leader counted the register call: method and code labels.
	_, body, err := httpsGet(c.CAFile, leader.HTTPAddr, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^meshfed_api_requests_total\{code="OK",method="/meshfed\.v1\.CatalogService/UpdateService"\} [1-9]`).MatchString(body) {
		t.Errorf("the leader's metrics do not count the UpdateService call:\n%s", grepLines(body, "meshfed_api_requests_total"))
	}

	t.Run("grpc health without a token", func(t *testing.T) {
		for _, s := range c.Servers {
			err := apiCall(c, s, "", 5*time.Second, func(ctx context.Context, cl *client.Client) error {
				resp, err := healthpb.NewHealthClient(cl.Conn).Check(ctx, &healthpb.HealthCheckRequest{})
				if err != nil {
					return err
				}
				if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					return fmt.Errorf("status %v, want SERVING", resp.GetStatus())
				}
				return nil
			})
			if err != nil {
				t.Errorf("health check of %s: %v", s.NodeID, err)
			}
		}
	})

	t.Run("reflection", func(t *testing.T) {
		list := func(token string) ([]string, error) {
			var names []string
			err := apiCall(c, leader, token, 5*time.Second, func(ctx context.Context, cl *client.Client) error {
				stream, err := reflectionpb.NewServerReflectionClient(cl.Conn).ServerReflectionInfo(ctx)
				if err != nil {
					return err
				}
				// A refused stream may end before the request is sent: Send
				// then reports io.EOF and Recv the stream's status.
				if err := stream.Send(&reflectionpb.ServerReflectionRequest{
					MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: ""},
				}); err != nil && !errors.Is(err, io.EOF) {
					return err
				}
				resp, err := stream.Recv()
				if err != nil {
					return err
				}
				for _, s := range resp.GetListServicesResponse().GetService() {
					names = append(names, s.GetName())
				}
				// Resolve one service to its file descriptor as well.
				if err := stream.Send(&reflectionpb.ServerReflectionRequest{
					MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "meshfed.v1.CatalogService"},
				}); err != nil {
					return err
				}
				resp, err = stream.Recv()
				if err != nil {
					return err
				}
				if len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
					return fmt.Errorf("no file descriptor for meshfed.v1.CatalogService: %v", resp)
				}
				return stream.CloseSend()
			})
			return names, err
		}
		names, err := list(c.AdminToken)
		if err != nil {
			t.Fatalf("reflection with the admin token: %v", err)
		}
		for _, want := range []string{
			meshfedv1.CatalogService_ServiceDesc.ServiceName, meshfedv1.PolicyService_ServiceDesc.ServiceName,
			meshfedv1.MeshSettingsService_ServiceDesc.ServiceName, meshfedv1.TokenService_ServiceDesc.ServiceName,
			meshfedv1.ClusterService_ServiceDesc.ServiceName, meshfedv1.CAService_ServiceDesc.ServiceName,
			"grpc.health.v1.Health",
		} {
			if !slices.Contains(names, want) {
				t.Errorf("reflection lists %v, missing %s", names, want)
			}
		}
		// Reflection describes the API: it needs a token.
		if _, err := list(""); statusCode(err) != codes.Unauthenticated {
			t.Errorf("reflection without a token: %v, want Unauthenticated", err)
		}
	})
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
