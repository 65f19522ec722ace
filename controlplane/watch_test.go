package controlplane

import (
	"context"
	"fmt"
	"testing"
	"time"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func TestWatchStreamsSnapshotThenChanges(t *testing.T) {
	c := startTestCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := c.client(t, c.leader(t))
	for _, n := range []string{"a", "b"} {
		if _, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc(n, 80)}); err != nil {
			t.Fatal(err)
		}
	}
	// Watch on a follower: it serves from its local state.
	f := c.follower(t)
	stream, err := c.client(t, f).Catalog.WatchServices(ctx, &meshfedv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	next := func() *meshfedv1.WatchServicesResponse {
		t.Helper()
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		return ev
	}
	// The follower may not have applied both creates yet; collect until END.
	initial := map[string]bool{}
	for {
		ev := next()
		if ev.Type == meshfedv1.WatchEventType_WATCH_EVENT_TYPE_END_OF_SNAPSHOT {
			break
		}
		initial[ev.Service.Meta.Name] = true
	}
	for !initial["a"] || !initial["b"] {
		ev := next()
		if ev.Type != meshfedv1.WatchEventType_WATCH_EVENT_TYPE_UPSERT {
			t.Fatalf("unexpected %v before the initial services arrived", ev.Type)
		}
		initial[ev.Service.Meta.Name] = true
	}
	upd, err := admin.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{Service: svc("a", 81)})
	if err != nil {
		t.Fatal(err)
	}
	ev := next()
	if ev.Type != meshfedv1.WatchEventType_WATCH_EVENT_TYPE_UPSERT || ev.Service.Meta.Name != "a" || ev.Service.Port != 81 || ev.Service.Meta.Version != upd.Meta.Version {
		t.Fatalf("update event: %v", ev)
	}
	if _, err := admin.Catalog.DeleteService(ctx, &meshfedv1.DeleteRequest{Name: "b"}); err != nil {
		t.Fatal(err)
	}
	ev = next()
	if ev.Type != meshfedv1.WatchEventType_WATCH_EVENT_TYPE_DELETE || ev.Service.Meta.Name != "b" || ev.Service.Meta.Namespace != "default" {
		t.Fatalf("delete event: %v", ev)
	}
	// A change to another kind does not wake this watch with an event.
	if _, err := admin.Policy.CreateTrafficPolicy(ctx, &meshfedv1.CreateTrafficPolicyRequest{Policy: &meshfedv1.TrafficPolicy{
		Meta: &meshfedv1.Meta{Name: "tp"}, Destination: "a"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: svc("c", 80)}); err != nil {
		t.Fatal(err)
	}
	if ev = next(); ev.Service.GetMeta().GetName() != "c" {
		t.Fatalf("expected the create of c next, got %v", ev)
	}
}

func TestWatchFiltersByNamespaceAndService(t *testing.T) {
	c := startTestCluster(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := c.client(t, c.servers[0])
	wl := func(ns, name, service string) *meshfedv1.Workload {
		return &meshfedv1.Workload{Meta: &meshfedv1.Meta{Name: name, Namespace: ns}, Service: service, Address: "10.0.0.1", Port: 80}
	}
	stream, err := admin.Catalog.WatchWorkloads(ctx, &meshfedv1.WatchRequest{Namespace: "shop", Service: "cart"})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := stream.Recv(); err != nil || ev.Type != meshfedv1.WatchEventType_WATCH_EVENT_TYPE_END_OF_SNAPSHOT {
		t.Fatalf("empty snapshot: %v %v", ev, err)
	}
	for _, w := range []*meshfedv1.Workload{wl("shop", "x1", "other"), wl("default", "x2", "cart"), wl("shop", "cart-1", "cart")} {
		if _, err := admin.Catalog.CreateWorkload(ctx, &meshfedv1.CreateWorkloadRequest{Workload: w}); err != nil {
			t.Fatal(err)
		}
	}
	ev, err := stream.Recv()
	if err != nil || ev.Workload.GetMeta().GetName() != "cart-1" {
		t.Fatalf("filtered watch got %v %v", ev, err)
	}
}

func TestListPaginationVisitsEverythingOnce(t *testing.T) {
	c := startTestCluster(t, 1)
	ctx := context.Background()
	admin := c.client(t, c.servers[0])
	want := map[string]bool{}
	for _, ns := range []string{"alpha", "default", "zeta"} {
		for i := range 7 {
			s := svc(fmt.Sprintf("s%02d", i), 80)
			s.Meta.Namespace = ns
			if _, err := admin.Catalog.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: s}); err != nil {
				t.Fatal(err)
			}
			want[ns+"/"+s.Meta.Name] = true
		}
	}
	for _, tc := range []struct {
		ns    string
		total int
	}{{"", 21}, {"default", 7}, {"zeta", 7}, {"nope", 0}} {
		seen := map[string]bool{}
		token := ""
		pages := 0
		for {
			resp, err := admin.Catalog.ListServices(ctx, &meshfedv1.ListRequest{Namespace: tc.ns, Page: &meshfedv1.PageRequest{PageSize: 4, PageToken: token}})
			if err != nil {
				t.Fatal(err)
			}
			pages++
			if len(resp.Services) > 4 {
				t.Fatalf("page of %d items", len(resp.Services))
			}
			for _, s := range resp.Services {
				k := s.Meta.Namespace + "/" + s.Meta.Name
				if seen[k] || !want[k] || (tc.ns != "" && s.Meta.Namespace != tc.ns) {
					t.Fatalf("namespace %q: unexpected or repeated %s", tc.ns, k)
				}
				seen[k] = true
			}
			if resp.NextPageToken == "" {
				break
			}
			token = resp.NextPageToken
		}
		if len(seen) != tc.total {
			t.Fatalf("namespace %q: saw %d, want %d", tc.ns, len(seen), tc.total)
		}
		if wantPages := max(1, (tc.total+3)/4); pages < wantPages {
			t.Fatalf("namespace %q: %d pages", tc.ns, pages)
		}
	}
}
