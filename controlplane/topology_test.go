package controlplane

import (
	"testing"
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/validate"
)

func TestTopologyGraph(t *testing.T) {
	var topo topology
	t0 := time.Unix(1_700_000_000, 0)
	topo.reset(t0)
	topo.record("shop", "web", []*meshfedv1.TrafficCount{
		{Namespace: "shop", Service: "api", Requests: 10, Errors: 1},
		{Namespace: "pay", Service: "payments", Cluster: "west", Requests: 3},
	}, t0)
	topo.record("shop", "web", []*meshfedv1.TrafficCount{{Namespace: "shop", Service: "api", Requests: 5, Errors: 2}}, t0.Add(time.Minute))
	topo.record("ops", "probe", []*meshfedv1.TrafficCount{{Namespace: "ops", Service: "db", Requests: 1}}, t0)

	edges, since := topo.graph("", t0.Add(2*time.Minute))
	if !since.Equal(t0) || len(edges) != 3 {
		t.Fatalf("since %v, %d edges: %v", since, len(edges), edges)
	}
	// Sorted by source, then destination.
	if e := edges[0]; e.GetSourceService() != "probe" {
		t.Errorf("first edge %v", e)
	}
	api := edges[2]
	if api.GetDestinationService() != "api" || api.GetRequests() != 15 || api.GetErrors() != 3 || !api.GetLastSeen().AsTime().Equal(t0.Add(time.Minute)) {
		t.Errorf("web -> api: %v", api)
	}
	if e := edges[1]; e.GetDestinationCluster() != "west" || e.GetRequests() != 3 {
		t.Errorf("web -> payments: %v", e)
	}
	// A namespace filter keeps edges from or to it.
	if edges, _ := topo.graph("pay", t0.Add(2*time.Minute)); len(edges) != 1 || edges[0].GetDestinationNamespace() != "pay" {
		t.Errorf("namespace pay: %v", edges)
	}
	// Edges nobody reported for topologyTTL go away.
	if edges, _ := topo.graph("", t0.Add(time.Minute+topologyTTL+time.Second)); len(edges) != 0 {
		t.Errorf("after the TTL: %v", edges)
	}
	// A new leader starts empty.
	topo.record("shop", "web", []*meshfedv1.TrafficCount{{Namespace: "shop", Service: "api", Requests: 1}}, t0)
	topo.reset(t0.Add(time.Hour))
	if edges, since := topo.graph("", t0.Add(time.Hour)); len(edges) != 0 || !since.Equal(t0.Add(time.Hour)) {
		t.Errorf("after reset: %v since %v", edges, since)
	}
}

func TestHeartbeatTrafficValidation(t *testing.T) {
	hb := func(tc ...*meshfedv1.TrafficCount) *meshfedv1.HeartbeatRequest {
		return &meshfedv1.HeartbeatRequest{Instance: "web-1", Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY, Outbound: tc}
	}
	if err := validate.ProxyHeartbeat(hb(&meshfedv1.TrafficCount{Namespace: "shop", Service: "api", Cluster: "west", Requests: 2, Errors: 1})); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		req   *meshfedv1.HeartbeatRequest
		field string
	}{
		{hb(&meshfedv1.TrafficCount{Service: "api"}), "outbound[0].namespace"},
		{hb(&meshfedv1.TrafficCount{Namespace: "shop", Service: "Bad_Name"}), "outbound[0].service"},
		{hb(&meshfedv1.TrafficCount{Namespace: "shop", Service: "api", Cluster: "-x"}), "outbound[0].cluster"},
		{hb(&meshfedv1.TrafficCount{Namespace: "shop", Service: "api", Requests: 1, Errors: 2}), "outbound[0].errors"},
		{hb(make([]*meshfedv1.TrafficCount, validate.MaxTrafficCounts+1)...), "outbound"},
	} {
		err := validate.ProxyHeartbeat(c.req)
		var fe *validate.FieldError
		if !asFieldError(err, &fe) || fe.Field != c.field {
			t.Errorf("want an error on %s, got %v", c.field, err)
		}
	}
}

func asFieldError(err error, fe **validate.FieldError) bool {
	e, ok := err.(*validate.FieldError)
	if ok {
		*fe = e
	}
	return ok
}
