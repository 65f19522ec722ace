package protowalk

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// walked is what Fields yields for one field.
type walked struct {
	f  Field
	ok bool
}

func walk(b []byte) (ws []walked) {
	for f, ok := range Fields(b) {
		ws = append(ws, walked{f, ok})
	}
	return ws
}

func equal(a, b walked) bool {
	return a.ok == b.ok && a.f.Num == b.f.Num && a.f.Type == b.f.Type && a.f.Varint == b.f.Varint &&
		bytes.Equal(a.f.Bytes, b.f.Bytes) && (a.f.Bytes == nil) == (b.f.Bytes == nil)
}

func TestFields(t *testing.T) {
	tag := protowire.AppendTag
	// next is a well-formed field after the one under test.
	next := walked{Field{Num: 1, Type: protowire.VarintType, Varint: 1}, true}
	for name, tt := range map[string]struct {
		in   []byte
		want walked
	}{
		"varint":           {protowire.AppendVarint(tag(nil, 5, protowire.VarintType), 1<<40), walked{Field{Num: 5, Type: protowire.VarintType, Varint: 1 << 40}, true}},
		"bytes":            {protowire.AppendString(tag(nil, 2, protowire.BytesType), "ab"), walked{Field{Num: 2, Type: protowire.BytesType, Bytes: []byte("ab")}, true}},
		"empty bytes":      {protowire.AppendString(tag(nil, 3, protowire.BytesType), ""), walked{Field{Num: 3, Type: protowire.BytesType, Bytes: []byte{}}, true}},
		"bad tag":          {[]byte{0xff, 0xff}, walked{}},
		"field zero":       {[]byte{0x00, 0x01}, walked{}},
		"fixed32":          {protowire.AppendFixed32(tag(nil, 1, protowire.Fixed32Type), 1), walked{}},
		"fixed64":          {protowire.AppendFixed64(tag(nil, 1, protowire.Fixed64Type), 1), walked{}},
		"group":            {tag(nil, 1, protowire.StartGroupType), walked{}},
		"truncated varint": {append(tag(nil, 1, protowire.VarintType), 0x80), walked{}},
		"truncated bytes":  {append(tag(nil, 1, protowire.BytesType), 3, 'a'), walked{}},
	} {
		t.Run(name, func(t *testing.T) {
			in := append(append([]byte(nil), tt.in...), 0x08, 0x01)
			want := []walked{tt.want, next}
			if !tt.want.ok {
				// Just the refusal, with nothing after it to read.
				in, want = tt.in, want[:1]
			}
			ws := walk(in)
			if len(ws) != len(want) {
				t.Fatalf("Fields(%x) yields %+v, want %+v", in, ws, want)
			}
			for i := range ws {
				if !equal(ws[i], want[i]) {
					t.Fatalf("Fields(%x) yields %+v, want %+v", in, ws, want)
				}
			}
		})
	}

	if ws := walk(nil); len(ws) != 0 {
		t.Errorf("Fields(nil) yields %+v", ws)
	}
	// Bytes aliases the input.
	in := protowire.AppendString(tag(nil, 1, protowire.BytesType), "xy")
	if ws := walk(in); &ws[0].f.Bytes[0] != &in[len(in)-2] {
		t.Error("Bytes does not alias the input")
	}
	// Stopping early stops the walk.
	n := 0
	for range Fields(append(in, in...)) {
		n++
		break
	}
	if n != 1 {
		t.Errorf("loop ran %d times after break", n)
	}
}
