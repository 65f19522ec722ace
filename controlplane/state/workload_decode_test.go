package state

import (
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// decodeStore holds a workload and a sibling of its service, for upserts
// to be decoded against.
func decodeStore(t testing.TB) *Store {
	s := newTestStore(t)
	sib := workload("default", "web-0", "web", "10.0.0.1")
	sib.Meta.Labels = map[string]string{"app": "web", "tier": "front"}
	mustUpsert(t, s, 1, sib)
	mustUpsert(t, s, 2, workload("default", "web-1", "web", "10.0.0.2"))
	return s
}

// compareDecode upserts w with and without the fast decoder, each in a
// transaction it aborts, and fails unless both give the same result. It
// returns whether the fast decoder took the payload.
func compareDecode(t testing.TB, s *Store, w *meshfedv1.ResourceWrite) bool {
	t.Helper()
	upsert := func(fast bool) (Resource, error) {
		defer func(was bool) { fastWorkloadDecode = was }(fastWorkloadDecode)
		fastWorkloadDecode = fast
		tx := s.WriteTxn(10)
		defer tx.Abort()
		return tx.Upsert(w)
	}
	got, gotErr := upsert(true)
	want, wantErr := upsert(false)
	if (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Error()) {
		t.Fatalf("payload %x: fast decoder: %v, proto.Unmarshal: %v", w.GetPayload(), gotErr, wantErr)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("payload %x: fast decoder stores\n%v\nproto.Unmarshal\n%v", w.GetPayload(), got, want)
	}
	p, ok := parseWorkload(w.GetPayload())
	return ok && p.keyIs(w.GetNamespace(), w.GetName())
}

func TestWorkloadDecode(t *testing.T) {
	s := decodeStore(t)
	write := func(wl *meshfedv1.Workload) *meshfedv1.ResourceWrite { return upsertWrite(t, wl) }
	labelled := func(name string, labels map[string]string) *meshfedv1.Workload {
		wl := workload("default", name, "web", "10.0.0.9")
		wl.Meta.Labels = labels
		return wl
	}
	appendField := func(w *meshfedv1.ResourceWrite, b []byte) *meshfedv1.ResourceWrite {
		w.Payload = append(w.Payload, b...)
		return w
	}
	stringField := func(num protowire.Number, v string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), v)
	}
	for name, tt := range map[string]struct {
		w    *meshfedv1.ResourceWrite
		fast bool
	}{
		"new workload of a service": {write(workload("default", "web-2", "web", "10.0.0.3")), true},
		"update":                    {write(workload("default", "web-1", "web", "10.0.0.2")), true},
		"update to another address": {write(workload("default", "web-1", "web", "10.9.9.9")), true},
		"move to another service":   {write(workload("default", "web-1", "api", "10.0.0.2")), true},
		"new service":               {write(workload("default", "db-0", "db", "10.0.1.1")), true},
		"no service":                {write(workload("default", "lone", "", "10.0.1.2")), true},
		"other namespace":           {write(workload("shop", "web-0", "web", "10.0.1.3")), true},
		"sibling's labels":          {write(labelled("web-3", map[string]string{"app": "web", "tier": "front"})), true},
		"fewer labels":              {write(labelled("web-3", map[string]string{"app": "web"})), true},
		"other labels":              {write(labelled("web-3", map[string]string{"app": "web", "tier": "back"})), true},
		"more labels":               {write(labelled("web-3", map[string]string{"app": "web", "tier": "front", "x": ""})), true},
		"empty locality":            {write(&meshfedv1.Workload{Meta: &meshfedv1.Meta{Namespace: "default", Name: "e"}, Service: "web", Locality: &meshfedv1.Locality{}}), true},
		"other locality":            {write(&meshfedv1.Workload{Meta: &meshfedv1.Meta{Namespace: "default", Name: "e"}, Service: "web", Locality: &meshfedv1.Locality{Zone: "z"}}), true},
		"no meta": {func() *meshfedv1.ResourceWrite {
			w := write(workload("default", "m", "web", "1.2.3.4"))
			w.Payload, _ = proto.Marshal(&meshfedv1.Workload{Service: "web"})
			return w
		}(), true},
		"peer":           {write(&meshfedv1.Workload{Meta: &meshfedv1.Meta{Namespace: "default", Name: "p", Peer: "east"}, Service: "web"}), true},
		"unknown health": {write(&meshfedv1.Workload{Meta: &meshfedv1.Meta{Namespace: "default", Name: "h"}, Health: 42}), true},
		"proxy":          {write(&meshfedv1.Workload{Meta: &meshfedv1.Meta{Namespace: "default", Name: "web-1"}, Service: "web", Address: "10.0.0.2", Proxy: true}), true},
		"proxy, health":  {write(&meshfedv1.Workload{Meta: &meshfedv1.Meta{Namespace: "default", Name: "p"}, Service: "web", Health: 3, Proxy: true}), true},
		// A bool is any varint; not 0 is true.
		"proxy as 2":          {appendField(write(workload("default", "p", "web", "1.1.1.1")), protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 2)), true},
		"proxy false written": {appendField(write(workload("default", "p", "web", "1.1.1.1")), protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 0)), true},
		"proxy as bytes":      {appendField(write(workload("default", "p", "web", "1.1.1.1")), stringField(9, "x")), false},
		"must not exist, exists": {func() *meshfedv1.ResourceWrite {
			w := write(workload("default", "web-1", "web", "x"))
			w.MustNotExist = true
			return w
		}(), true},
		"stale version": {func() *meshfedv1.ResourceWrite {
			w := write(workload("default", "web-1", "web", "x"))
			w.ExpectedVersion = 1
			return w
		}(), true},
		"repeated label key": {func() *meshfedv1.ResourceWrite {
			entry := func(k, v string) []byte {
				return protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), append(stringField(1, k), stringField(2, v)...))
			}
			meta := append(append(append(stringField(1, "r"), stringField(2, "default")...), entry("app", "web")...), entry("tier", "back")...)
			meta = append(append(meta, entry("tier", "front")...), entry("app", "web")...)
			w := write(workload("default", "r", "web", "1.1.1.1"))
			w.Payload = append(protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), meta), stringField(2, "web")...)
			return w
		}(), true},
		"label without value": {func() *meshfedv1.ResourceWrite {
			meta := append(stringField(1, "r"), protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), stringField(1, "app"))...)
			w := write(workload("default", "r", "web", "1.1.1.1"))
			w.Payload = protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), meta)
			return w
		}(), true},
		"repeated string": {appendField(write(workload("default", "r", "web", "1.1.1.1")), stringField(3, "2.2.2.2")), true},
		"repeated meta":   {appendField(write(workload("default", "r", "web", "1.1.1.1")), protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), stringField(8, "peer"))), false},
		"unknown field":   {appendField(write(workload("default", "u", "web", "1.1.1.1")), stringField(99, "x")), false},
		"invalid utf-8":   {appendField(write(workload("default", "u", "web", "1.1.1.1")), stringField(7, "\xff")), false},
		"server meta":     {write(&meshfedv1.Workload{Meta: &meshfedv1.Meta{Namespace: "default", Name: "v", Version: 5}}), false},
		"name mismatch": {func() *meshfedv1.ResourceWrite {
			w := write(workload("default", "a", "web", "x"))
			w.Name = "b"
			return w
		}(), false},
		"key from the payload only": {func() *meshfedv1.ResourceWrite {
			w := write(workload("default", "a", "web", "x"))
			w.Name, w.Namespace = "", ""
			return w
		}(), false},
		"namespace from the write": {func() *meshfedv1.ResourceWrite {
			w := write(workload("", "a", "web", "x"))
			w.Namespace = "default"
			return w
		}(), true},
		"truncated": {func() *meshfedv1.ResourceWrite {
			w := write(workload("default", "t", "web", "x"))
			w.Payload = w.Payload[:7]
			return w
		}(), false},
		"no time": {func() *meshfedv1.ResourceWrite {
			w := write(workload("default", "t", "web", "x"))
			w.Time = nil
			return w
		}(), true},
		"time with an unknown field": {func() *meshfedv1.ResourceWrite {
			w := write(workload("default", "t", "web", "x"))
			w.Time = &timestamppb.Timestamp{Seconds: 1}
			w.Time.ProtoReflect().SetUnknown(stringField(9, "x"))
			return w
		}(), true},
	} {
		t.Run(name, func(t *testing.T) {
			if got := compareDecode(t, s, tt.w); got != tt.fast {
				t.Errorf("fast path taken = %v, want %v", got, tt.fast)
			}
		})
	}

	// Random mutations of valid payloads.
	rng := rand.New(rand.NewPCG(5, 6))
	proxied := workload("default", "web-7", "web", "10.0.0.7")
	proxied.Proxy, proxied.Health = true, meshfedv1.HealthStatus_HEALTH_STATUS_UNKNOWN
	bases := [][]byte{
		upsertWrite(t, labelled("web-7", map[string]string{"app": "web", "tier": "front"})).Payload,
		upsertWrite(t, workload("default", "web-1", "web", "10.0.0.2")).Payload,
		upsertWrite(t, proxied).Payload,
	}
	for range 20000 {
		b := append([]byte(nil), bases[rng.IntN(len(bases))]...)
		for range 1 + rng.IntN(3) {
			if len(b) == 0 {
				break
			}
			switch rng.IntN(3) {
			case 0:
				b[rng.IntN(len(b))] = byte(rng.Uint32())
			case 1:
				b = b[:rng.IntN(len(b)+1)]
			default:
				i := rng.IntN(len(b) + 1)
				b = append(b[:i:i], append([]byte{byte(rng.Uint32())}, b[i:]...)...)
			}
		}
		w := write(workload("default", "web-7", "web", ""))
		w.Payload = b
		compareDecode(t, s, w)
	}
}

func FuzzWorkloadDecode(f *testing.F) {
	wl := workload("default", "web-7", "web", "10.0.0.7")
	wl.Meta.Labels = map[string]string{"app": "web"}
	b, _ := proto.Marshal(wl)
	f.Add(b)
	wl.Proxy = true
	b, _ = proto.Marshal(wl)
	f.Add(b)
	s := decodeStore(f)
	f.Fuzz(func(t *testing.T, payload []byte) {
		w := upsertWrite(t, workload("default", "web-7", "web", ""))
		w.Payload = payload
		compareDecode(t, s, w)
	})
}
