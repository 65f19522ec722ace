package e2e

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/testharness"
)

// The peering of TestFederationSurvivesLeaderKills: east accepts (it makes
// the token, for cluster west, so east calls the peering "west") and west
// dials (it calls the peering "east"). West's leader therefore owns the
// stream; east's leader serves it.
const (
	fedPeerOnEast = "west"
	fedPeerOnWest = "east"
	fedWestTD     = "west.mesh"
	// Log lines of the side that dialed and of the side that accepted, once
	// a peer stream is up.
	fedDialedLog   = `msg="connected to peer"`
	fedAcceptedLog = `msg="peer connected"`
)

// fedWorkload is one workload of west as the test wrote it.
type fedWorkload struct {
	addr    string
	port    uint32
	zone    string
	version string
	health  meshfedv1.HealthStatus
}

// fedService is one service of west as the test wrote it: its record (if
// registered), its export to east (if exported) and its workloads.
type fedService struct {
	ns, name   string
	port       uint32
	protocol   meshfedv1.Protocol
	registered bool
	exported   bool
	workloads  map[string]fedWorkload
}

// fedModel is what west holds after every acknowledged write, keyed
// "namespace/name".
type fedModel map[string]*fedService

func (m fedModel) svc(ns, name string) *fedService {
	k := ns + "/" + name
	s := m[k]
	if s == nil {
		s = &fedService{ns: ns, name: name, workloads: map[string]fedWorkload{}}
		m[k] = s
	}
	return s
}

// fedImportView is a service as east must import it: the service's port and
// protocol and its endpoints, one string each, sorted.
type fedImportView struct {
	Port      uint32
	Protocol  meshfedv1.Protocol
	Endpoints []string
}

func fedEndpointString(addr string, port uint32, loc *meshfedv1.Locality, h meshfedv1.HealthStatus, id, version string) string {
	return fmt.Sprintf("%s:%d %s/%s %s %s v=%s", addr, port, loc.GetRegion(), loc.GetZone(), h, id, version)
}

// want is what east must import: every registered and exported service of
// west with its healthy workloads.
func (m fedModel) want() map[string]fedImportView {
	out := map[string]fedImportView{}
	for k, s := range m {
		if !s.registered || !s.exported {
			continue
		}
		v := fedImportView{Port: s.port, Protocol: s.protocol, Endpoints: []string{}}
		for _, w := range s.workloads {
			if w.health != meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY {
				continue
			}
			v.Endpoints = append(v.Endpoints, fedEndpointString(w.addr, w.port, &meshfedv1.Locality{Region: "eu", Zone: w.zone},
				meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY, "spiffe://"+fedWestTD+"/ns/"+s.ns+"/sa/"+s.name, w.version))
		}
		sort.Strings(v.Endpoints)
		out[k] = v
	}
	return out
}

// exportCount is how many exports of west name the peering with east
// (registered services or not).
func (m fedModel) exportCount() int {
	n := 0
	for _, s := range m {
		if s.exported {
			n++
		}
	}
	return n
}

// fedDiffImports describes how got differs from want, or returns "".
func fedDiffImports(want, got map[string]fedImportView) string {
	var diffs []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s missing (want %+v)", k, w))
		case !reflect.DeepEqual(w, g):
			diffs = append(diffs, fmt.Sprintf("%s is %+v, want %+v", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s (%+v) unexpected", k, g))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 8 {
		diffs = append(diffs[:8], fmt.Sprintf("... and %d more", len(diffs)-8))
	}
	return strings.Join(diffs, "; ")
}

// fedSortedEndpoints turns endpoints into sorted strings and reports repeats.
func fedSortedEndpoints(eps []*meshfedv1.Endpoint) (out []string, repeated []string) {
	seen := map[string]bool{}
	out = []string{}
	for _, e := range eps {
		s := fedEndpointString(e.GetAddress(), e.GetPort(), e.GetLocality(), e.GetHealth(), e.GetSpiffeId(), e.GetVersion())
		if seen[s] {
			repeated = append(repeated, s)
		}
		seen[s] = true
		out = append(out, s)
	}
	sort.Strings(out)
	return out, repeated
}

// fedOp is one write to west, retried until acknowledged. apply records its
// effect in the model once west acknowledged it. A deletion that meets
// NotFound after a failed attempt counts as acknowledged: the failed attempt
// was applied.
type fedOp struct {
	desc     string
	call     func(context.Context, *client.Client) error
	apply    func(fedModel)
	deletion bool
}

func fedPutService(ns, name string, port uint32, protocol meshfedv1.Protocol) fedOp {
	return fedOp{
		desc: fmt.Sprintf("register %s/%s port %d %s", ns, name, port, protocol),
		call: func(ctx context.Context, cl *client.Client) error {
			_, err := cl.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{AllowMissing: true, Service: &meshfedv1.Service{
				Meta: &meshfedv1.Meta{Namespace: ns, Name: name}, Port: port, Protocol: protocol}})
			return err
		},
		apply: func(m fedModel) {
			s := m.svc(ns, name)
			s.registered, s.port, s.protocol = true, port, protocol
		},
	}
}

