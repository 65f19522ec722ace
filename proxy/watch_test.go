package proxy

import (
	"errors"
	"maps"
	"slices"
	"testing"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// TestFollowNamedKeep: resources keep turns down are not held, and one
// that changes so that keep turns it down leaves the set.
func TestFollowNamedKeep(t *testing.T) {
	pol := func(name, dest string) *meshfedv1.AuthorizationPolicy {
		return &meshfedv1.AuthorizationPolicy{Meta: &meshfedv1.Meta{Name: name, Namespace: "default"}, Destination: dest}
	}
	const (
		upsert = meshfedv1.WatchEventType_WATCH_EVENT_TYPE_UPSERT
		del    = meshfedv1.WatchEventType_WATCH_EVENT_TYPE_DELETE
		eos    = meshfedv1.WatchEventType_WATCH_EVENT_TYPE_END_OF_SNAPSHOT
	)
	type ev struct {
		typ meshfedv1.WatchEventType
		p   *meshfedv1.AuthorizationPolicy
	}
	events := []ev{
		{upsert, pol("a", "web")},
		{upsert, pol("b", "db")},
		{upsert, pol("c", "*")},
		{eos, nil},
		{upsert, pol("b", "web")}, // now for web
		{upsert, pol("a", "db")},  // no longer for web
		{del, pol("c", "*")},
		{del, pol("zzz", "db")}, // never held
	}
	want := [][]string{{"a", "c"}, {"a", "b", "c"}, {"b", "c"}, {"b"}, {"b"}}
	i := 0
	recv := func() (meshfedv1.WatchEventType, *meshfedv1.AuthorizationPolicy, error) {
		if i == len(events) {
			return 0, nil, errors.New("end")
		}
		e := events[i]
		i++
		return e.typ, e.p, nil
	}
	keep := func(p *meshfedv1.AuthorizationPolicy) bool {
		return p.GetDestination() == "web" || p.GetDestination() == "*"
	}
	var got [][]string
	err := followNamed(recv, keep, func(m map[string]*meshfedv1.AuthorizationPolicy) {
		got = append(got, slices.Sorted(maps.Keys(m)))
	})
	if err == nil || err.Error() != "end" {
		t.Fatalf("err = %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("applied %d times (%v), want %d (%v)", len(got), got, len(want), want)
	}
	for k := range want {
		if !slices.Equal(got[k], want[k]) {
			t.Errorf("apply %d: %v, want %v", k, got[k], want[k])
		}
	}
}
