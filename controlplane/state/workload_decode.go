package state

import (
	"bytes"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/protowalk"
)

// Workloads are most of the writes, and most workload writes change little
// (a health check) or repeat what the service's other workloads hold. So
// their payloads are decoded here, without reflection, straight into
// strings shared with the workload replaced or a sibling of the same
// service where they are equal: such a write allocates its workload, its
// meta and the strings that are new, where proto.Unmarshal allocates every
// string, the locality and the labels. Only the shape the API writes is
// taken; anything else (unknown fields, a repeated message field, server
// meta fields, invalid UTF-8, malformed input) goes to proto.Unmarshal.

// fastWorkloadDecode is switched off by tests to compare with
// proto.Unmarshal.
var fastWorkloadDecode = true

// workloadPayload is an encoded Workload, checked, with its fields'
// bytes. Labels are decoded again from meta when built.
type workloadPayload struct {
	meta                                []byte
	name, namespace, peer               []byte
	labels                              int // entries, repeated keys counted
	service, address, spiffeID, version []byte
	port                                uint32
	health                              int32
	proxy                               bool
	hasMeta, hasLocality                bool
	region, zone                        []byte
}

// parseWorkload parses b, and reports false for anything the fast path
// does not take.
func parseWorkload(b []byte) (p workloadPayload, ok bool) {
	for f, ok := range protowalk.Fields(b) {
		if !ok {
			return p, false
		}
		if f.Type == protowire.VarintType {
			switch f.Num {
			case 4:
				p.port = uint32(f.Varint)
			case 6:
				p.health = int32(f.Varint)
			case 9:
				p.proxy = f.Varint != 0
			default:
				return p, false
			}
			continue
		}
		v := f.Bytes
		switch f.Num {
		case 1:
			if p.hasMeta || !p.parseMeta(v) {
				return p, false
			}
			p.hasMeta, p.meta = true, v
		case 5:
			if p.hasLocality || !parseStrings(v, &p.region, &p.zone) {
				return p, false
			}
			p.hasLocality = true
		case 2, 3, 7, 8:
			if !utf8.Valid(v) {
				return p, false
			}
			switch f.Num {
			case 2:
				p.service = v
			case 3:
				p.address = v
			case 7:
				p.spiffeID = v
			default:
				p.version = v
			}
		default:
			return p, false
		}
	}
	return p, true
}

func (p *workloadPayload) parseMeta(b []byte) bool {
	for f, ok := range protowalk.Fields(b) {
		if !ok || f.Type != protowire.BytesType {
			return false
		}
		switch f.Num {
		case 1, 2, 8:
			if !utf8.Valid(f.Bytes) {
				return false
			}
			switch f.Num {
			case 1:
				p.name = f.Bytes
			case 2:
				p.namespace = f.Bytes
			default:
				p.peer = f.Bytes
			}
		case 5:
			var k, val []byte
			if !parseStrings(f.Bytes, &k, &val) {
				return false
			}
			p.labels++
		default:
			// Server-owned fields, which the API strips, and unknown ones.
			return false
		}
	}
	return true
}

// parseStrings parses a message of two string fields, numbered 1 and 2
// (a Locality, a map entry), into *one and *two.
func parseStrings(b []byte, one, two *[]byte) bool {
	for f, ok := range protowalk.Fields(b) {
		if !ok || f.Type != protowire.BytesType || (f.Num != 1 && f.Num != 2) || !utf8.Valid(f.Bytes) {
			return false
		}
		if f.Num == 1 {
			*one = f.Bytes
		} else {
			*two = f.Bytes
		}
	}
	return true
}

// eachLabel calls fn on the label entries of a parsed payload, in order.
func (p *workloadPayload) eachLabel(fn func(k, v []byte)) {
	for f := range protowalk.Fields(p.meta) {
		if f.Num == 5 {
			var k, val []byte
			parseStrings(f.Bytes, &k, &val)
			fn(k, val)
		}
	}
}

