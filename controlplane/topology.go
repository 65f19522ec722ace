package controlplane

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/validate"
)

const (
	// topologyTTL is how long an edge no proxy reports stays in the graph.
	topologyTTL = 15 * time.Minute
	// maxTopologyEdges bounds the graph; edges past it are not recorded.
	maxTopologyEdges = 100_000
)

// topology is the graph of who calls whom, from the traffic counts proxies
// send with their heartbeats. Heartbeats run on the leader, so the leader
// holds it, in memory only: it starts empty when a server takes over.
type topology struct {
	mu    sync.Mutex
	since time.Time
	edges map[edgeKey]*edgeStats
}

type edgeKey struct{ srcNS, srcSvc, dstNS, dstSvc, cluster string }

type edgeStats struct {
	requests, errors uint64
	last             time.Time
}

// reset empties the graph: this server has just taken over.
func (t *topology) reset(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.since = now
	t.edges = map[edgeKey]*edgeStats{}
}

// record adds what a proxy of service srcNS/srcSvc reported.
func (t *topology) record(srcNS, srcSvc string, counts []*meshfedv1.TrafficCount, now time.Time) {
	if len(counts) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.edges == nil {
		t.edges = map[edgeKey]*edgeStats{}
		t.since = now
	}
	for _, c := range counts {
		k := edgeKey{srcNS, srcSvc, c.GetNamespace(), c.GetService(), c.GetCluster()}
		e := t.edges[k]
		if e == nil {
			if len(t.edges) >= maxTopologyEdges {
				continue
			}
			e = &edgeStats{}
			t.edges[k] = e
		}
		e.requests += c.GetRequests()
		e.errors += c.GetErrors()
		e.last = now
	}
}

// graph returns the edges seen within topologyTTL that touch namespace ns
// (all when ns is empty), sorted, and when collecting started.
func (t *topology) graph(ns string, now time.Time) ([]*meshfedv1.TopologyEdge, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*meshfedv1.TopologyEdge
	for k, e := range t.edges {
		if now.Sub(e.last) > topologyTTL {
			delete(t.edges, k)
			continue
		}
		if ns != "" && k.srcNS != ns && k.dstNS != ns {
			continue
		}
		out = append(out, &meshfedv1.TopologyEdge{
			SourceNamespace: k.srcNS, SourceService: k.srcSvc,
			DestinationNamespace: k.dstNS, DestinationService: k.dstSvc, DestinationCluster: k.cluster,
			Requests: e.requests, Errors: e.errors, LastSeen: timestamppb.New(e.last),
		})
	}
	slices.SortFunc(out, func(a, b *meshfedv1.TopologyEdge) int {
		return cmp.Or(cmp.Compare(a.SourceNamespace, b.SourceNamespace), cmp.Compare(a.SourceService, b.SourceService),
			cmp.Compare(a.DestinationNamespace, b.DestinationNamespace), cmp.Compare(a.DestinationService, b.DestinationService),
			cmp.Compare(a.DestinationCluster, b.DestinationCluster))
	})
	return out, t.since
}

// GetTopology returns the service graph the leader has collected.
func (a *apiServer) GetTopology(_ context.Context, req *meshfedv1.GetTopologyRequest) (*meshfedv1.Topology, error) {
	if ns := req.GetNamespace(); ns != "" {
		if err := validate.DNSLabel("namespace", ns); err != nil {
			return nil, toStatus(err)
		}
	}
	edges, since := a.s.topo.graph(req.GetNamespace(), time.Now())
	t := &meshfedv1.Topology{Edges: edges}
	if !since.IsZero() {
		t.Since = timestamppb.New(since)
	}
	return t, nil
}
