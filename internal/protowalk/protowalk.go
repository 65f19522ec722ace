// Package protowalk walks the fields of an encoded protobuf message, for
// hand-written decoders of messages whose fields are all varints or
// length-delimited.
package protowalk

import (
	"iter"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field is one field of a message: Varint is its value when Type is
// protowire.VarintType, Bytes when it is protowire.BytesType. Bytes
// aliases the message's bytes.
type Field struct {
	Num    protowire.Number
	Type   protowire.Type
	Varint uint64
	Bytes  []byte
}

// Fields yields the fields of b, in order, with true. At the first that
// is malformed or neither a varint nor length-delimited, it yields a zero
// Field with false and stops.
func Fields(b []byte) iter.Seq2[Field, bool] {
	// The loop is written out rather than calling a helper so that it
	// inlines into the range loop: a call per field costs decoders half
	// again their time.
	return func(yield func(Field, bool) bool) {
		for len(b) > 0 {
			var f Field
			var n int
			f.Num, f.Type, n = protowire.ConsumeTag(b)
			if n >= 0 {
				b = b[n:]
				switch f.Type {
				case protowire.VarintType:
					f.Varint, n = protowire.ConsumeVarint(b)
				case protowire.BytesType:
					f.Bytes, n = protowire.ConsumeBytes(b)
				default:
					n = -1
				}
			}
			if n < 0 {
				yield(Field{}, false)
				return
			}
			b = b[n:]
			if !yield(f, true) {
				return
			}
		}
	}
}