// keyIs reports whether the payload's meta names namespace/name, or names
// nothing, so that the write's key is namespace/name (see writeKey).
func (p *workloadPayload) keyIs(namespace, name string) bool {
	return namespace != "" && name != "" &&
		(len(p.name) == 0 || string(p.name) == name) &&
		(len(p.namespace) == 0 || string(p.namespace) == namespace)
}

// serviceIs reports whether the payload's service is s.
func (p *workloadPayload) serviceIs(s string) bool { return string(p.service) == s }

// workloadBlock is a workload allocated at once with its meta and the
// time stamps store gives it: a created workload's one, an updated one's
// two (workloadBlock2). Nothing else points into a block: store copies
// create_time rather than pointing at the previous version's.
type workloadBlock struct {
	w  meshfedv1.Workload
	m  meshfedv1.Meta
	ut timestamppb.Timestamp
}

type workloadBlock2 struct {
	workloadBlock
	ct timestamppb.Timestamp
}

// build returns the workload the payload decodes to, named namespace/name,
// with the strings, locality and labels of sib (which may be nil) where
// they are equal, and the time stamps allocated with it for store: room
// for create_time too when update. It is what proto.Unmarshal returns, with
// the key set and shareWorkloadFields applied.
func (p *workloadPayload) build(namespace, name string, sib *meshfedv1.Workload, update bool) (*meshfedv1.Workload, stamps) {
	var b *workloadBlock
	var st stamps
	if update {
		b2 := new(workloadBlock2)
		b, st.create = &b2.workloadBlock, &b2.ct
	} else {
		b = new(workloadBlock)
	}
	st.update = &b.ut
	sm := sib.GetMeta()
	m := &b.m
	m.Name = name
	m.Namespace = namespace
	m.Peer = same(p.peer, sm.GetPeer())
	m.Labels = p.buildLabels(sm.GetLabels())
	share(&m.Namespace, sm.GetNamespace())
	w := &b.w
	w.Meta = m
	w.Service = same(p.service, sib.GetService())
	w.Address = same(p.address, sib.GetAddress())
	w.Port = p.port
	w.Health = meshfedv1.HealthStatus(p.health)
	w.SpiffeId = same(p.spiffeID, sib.GetSpiffeId())
	w.Version = same(p.version, sib.GetVersion())
	w.Proxy = p.proxy
	if p.hasLocality {
		sl := sib.GetLocality()
		if sl != nil && string(p.region) == sl.GetRegion() && string(p.zone) == sl.GetZone() &&
			len(sl.ProtoReflect().GetUnknown()) == 0 {
			w.Locality = sl
		} else {
			w.Locality = &meshfedv1.Locality{Region: same(p.region, sl.GetRegion()), Zone: same(p.zone, sl.GetZone())}
		}
	}
	return w, st
}

// same returns s when b holds its bytes, else a new string of b.
func same(b []byte, s string) string {
	if string(b) == s {
		return s
	}
	return string(b)
}

// buildLabels returns the labels of the payload: sib itself when they are
// equal (maps of stored objects are never changed, so sharing one is
// safe), else a new map.
func (p *workloadPayload) buildLabels(sib map[string]string) map[string]string {
	if p.labels == 0 {
		return nil
	}
	if p.sameLabels(sib) {
		return sib
	}
	m := make(map[string]string, p.labels)
	p.eachLabel(func(k, v []byte) {
		m[string(k)] = same(v, sib[string(k)])
	})
	return m
}

// sameLabels reports whether the payload's labels are sib, all of it.
func (p *workloadPayload) sameLabels(sib map[string]string) bool {
	const most = 32
	if len(sib) != p.labels || p.labels > most {
		return false
	}
	// Every entry is in sib, and no key repeats: then there are as many
	// keys as in sib.
	var keys [most][]byte
	n := 0
	ok := true
	p.eachLabel(func(k, v []byte) {
		if !ok {
			return
		}
		if sv, found := sib[string(k)]; !found || sv != string(v) {
			ok = false
			return
		}
		for _, seen := range keys[:n] {
			if bytes.Equal(seen, k) {
				ok = false
				return
			}
		}
		keys[n] = k
		n++
	})
	return ok
}
