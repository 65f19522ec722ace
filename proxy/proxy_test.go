package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func TestParseUpstream(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Upstream
		wantErr string
	}{
		{in: "payments=127.0.0.1:9001", want: Upstream{Service: "payments", Namespace: "default", Listen: "127.0.0.1:9001"}},
		{in: "payments.billing=127.0.0.1:9001", want: Upstream{Service: "payments", Namespace: "billing", Listen: "127.0.0.1:9001"}},
		{in: "payments=:9001", want: Upstream{Service: "payments", Namespace: "default", Listen: ":9001"}},
		{in: "payments", wantErr: "want NAME[.NAMESPACE]=HOST:PORT"},
		{in: "=127.0.0.1:1", wantErr: "want NAME"},
		{in: "Payments=127.0.0.1:1", wantErr: "lower case"},
		{in: "payments.=127.0.0.1:1", wantErr: "namespace is required"},
		{in: "payments=127.0.0.1", wantErr: "want HOST:PORT"},
		{in: "payments=127.0.0.1:0", wantErr: "1-65535"},
		{in: "payments=example.com:80", wantErr: "must be an IP address"},
	} {
		got, err := ParseUpstream(tc.in, "default")
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseUpstream(%q) = %v, want an error containing %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseUpstream(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestConfigCheck(t *testing.T) {
	good := func() Config {
		return Config{Servers: []string{"127.0.0.1:7700"}, CAFile: "ca.pem", Token: "t", Service: "web", AppPort: 8080}
	}
	c := good()
	if err := c.check(); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	if c.Namespace != "default" || c.Listen != ":15443" || c.Admin != "127.0.0.1:15000" || c.HealthInterval != 2*time.Second || c.AppHost != "127.0.0.1" {
		t.Fatalf("defaults not filled in: %+v", c)
	}
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Servers = nil }, "--server: required"},
		{func(c *Config) { c.Servers = []string{"nohost"} }, `--server "nohost"`},
		{func(c *Config) { c.CAFile = "" }, "--ca-file: required"},
		{func(c *Config) { c.Token = "" }, "--token: required"},
		{func(c *Config) { c.Service = "" }, "--service"},
		{func(c *Config) { c.Namespace = "Bad" }, "--namespace"},
		{func(c *Config) { c.AppPort = 0 }, "--port"},
		{func(c *Config) { c.AppPort = 70000 }, "--port"},
		{func(c *Config) { c.Listen = "15443" }, "--listen"},
		{func(c *Config) { c.Address = "not-an-ip" }, "--address"},
		{func(c *Config) { c.Admin = "x" }, "--admin"},
		{func(c *Config) { c.HealthPath = "healthz" }, "--health-path"},
		{func(c *Config) { c.DrainDelay = -time.Second }, "--drain-delay"},
		{func(c *Config) {
			c.Upstreams = []Upstream{{Service: "a", Namespace: "default", Listen: "127.0.0.1:1"}, {Service: "a", Namespace: "default", Listen: "127.0.0.1:2"}}
		}, "given twice"},
		{func(c *Config) {
			c.Upstreams = []Upstream{{Service: "a", Namespace: "default", Listen: "127.0.0.1:1"}, {Service: "b", Namespace: "default", Listen: "127.0.0.1:1"}}
		}, "already used"},
	} {
		c := good()
		tc.mod(&c)
		err := c.check()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("check() = %v, want an error containing %q", err, tc.want)
		}
	}
	// Several problems are reported together.
	c = Config{}
	err := c.check()
	for _, want := range []string{"--server", "--ca-file", "--token", "--service", "--port"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("an empty config: %v lacks %s", err, want)
		}
	}
}

func testSet(groups ...[]string) *endpointSet {
	set := &endpointSet{}
	for i, g := range groups {
		var eps []*endpoint
		for _, a := range g {
			e := &endpoint{addr: a, cluster: string(rune('a' + i))}
			set.add(e)
			eps = append(eps, e)
		}
		set.groups = append(set.groups, eps)
	}
	return set
}