func fedDeleteService(ns, name string) fedOp {
	return fedOp{
		desc: fmt.Sprintf("delete service %s/%s", ns, name),
		call: func(ctx context.Context, cl *client.Client) error {
			_, err := cl.Catalog.DeleteService(ctx, &meshfedv1.DeleteRequest{Namespace: ns, Name: name})
			return err
		},
		apply:    func(m fedModel) { m.svc(ns, name).registered = false },
		deletion: true,
	}
}

func fedPutWorkload(ns, svc, name string, w fedWorkload) fedOp {
	return fedOp{
		desc: fmt.Sprintf("put workload %s/%s of %s: %s:%d %s v=%s %s", ns, name, svc, w.addr, w.port, w.zone, w.version, w.health),
		call: func(ctx context.Context, cl *client.Client) error {
			_, err := cl.Catalog.UpdateWorkload(ctx, &meshfedv1.UpdateWorkloadRequest{AllowMissing: true, Workload: &meshfedv1.Workload{
				Meta: &meshfedv1.Meta{Namespace: ns, Name: name}, Service: svc, Address: w.addr, Port: w.port,
				Locality: &meshfedv1.Locality{Region: "eu", Zone: w.zone}, Health: w.health, Version: w.version}})
			return err
		},
		apply: func(m fedModel) { m.svc(ns, svc).workloads[name] = w },
	}
}

func fedDeleteWorkload(ns, svc, name string) fedOp {
	return fedOp{
		desc: fmt.Sprintf("delete workload %s/%s of %s", ns, name, svc),
		call: func(ctx context.Context, cl *client.Client) error {
			_, err := cl.Catalog.DeleteWorkload(ctx, &meshfedv1.DeleteRequest{Namespace: ns, Name: name})
			return err
		},
		apply:    func(m fedModel) { delete(m.svc(ns, svc).workloads, name) },
		deletion: true,
	}
}

func fedExport(ns, name string) fedOp {
	return fedOp{
		desc: fmt.Sprintf("export %s/%s to %s", ns, name, fedPeerOnWest),
		call: func(ctx context.Context, cl *client.Client) error {
			_, err := cl.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
				Meta: &meshfedv1.Meta{Namespace: ns, Name: name}, Peers: []string{fedPeerOnWest}}})
			return err
		},
		apply: func(m fedModel) { m.svc(ns, name).exported = true },
	}
}

func fedUnexport(ns, name string) fedOp {
	return fedOp{
		desc: fmt.Sprintf("unexport %s/%s", ns, name),
		call: func(ctx context.Context, cl *client.Client) error {
			_, err := cl.Peering.DeleteServiceExport(ctx, &meshfedv1.DeleteRequest{Namespace: ns, Name: name})
			return err
		},
		apply:    func(m fedModel) { m.svc(ns, name).exported = false },
		deletion: true,
	}
}

// fedWriter applies ops to west one after the other, each through a
// running server (a follower forwards to the leader), retrying an op that
// fails the way an election explains on the next server until it is
// acknowledged.
type fedWriter struct {
	c     *testharness.Cluster
	model fedModel

	acked    int
	failures int
	// lastFailure is the last failed attempt, for the log.
	lastFailure string
	// firstAckAfter is when the first op of the last run was acknowledged,
	// counted from the run's start.
	firstAckAfter time.Duration
}

// fedRetryable are the codes an election (or a dead server) explains.
var fedRetryable = map[codes.Code]bool{codes.Unavailable: true, codes.DeadlineExceeded: true, codes.Aborted: true}

