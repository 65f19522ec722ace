package fsm

import (
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/protowalk"
)

// writeDecoder decodes the ResourceWrite bodies of a batch's commands into
// one reused message, whose payload aliases the log's data rather than
// copying it: the store decodes the payload into objects of its own and
// keeps neither the write nor its payload.
type writeDecoder struct {
	w  meshfedv1.ResourceWrite
	ts timestamppb.Timestamp
	// namespaces interns namespaces, which repeat across writes.
	namespaces map[string]string
}

// maxNamespaces bounds writeDecoder.namespaces.
const maxNamespaces = 4096

// decode returns the write in body. The result is valid until the next
// call, and only while body is unchanged.
func (d *writeDecoder) decode(t MessageType, body []byte, index uint64) *meshfedv1.ResourceWrite {
	if d.decodeFast(body) {
		return &d.w
	}
	w := &meshfedv1.ResourceWrite{}
	if err := proto.Unmarshal(body, w); err != nil {
		panic(fmt.Sprintf("fsm: log %d: undecodable %v command: %v", index, t, err))
	}
	return w
}

// decodeFast decodes body into d.w as proto.Unmarshal would, and reports
// false, for proto.Unmarshal to decode it instead, on anything but the
// fields of ResourceWrite with their wire types: unknown fields (which
// proto.Unmarshal keeps), invalid UTF-8 and malformed input.
func (d *writeDecoder) decodeFast(b []byte) bool {
	d.w = meshfedv1.ResourceWrite{}
	w := &d.w
	for f, ok := range protowalk.Fields(b) {
		if !ok {
			return false
		}
		if f.Type == protowire.VarintType {
			switch f.Num {
			case 1:
				w.Kind = meshfedv1.ResourceKind(int32(f.Varint))
			case 5:
				w.ExpectedVersion = f.Varint
			case 6:
				w.MustNotExist = f.Varint != 0
			case 7:
				w.MustExist = f.Varint != 0
			default:
				return false
			}
			continue
		}
		switch f.Num {
		case 2:
			w.Payload = f.Bytes
		case 3, 4:
			if !utf8.Valid(f.Bytes) {
				return false
			}
			if f.Num == 3 {
				w.Namespace = d.namespace(f.Bytes)
			} else {
				w.Name = string(f.Bytes)
			}
		case 8:
			// A repeated message field merges into the first.
			if w.Time == nil {
				d.ts = timestamppb.Timestamp{}
				w.Time = &d.ts
			}
			if !decodeTimestamp(f.Bytes, w.Time) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func decodeTimestamp(b []byte, ts *timestamppb.Timestamp) bool {
	for f, ok := range protowalk.Fields(b) {
		if !ok || f.Type != protowire.VarintType {
			return false
		}
		switch f.Num {
		case 1:
			ts.Seconds = int64(f.Varint)
		case 2:
			ts.Nanos = int32(f.Varint)
		default:
			return false
		}
	}
	return true
}

// namespace returns the string of b, the one it returned before for the same
// bytes if it can.
func (d *writeDecoder) namespace(b []byte) string {
	if s, ok := d.namespaces[string(b)]; ok {
		return s
	}
	s := string(b)
	if d.namespaces != nil && len(d.namespaces) < maxNamespaces {
		d.namespaces[s] = s
	}
	return s
}