func TestPickFailoverAndEjection(t *testing.T) {
	u := &upstream{dest: "default/web"}
	set := testSet([]string{"l1", "l2"}, []string{"r1"})
	counts := map[string]int{}
	for range 100 {
		e, err := u.pick(set, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		counts[e.addr]++
	}
	if counts["l1"] != 50 || counts["l2"] != 50 || counts["r1"] != 0 {
		t.Fatalf("round robin over the local cluster: %v", counts)
	}
	// Ejected local endpoints are skipped; with all of them ejected, the
	// next cluster serves.
	set.lookup("l1").ejectedUntil.Store(time.Now().Add(time.Minute).UnixNano())
	for range 10 {
		if e, _ := u.pick(set, nil, ""); e.addr != "l2" {
			t.Fatalf("picked %s with l1 ejected", e.addr)
		}
	}
	set.lookup("l2").ejectedUntil.Store(time.Now().Add(time.Minute).UnixNano())
	if e, _ := u.pick(set, nil, ""); e.addr != "r1" {
		t.Fatalf("picked %s with the local cluster ejected, want the remote one", e.addr)
	}
	// With everything ejected, ejection is ignored rather than failing.
	set.lookup("r1").ejectedUntil.Store(time.Now().Add(time.Minute).UnixNano())
	if _, err := u.pick(set, nil, ""); err != nil {
		t.Fatalf("all ejected: %v", err)
	}
	// avoid: a retry goes elsewhere when it can.
	fresh := testSet([]string{"l1", "l2"})
	for range 10 {
		if e, _ := u.pick(fresh, fresh.lookup("l1"), ""); e.addr != "l2" {
			t.Fatalf("a retry avoiding l1 picked %s", e.addr)
		}
	}
	if _, err := u.pick(testSet(), nil, ""); err == nil || !strings.Contains(err.Error(), "no healthy endpoint of default/web") {
		t.Fatalf("no endpoints: %v", err)
	}
}

func TestLeastRequest(t *testing.T) {
	u := &upstream{dest: "default/web"}
	u.route.Store(&route{lb: meshfedv1.LoadBalancer_LOAD_BALANCER_LEAST_REQUEST})
	set := testSet([]string{"busy", "idle"})
	set.lookup("busy").inflight.Store(10)
	counts := map[string]int{}
	for range 1000 {
		e, _ := u.pick(set, nil, "")
		counts[e.addr]++
	}
	// The busy endpoint wins only when both random choices fall on it.
	if counts["busy"] > 350 || counts["idle"] < 650 {
		t.Fatalf("least request: %v", counts)
	}
}

func TestUpdateKeepsEndpointState(t *testing.T) {
	p := &Proxy{m: newMetrics()}
	u := newUpstream(p, Upstream{Service: "web", Namespace: "default", Listen: "127.0.0.1:1"})
	resp := func(eps ...*meshfedv1.Endpoint) *meshfedv1.ResolveResponse {
		return &meshfedv1.ResolveResponse{
			Service:  &meshfedv1.Service{Meta: &meshfedv1.Meta{Name: "web", Namespace: "default"}, Protocol: meshfedv1.Protocol_PROTOCOL_HTTP},
			Clusters: []*meshfedv1.ClusterEndpoints{{Cluster: "east", Endpoints: eps}},
		}
	}
	id := "spiffe://east.mesh/ns/default/sa/web"
	u.update(resp(
		&meshfedv1.Endpoint{Address: "10.0.0.1", Port: 15443, SpiffeId: id, Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY},
		&meshfedv1.Endpoint{Address: "10.0.0.2", Port: 15443, SpiffeId: id, Health: meshfedv1.HealthStatus_HEALTH_STATUS_UNKNOWN},
		&meshfedv1.Endpoint{Address: "10.0.0.3", Port: 15443, SpiffeId: "not an id", Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY},
	))
	set := u.set.Load()
	if set.healthy != 1 || set.lookup("10.0.0.1:15443") == nil {
		t.Fatalf("only the healthy endpoint with a valid identity is used: %+v", set.all)
	}
	if !u.resolved.Load() {
		t.Fatal("not marked resolved")
	}
	set.lookup("10.0.0.1:15443").inflight.Store(3)
	u.update(resp(
		&meshfedv1.Endpoint{Address: "10.0.0.1", Port: 15443, SpiffeId: id, Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY},
		&meshfedv1.Endpoint{Address: "10.0.0.4", Port: 15443, SpiffeId: id, Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY},
	))
	if got := u.set.Load().lookup("10.0.0.1:15443").inflight.Load(); got != 3 {
		t.Fatalf("in-flight count after an update: %d, want 3", got)
	}
}

func TestGRPCMessageEncode(t *testing.T) {
	if got := grpcMessageEncode("denied 100% ünïcode\n"); got != "denied 100%25 %C3%BCn%C3%AFcode%0A" {
		t.Fatalf("grpcMessageEncode = %q", got)
	}
}

func TestNamespaceOf(t *testing.T) {
	for in, want := range map[string]string{
		"spiffe://east.mesh/ns/default/sa/web": "default",
		"spiffe://east.mesh/meshfed/server/s1": "",
		"spiffe://east.mesh/ns/default/sa":     "",
	} {
		ns, _ := namespaceOf(spiffeid.RequireFromString(in))
		if ns != want {
			t.Errorf("namespaceOf(%s) = %q, want %q", in, ns, want)
		}
	}
}

func TestDefaultInstance(t *testing.T) {
	for _, tc := range []struct {
		svc, host string
		port      int
		want      string
	}{
		{"web", "vm", 15443, "web-vm-15443"},
		{"web", "Node_7.example.com", 15443, "web-node-7-15443"},
		{"web", "---", 1, "web-1"},
		{"web", strings.Repeat("h", 100), 15443, "web-" + strings.Repeat("h", 53) + "-15443"},
	} {
		got := defaultInstance(tc.svc, tc.host, tc.port)
		if got != tc.want || dnsLabel("instance", got) != nil || len(got) > 63 {
			t.Errorf("defaultInstance(%q, %q, %d) = %q, want %q", tc.svc, tc.host, tc.port, got, tc.want)
		}
	}
}

// When every attempt fails, the error of the last one is returned (never a
// nil response without an error), and the endpoints that refused are
// ejected.
func TestRoundTripAllEndpointsRefuse(t *testing.T) {
	p := &Proxy{m: newMetrics(), log: slog.New(slog.DiscardHandler)}
	u := newUpstream(p, Upstream{Service: "web", Namespace: "default", Listen: "127.0.0.1:1"})
	var addrs []string
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		ln.Close() // nothing listens there any more: connections are refused
	}
	id := "spiffe://east.mesh/ns/default/sa/web"
	var eps []*meshfedv1.Endpoint
	for _, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		n, _ := strconv.Atoi(port)
		eps = append(eps, &meshfedv1.Endpoint{Address: host, Port: uint32(n), SpiffeId: id, Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY})
	}
	u.update(&meshfedv1.ResolveResponse{
		Service:  &meshfedv1.Service{Meta: &meshfedv1.Meta{Name: "web", Namespace: "default"}, Protocol: meshfedv1.Protocol_PROTOCOL_HTTP},
		Clusters: []*meshfedv1.ClusterEndpoints{{Cluster: "east", Endpoints: eps}},
	})
	u.http.Store(u.newHTTPSide())
	req := httptest.NewRequest(http.MethodPost, "https://default/web/x", strings.NewReader("body"))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("body")), nil }
	resp, err := u.roundTrip(req)
	if resp != nil || err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("roundTrip = %v, %v; want a connection-refused error", resp, err)
	}
	now := time.Now().UnixNano()
	for _, a := range addrs {
		if u.set.Load().lookup(a).ejectedUntil.Load() <= now {
			t.Errorf("endpoint %s was not ejected", a)
		}
	}
}