func (w *fedWriter) run(t *testing.T, ops []fedOp) {
	t.Helper()
	start := time.Now()
	w.firstAckAfter = 0
	for i, op := range ops {
		failed := false
		deadline := time.Now().Add(20 * time.Second)
		for attempt := 0; ; attempt++ {
			live := fedRunning(w.c)
			if len(live) == 0 {
				t.Fatalf("%s: no server of %s is running", op.desc, w.c.Name)
			}
			s := live[(i+attempt)%len(live)]
			err := apiCall(w.c, s, w.c.AdminToken, 3*time.Second, op.call)
			if err == nil || (op.deletion && failed && statusCode(err) == codes.NotFound) {
				op.apply(w.model)
				w.acked++
				if w.firstAckAfter == 0 {
					w.firstAckAfter = time.Since(start)
				}
				break
			}
			w.failures++
			w.lastFailure = fmt.Sprintf("%s via %s: %v", op.desc, s.NodeID, err)
			if !fedRetryable[statusCode(err)] {
				t.Fatalf("%s via %s: refused with %v (no election explains %s)", op.desc, s.NodeID, err, statusCode(err))
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not acknowledged within 20s, last error via %s: %v", op.desc, s.NodeID, err)
			}
			failed = true
			// A follower refuses at once while it still takes the dead
			// server for the leader: do not spin.
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// fedRunning returns the running servers of c.
func fedRunning(c *testharness.Cluster) []*testharness.Server {
	var live []*testharness.Server
	for _, s := range c.Servers {
		if s.Running() {
			live = append(live, s)
		}
	}
	return live
}

// fedListAllPages calls list with page tokens until the last page.
func fedListAllPages(list func(token string) (next string, err error)) error {
	token := ""
	for {
		next, err := list(token)
		if err != nil || next == "" {
			return err
		}
		token = next
	}
}

// fedWestExports reads west's state with consistent reads and computes what
// it exports to east, the way east must import it, and how many exports
// name east.
func fedWestExports(ctx context.Context, cl *client.Client) (map[string]fedImportView, int, error) {
	read := &meshfedv1.ReadOptions{Consistent: true}
	services := map[string]*meshfedv1.Service{}
	err := fedListAllPages(func(tok string) (string, error) {
		resp, err := cl.Catalog.ListServices(ctx, &meshfedv1.ListRequest{Page: &meshfedv1.PageRequest{PageSize: 1000, PageToken: tok}, Read: read})
		for _, s := range resp.GetServices() {
			services[s.GetMeta().GetNamespace()+"/"+s.GetMeta().GetName()] = s
		}
		return resp.GetNextPageToken(), err
	})
	if err != nil {
		return nil, 0, err
	}
	endpoints := map[string][]*meshfedv1.Endpoint{}
	err = fedListAllPages(func(tok string) (string, error) {
		resp, err := cl.Catalog.ListWorkloads(ctx, &meshfedv1.ListRequest{Page: &meshfedv1.PageRequest{PageSize: 1000, PageToken: tok}, Read: read})
		for _, w := range resp.GetWorkloads() {
			if h := w.GetHealth(); h == meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY || h == meshfedv1.HealthStatus_HEALTH_STATUS_UNKNOWN {
				continue
			}
			k := w.GetMeta().GetNamespace() + "/" + w.GetService()
			endpoints[k] = append(endpoints[k], &meshfedv1.Endpoint{Address: w.GetAddress(), Port: w.GetPort(), Locality: w.GetLocality(),
				Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY, SpiffeId: w.GetSpiffeId(), Version: w.GetVersion()})
		}
		return resp.GetNextPageToken(), err
	})
	if err != nil {
		return nil, 0, err
	}
	out := map[string]fedImportView{}
	exports := 0
	err = fedListAllPages(func(tok string) (string, error) {
		resp, err := cl.Peering.ListServiceExports(ctx, &meshfedv1.ListRequest{Page: &meshfedv1.PageRequest{PageSize: 1000, PageToken: tok}, Read: read})
		for _, e := range resp.GetExports() {
			if !slices.Contains(e.GetPeers(), fedPeerOnWest) {
				continue
			}
			exports++
			k := e.GetMeta().GetNamespace() + "/" + e.GetMeta().GetName()
			s, ok := services[k]
			if !ok {
				continue
			}
			eps, _ := fedSortedEndpoints(endpoints[k])
			out[k] = fedImportView{Port: s.GetPort(), Protocol: s.GetProtocol(), Endpoints: eps}
		}
		return resp.GetNextPageToken(), err
	})
	return out, exports, err
}

// fedEastImports lists east's imports with a consistent read (served by
// east's leader) and returns them keyed "namespace/service", with what is
// wrong besides their content: a service imported twice, an endpoint
// repeated, a wrong name, peer or trust domain, a stale mark.
func fedEastImports(ctx context.Context, cl *client.Client) (map[string]fedImportView, []string, error) {
	out := map[string]fedImportView{}
	var problems []string
	err := fedListAllPages(func(tok string) (string, error) {
		resp, err := cl.Peering.ListImportedServices(ctx, &meshfedv1.ListRequest{
			Page: &meshfedv1.PageRequest{PageSize: 1000, PageToken: tok}, Read: &meshfedv1.ReadOptions{Consistent: true}})
		for _, imp := range resp.GetServices() {
			m, svc := imp.GetMeta(), imp.GetService()
			k := m.GetNamespace() + "/" + svc.GetMeta().GetName()
			if _, dup := out[k]; dup {
				problems = append(problems, fmt.Sprintf("%s imported twice (again as %s)", k, m.GetName()))
			}
			if m.GetName() != fedPeerOnEast+"."+svc.GetMeta().GetName() || svc.GetMeta().GetNamespace() != m.GetNamespace() ||
				m.GetPeer() != fedPeerOnEast || imp.GetPeerCluster() != "west" || imp.GetPeerTrustDomain() != fedWestTD {
				problems = append(problems, fmt.Sprintf("%s: import %s/%s of peer %q, cluster %q, trust domain %q", k,
					m.GetNamespace(), m.GetName(), m.GetPeer(), imp.GetPeerCluster(), imp.GetPeerTrustDomain()))
			}
			if imp.GetStale() {
				problems = append(problems, k+" is marked stale")
			}
			eps, repeated := fedSortedEndpoints(imp.GetEndpoints())
			if len(repeated) > 0 {
				problems = append(problems, fmt.Sprintf("%s: repeated endpoints %v", k, repeated))
			}
			out[k] = fedImportView{Port: svc.GetPort(), Protocol: svc.GetProtocol(), Endpoints: eps}
		}
		return resp.GetNextPageToken(), err
	})
	return out, problems, err
}

// fedPeeringSummary is a peering's state in one line, without its bundle.
func fedPeeringSummary(p *meshfedv1.Peering) string {
	return fmt.Sprintf("%s cluster %q dialer=%t last_sync %s imported %d exported %d error %q", p.GetState(), p.GetPeerCluster(), p.GetDialer(),
		p.GetLastSync().AsTime().Format(time.RFC3339Nano), p.GetImportedServices(), p.GetExportedServices(), p.GetLastError())
}

// fedLeaderOf returns the running server that reports itself leader with the
// highest term, or an error; unlike Cluster.Leader it never fails the test,
// so it may run on any goroutine.
func fedLeaderOf(c *testharness.Cluster) (*testharness.Server, error) {
	var leader *testharness.Server
	var best uint64
	for _, s := range fedRunning(c) {
		// A server that does not answer is not the leader.
		_ = apiCall(c, s, c.AdminToken, 2*time.Second, func(ctx context.Context, cl *client.Client) error {
			st, err := cl.Cluster.GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{})
			if err == nil && st.GetRaftState() == "Leader" && st.GetLeaderId() == s.NodeID && st.GetTerm() >= best {
				leader, best = s, st.GetTerm()
			}
			return err
		})
	}
	if leader == nil {
		return nil, fmt.Errorf("no running server of %s reports itself leader", c.Name)
	}
	return leader, nil
}

// TestFederationSurvivesLeaderKills: kill the leader on either side of a
// peering, while west keeps changing what it exports; the peer stream
// resumes on the new leader, and east ends up importing exactly what west
// exports: every acknowledged change, nothing unexported, no service
// imported twice, no endpoint repeated.
//
// East accepts the peering (it makes the token) and west dials, so killing
// west's leader kills the stream's owner (west's new leader must dial
// again) and killing east's leader kills the server that received and
// stored the imports (west must find east's new leader).
func TestFederationSurvivesLeaderKills(t *testing.T) {
	skipShort(t)
	testStart := time.Now()
	east := testharness.StartCluster(t, 3, testharness.ClusterOptions{Name: "east", LogLevel: "info"})
	west := testharness.StartCluster(t, 3, testharness.ClusterOptions{Name: "west", LogLevel: "info"})
	t.Logf("two clusters of 3 servers started in %s", time.Since(testStart).Round(time.Millisecond))

	establishAt := time.Now()
	token := strings.TrimSpace(mustCLI(t, east, east.Leader(), "peering", "token", "--peer", fedPeerOnEast))
	mustCLI(t, west, west.Leader(), "peering", "establish", "--peer", fedPeerOnWest, "--token", token)

	// 20 services in two namespaces, with two or three healthy workloads
	// each; every fourth has an unhealthy one more, which is not exported.
	w := &fedWriter{c: west, model: fedModel{}}
	var setup []fedOp
	nsOf := func(i int) string {
		if i < 10 {
			return "default"
		}
		return "shop"
	}
	svcName := func(i int) string { return fmt.Sprintf("svc-%02d", i) }
	wlName := func(i, k int) string { return fmt.Sprintf("svc-%02d-w%d", i, k) }
	healthy := meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY
	unhealthy := meshfedv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
	for i := range 20 {
		ns, name := nsOf(i), svcName(i)
		setup = append(setup, fedPutService(ns, name, uint32(8000+i), meshfedv1.Protocol_PROTOCOL_HTTP))
		for k := range 2 + i%2 {
			setup = append(setup, fedPutWorkload(ns, name, wlName(i, k), fedWorkload{
				addr: fmt.Sprintf("10.1.%d.%d", i, k+1), port: uint32(9000 + i), zone: fmt.Sprintf("eu-%d", k%2), version: "v1", health: healthy}))
		}
		if i%4 == 2 {
			setup = append(setup, fedPutWorkload(ns, name, wlName(i, 9), fedWorkload{
				addr: fmt.Sprintf("10.1.%d.99", i), port: uint32(9000 + i), zone: "eu-0", version: "v1", health: unhealthy}))
		}
		setup = append(setup, fedExport(ns, name))
	}
	setupStart := time.Now()
	w.run(t, setup)
	t.Logf("west: %d writes of the initial state acknowledged in %s", len(setup), time.Since(setupStart).Round(time.Millisecond))

	// converged waits until east imports exactly what the model says west
	// exports, west's own state agrees with the model, both peerings are
	// active and synced after since, and every running east server resolves
	// each service to west's endpoints.
	converged := func(phase string, since time.Time) {
		t.Helper()
		want := w.model.want()
		exportCount := w.model.exportCount()
		// West first: every acknowledged write is there, nothing else.
		var westView map[string]fedImportView
		var westExportCount int
		err := testharness.Poll(waitTimeout, func() error {
			s, err := fedLeaderOf(west)
			if err != nil {
				return err
			}
			return apiCall(west, s, west.AdminToken, 5*time.Second, func(ctx context.Context, cl *client.Client) error {
				var err error
				westView, westExportCount, err = fedWestExports(ctx, cl)
				return err
			})
		})
		if err != nil {
			t.Fatalf("%s: reading west: %v", phase, err)
		}
		if d := fedDiffImports(want, westView); d != "" || westExportCount != exportCount {
			t.Fatalf("%s: west's exports differ from the acknowledged writes (%d exports, want %d): %s", phase, westExportCount, exportCount, d)
		}

		waitStart := time.Now()
		var lastState string
		err = testharness.Poll(waitTimeout, func() error {
			live := fedRunning(east)
			// A consistent read through the last running server: a
			// follower forwards it to east's leader.
			via := live[len(live)-1]
			err := apiCall(east, via, east.AdminToken, 5*time.Second, func(ctx context.Context, cl *client.Client) error {
				p, err := cl.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: fedPeerOnEast, Read: &meshfedv1.ReadOptions{Consistent: true}})
				if err != nil {
					return fmt.Errorf("peering %s on east via %s: %w", fedPeerOnEast, via.NodeID, err)
				}
				lastState = fedPeeringSummary(p)
				got, problems, err := fedEastImports(ctx, cl)
				if err != nil {
					return fmt.Errorf("listing imports via %s: %w", via.NodeID, err)
				}
				if len(problems) > 0 {
					return fmt.Errorf("imports in east: %s", strings.Join(problems, "; "))
				}
				if d := fedDiffImports(want, got); d != "" {
					return fmt.Errorf("imports in east (%d, want %d): %s", len(got), len(want), d)
				}
				// Read again now that the imports match.
				p, err = cl.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: fedPeerOnEast, Read: &meshfedv1.ReadOptions{Consistent: true}})
				if err != nil {
					return fmt.Errorf("peering %s on east via %s: %w", fedPeerOnEast, via.NodeID, err)
				}
				lastState = fedPeeringSummary(p)
				if p.GetState() != meshfedv1.PeeringState_PEERING_STATE_ACTIVE || p.GetDialer() || p.GetPeerCluster() != "west" ||
					!p.GetLastSync().AsTime().After(since) || p.GetLastError() != "" || int(p.GetImportedServices()) != len(want) || p.GetExportedServices() != 0 {
					return fmt.Errorf("peering %s on east: %s; want active, synced after %s, %d imported", fedPeerOnEast, lastState,
						since.UTC().Format(time.RFC3339Nano), len(want))
				}
				return nil
			})
			if err != nil {
				return err
			}
			err = apiCall(west, fedRunning(west)[0], west.AdminToken, 5*time.Second, func(ctx context.Context, cl *client.Client) error {
				p, err := cl.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: fedPeerOnWest, Read: &meshfedv1.ReadOptions{Consistent: true}})
				if err != nil {
					return fmt.Errorf("peering %s on west: %w", fedPeerOnWest, err)
				}
				if p.GetState() != meshfedv1.PeeringState_PEERING_STATE_ACTIVE || !p.GetDialer() || p.GetPeerCluster() != "east" ||
					!p.GetLastSync().AsTime().After(since) || p.GetLastError() != "" || p.GetImportedServices() != 0 || int(p.GetExportedServices()) != exportCount {
					return fmt.Errorf("peering %s on west: %s; want active, synced after %s, %d exported", fedPeerOnWest, fedPeeringSummary(p),
						since.UTC().Format(time.RFC3339Nano), exportCount)
				}
				return nil
			})
			if err != nil {
				return err
			}
			// Every running east server resolves every service west ever
			// had to exactly its exported endpoints, or not at all.
			for _, s := range live {
				err := apiCall(east, s, east.AdminToken, 5*time.Second, func(ctx context.Context, cl *client.Client) error {
					for k, svc := range w.model {
						resp, err := cl.Catalog.Resolve(ctx, &meshfedv1.ResolveRequest{Namespace: svc.ns, Name: svc.name})
						v, exported := want[k]
						if !exported {
							if statusCode(err) != codes.NotFound {
								return fmt.Errorf("resolve %s on east's %s: %v, %v; want NotFound (west does not export it)", k, s.NodeID, resp, err)
							}
							continue
						}
						if err != nil {
							return fmt.Errorf("resolve %s on east's %s: %w", k, s.NodeID, err)
						}
						cs := resp.GetClusters()
						if len(cs) != 1 || cs[0].GetCluster() != "west" || cs[0].GetPeer() != fedPeerOnEast || cs[0].GetStale() {
							return fmt.Errorf("resolve %s on east's %s: clusters %v", k, s.NodeID, cs)
						}
						eps, repeated := fedSortedEndpoints(cs[0].GetEndpoints())
						if len(repeated) > 0 || !reflect.DeepEqual(eps, v.Endpoints) || resp.GetService().GetPort() != v.Port {
							return fmt.Errorf("resolve %s on east's %s: port %d endpoints %v, want port %d endpoints %v", k, s.NodeID, resp.GetService().GetPort(), eps, v.Port, v.Endpoints)
						}
					}
					return nil
				})
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: east did not converge on west's exports: %v (last peering state %s)", phase, err, lastState)
		}
		t.Logf("%s: east converged on %d imported services (%d exports) after %s of waiting; peering on east: %s",
			phase, len(want), exportCount, time.Since(waitStart).Round(time.Millisecond), lastState)
	}
	converged("initial sync", establishAt)

	// logCounts counts a log line in every server's log.
	logCounts := func(c *testharness.Cluster, line string) map[string]int {
		out := map[string]int{}
		for _, s := range c.Servers {
			out[s.NodeID] = strings.Count(s.Log(), line)
		}
		return out
	}

	// killLeader kills side's leader, which must be running the peer stream
	// (streamLog in its log), then makes the changes ops in west while side
	// elects a new leader, waits for exact convergence, checks that the new
	// leader runs the stream, and makes one more change that must arrive
	// too (the resumed stream keeps working).
	killLeader := func(phase string, side *testharness.Cluster, streamLog string, ops []fedOp, after fedOp) {
		t.Helper()
		var victim *testharness.Server
		if err := testharness.Poll(waitTimeout, func() error {
			victim = side.Leader()
			if !strings.Contains(victim.Log(), streamLog) {
				return fmt.Errorf("%s's leader %s has not logged %s: it does not run the peer stream", side.Name, victim.NodeID, streamLog)
			}
			return nil
		}); err != nil {
			t.Fatalf("%s: %v", phase, err)
		}
		before := logCounts(side, streamLog)
		elected := make(chan time.Duration, 1)
		killAt := time.Now()
		if err := victim.Kill(); err != nil {
			t.Fatal(err)
		}
		// Measures the election without touching t.
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			err := testharness.Poll(waitTimeout, func() error {
				select {
				case <-stop:
					return nil
				default:
				}
				l, err := fedLeaderOf(side)
				if err == nil && l == victim {
					err = fmt.Errorf("the killed server still leads")
				}
				return err
			})
			if err != nil {
				elected <- -1
				return
			}
			elected <- time.Since(killAt)
		}()
		acked, failures := w.acked, w.failures
		w.lastFailure = "none"
		w.run(t, ops)
		t.Logf("%s: killed %s's leader %s; %d changes in west acknowledged in %s (first after %s), %d failed attempts retried (last: %s)",
			phase, side.Name, victim.NodeID, w.acked-acked, time.Since(killAt).Round(time.Millisecond), w.firstAckAfter.Round(time.Millisecond),
			w.failures-failures, w.lastFailure)
		var election time.Duration
		select {
		case election = <-elected:
		case <-time.After(waitTimeout + 10*time.Second):
		}
		if election <= 0 {
			t.Fatalf("%s: %s elected no new leader", phase, side.Name)
		}
		newLeader := side.Leader()
		t.Logf("%s: %s's new leader %s elected %s after the kill", phase, side.Name, newLeader.NodeID, election.Round(time.Millisecond))

		converged(phase, killAt)
		resumed, ok := fedNthLogTime(newLeader.Log(), streamLog, before[newLeader.NodeID]+1)
		if !ok {
			t.Fatalf("%s: %s's new leader %s did not log %s after the kill", phase, side.Name, newLeader.NodeID, streamLog)
		}
		t.Logf("%s: the peer stream resumed on %s %s after the kill", phase, newLeader.NodeID, resumed.Sub(killAt).Round(time.Millisecond))
		w.run(t, []fedOp{after})
		converged(phase+", one more change", killAt)
	}

	// Changes while west (the dialer) elects a new leader: ports, a new
	// workload, a deleted one, an unexported service, a service's port,
	// health both ways, a new service exported before it is registered, a
	// deleted service whose export stays, an endpoint that moves, a new
	// zone and version.
	m := w.model
	ws := func(i int) *fedService { return m.svc(nsOf(i), svcName(i)) }
	wl := func(i, k int) fedWorkload { return ws(i).workloads[wlName(i, k)] }
	var westKillOps []fedOp
	for _, k := range fedSortedKeys(ws(0).workloads) {
		x := ws(0).workloads[k]
		x.port += 1000
		westKillOps = append(westKillOps, fedPutWorkload(nsOf(0), svcName(0), k, x))
	}
	x := wl(2, 0)
	x.health = unhealthy
	y := wl(6, 9)
	y.health = healthy
	z := wl(10, 1)
	z.addr = "10.2.10.2"
	v := wl(12, 0)
	v.zone, v.version = "eu-2", "v2"
	westKillOps = append(westKillOps,
		fedPutWorkload(nsOf(1), svcName(1), wlName(1, 5), fedWorkload{addr: "10.2.1.5", port: 9001, zone: "eu-1", version: "v1", health: healthy}),
		fedDeleteWorkload(nsOf(3), svcName(3), wlName(3, 1)),
		fedUnexport(nsOf(4), svcName(4)),
		fedPutService(nsOf(5), svcName(5), 7005, meshfedv1.Protocol_PROTOCOL_HTTP),
		fedPutWorkload(nsOf(2), svcName(2), wlName(2, 0), x),
		fedPutWorkload(nsOf(6), svcName(6), wlName(6, 9), y),
		fedExport("shop", "new-a"),
		fedPutService("shop", "new-a", 7100, meshfedv1.Protocol_PROTOCOL_GRPC),
		fedPutWorkload("shop", "new-a", "new-a-w0", fedWorkload{addr: "10.3.0.1", port: 9100, zone: "eu-0", version: "v1", health: healthy}),
		fedPutWorkload("shop", "new-a", "new-a-w1", fedWorkload{addr: "10.3.0.2", port: 9100, zone: "eu-1", version: "v1", health: healthy}),
		fedDeleteService(nsOf(7), svcName(7)),
		fedPutWorkload(nsOf(10), svcName(10), wlName(10, 1), z),
		fedPutWorkload(nsOf(12), svcName(12), wlName(12, 0), v),
	)
	sentinel := wl(8, 0)
	sentinel.version = "v-after-west-kill"
	killLeader("west leader killed", west, fedDialedLog, westKillOps,
		fedPutWorkload(nsOf(8), svcName(8), wlName(8, 0), sentinel))

	// Changes while east (the acceptor) elects a new leader: a service
	// exported again, another unexported, the deleted service registered
	// again (its workloads and export were kept), every workload of a
	// service deleted, a new service, ports, two new workloads, every
	// workload unhealthy, a protocol.
	var eastKillOps []fedOp
	for _, k := range fedSortedKeys(ws(14).workloads) {
		eastKillOps = append(eastKillOps, fedDeleteWorkload(nsOf(14), svcName(14), k))
	}
	for _, k := range fedSortedKeys(ws(15).workloads) {
		x := ws(15).workloads[k]
		x.port += 1000
		eastKillOps = append(eastKillOps, fedPutWorkload(nsOf(15), svcName(15), k, x))
	}
	for _, k := range fedSortedKeys(ws(17).workloads) {
		x := ws(17).workloads[k]
		x.health = unhealthy
		eastKillOps = append(eastKillOps, fedPutWorkload(nsOf(17), svcName(17), k, x))
	}
	eastKillOps = append(eastKillOps,
		fedExport(nsOf(4), svcName(4)),
		fedUnexport(nsOf(13), svcName(13)),
		fedPutService(nsOf(7), svcName(7), 8007, meshfedv1.Protocol_PROTOCOL_HTTP),
		fedPutService("default", "new-b", 7200, meshfedv1.Protocol_PROTOCOL_TCP),
		fedPutWorkload("default", "new-b", "new-b-w0", fedWorkload{addr: "10.3.1.1", port: 9200, zone: "eu-0", version: "v1", health: healthy}),
		fedExport("default", "new-b"),
		fedPutWorkload(nsOf(16), svcName(16), wlName(16, 5), fedWorkload{addr: "10.2.16.5", port: 9016, zone: "eu-0", version: "v1", health: healthy}),
		fedPutWorkload(nsOf(16), svcName(16), wlName(16, 6), fedWorkload{addr: "10.2.16.6", port: 9016, zone: "eu-1", version: "v1", health: healthy}),
		fedPutService(nsOf(19), svcName(19), 8019, meshfedv1.Protocol_PROTOCOL_GRPC),
		fedDeleteWorkload("shop", "new-a", "new-a-w1"),
	)
	sentinel = wl(9, 0)
	sentinel.version = "v-after-east-kill"
	killLeader("east leader killed", east, fedAcceptedLog, eastKillOps,
		fedPutWorkload(nsOf(9), svcName(9), wlName(9, 0), sentinel))

	t.Logf("%d writes acknowledged in all, %d failed attempts retried; the test took %s",
		w.acked, w.failures, time.Since(testStart).Round(time.Millisecond))
}

// fedNthLogTime returns the time of the n-th (from 1) line of a server log
// that contains line.
func fedNthLogTime(log, line string, n int) (time.Time, bool) {
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, line) {
			continue
		}
		if n--; n > 0 {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		return at, err == nil
	}
	return time.Time{}, false
}

func fedSortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
