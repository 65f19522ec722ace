package fsm

import (
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// checkDecode fails unless the fast decoder either declines body or
// decodes it exactly as proto.Unmarshal does. It returns whether it took
// body.
func checkDecode(t *testing.T, body []byte) bool {
	t.Helper()
	var d writeDecoder
	fast := d.decodeFast(body)
	want := &meshfedv1.ResourceWrite{}
	err := proto.Unmarshal(body, want)
	if !fast {
		return false
	}
	if err != nil {
		t.Fatalf("fast decoder took %x, which proto.Unmarshal refuses: %v", body, err)
	}
	if !proto.Equal(&d.w, want) {
		t.Fatalf("fast decoder: %x decodes to\n%v\nwant\n%v", body, &d.w, want)
	}
	return true
}

func TestDecodeWrite(t *testing.T) {
	full := &meshfedv1.ResourceWrite{
		Kind: meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD, Payload: []byte{1, 2, 3}, Namespace: "default", Name: "web-1",
		ExpectedVersion: 1 << 40, MustNotExist: true, MustExist: true, Time: &timestamppb.Timestamp{Seconds: -5, Nanos: 999_999_999},
	}
	for name, tt := range map[string]struct {
		body []byte
		fast bool
	}{
		"empty":             {nil, true},
		"full":              {mustMarshal(t, full), true},
		"zero time":         {mustMarshal(t, &meshfedv1.ResourceWrite{Name: "x", Time: &timestamppb.Timestamp{}}), true},
		"unknown kind":      {mustMarshal(t, &meshfedv1.ResourceWrite{Kind: 99}), true},
		"negative kind":     {protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), uint64(1<<64-1)), true},
		"repeated name":     {protowire.AppendString(protowire.AppendTag(mustMarshal(t, full), 4, protowire.BytesType), "other"), true},
		"repeated time":     {protowire.AppendBytes(protowire.AppendTag(mustMarshal(t, full), 8, protowire.BytesType), protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 7)), true},
		"unknown field":     {protowire.AppendVarint(protowire.AppendTag(mustMarshal(t, full), 99, protowire.VarintType), 1), false},
		"unknown time":      {protowire.AppendBytes(protowire.AppendTag(nil, 8, protowire.BytesType), protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 1)), false},
		"wrong wire type":   {protowire.AppendFixed32(protowire.AppendTag(nil, 1, protowire.Fixed32Type), 1), false},
		"bad utf-8":         {protowire.AppendBytes(protowire.AppendTag(nil, 4, protowire.BytesType), []byte{0xff}), false},
		"truncated":         {mustMarshal(t, full)[:10], false},
		"bad tag":           {[]byte{0xff, 0xff}, false},
		"field number zero": {[]byte{0x00, 0x01}, false},
	} {
		t.Run(name, func(t *testing.T) {
			if got := checkDecode(t, tt.body); got != tt.fast {
				t.Errorf("fast path taken = %v, want %v", got, tt.fast)
			}
		})
	}

	// Random mutations of valid bodies: whatever the fast decoder takes
	// must decode as proto.Unmarshal decodes it.
	rng := rand.New(rand.NewPCG(1, 2))
	base := mustMarshal(t, full)
	for range 20000 {
		b := append([]byte(nil), base...)
		for range 1 + rng.IntN(3) {
			switch rng.IntN(3) {
			case 0:
				b[rng.IntN(len(b))] = byte(rng.Uint32())
			case 1:
				b = b[:rng.IntN(len(b)+1)]
			default:
				b = append(b, byte(rng.Uint32()))
			}
			if len(b) == 0 {
				break
			}
		}
		checkDecode(t, b)
	}
}

func FuzzDecodeWrite(f *testing.F) {
	f.Add([]byte{})
	f.Add(mustMarshal(f, &meshfedv1.ResourceWrite{Kind: 2, Payload: []byte("x"), Namespace: "a", Name: "b", Time: timestamppb.Now()}))
	f.Fuzz(func(t *testing.T, body []byte) { checkDecode(t, body) })
}

func mustMarshal(tb testing.TB, m proto.Message) []byte {
	tb.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