// TestEndpointSetIndex: a set is searched while small and indexed once
// it grows; either way a repeated address is refused and every identity
// is listed once.
func TestEndpointSetIndex(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://east.mesh/ns/default/sa/web")
	other := spiffeid.RequireFromString("spiffe://west.mesh/ns/default/sa/web")
	set := &endpointSet{}
	for i := range 20 {
		eid := id
		if i%2 == 1 {
			eid = other
		}
		addr := fmt.Sprintf("10.0.0.%d:15443", i)
		if !set.add(&endpoint{addr: addr, id: eid}) {
			t.Fatalf("add %s refused", addr)
		}
		if set.add(&endpoint{addr: addr, id: eid}) {
			t.Fatalf("a second %s was added", addr)
		}
		if indexed := set.byAddr != nil; indexed != (i >= smallSet) {
			t.Fatalf("%d endpoints: indexed = %v", i+1, indexed)
		}
		for j := 0; j <= i; j++ {
			a := fmt.Sprintf("10.0.0.%d:15443", j)
			if ep := set.lookup(a); ep == nil || ep.addr != a {
				t.Fatalf("%d endpoints: lookup(%s) = %v", i+1, a, ep)
			}
		}
	}
	if set.lookup("10.0.0.99:15443") != nil || (*endpointSet)(nil).lookup("x") != nil {
		t.Fatal("lookup of an unknown address found something")
	}
	if len(set.all) != 20 || len(set.ids) != 2 {
		t.Fatalf("all = %d, ids = %v", len(set.all), set.ids)
	}
}
