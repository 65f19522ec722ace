package validate

import (
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The generic checks run on every set field of every resource, so that no
// field escapes them: enum values must be defined, strings valid UTF-8 and
// bounded, doubles finite, durations and timestamps well-formed and not
// negative, lists and maps bounded. The limits below are the exceptions to
// the defaults, by proto field name.
const (
	defaultMaxString = 1024
	defaultMaxBytes  = 64 << 10
	defaultMaxItems  = 1000
)

var maxStringLen = map[protoreflect.FullName]int{
	"meshfed.v1.Token.description":                       256,
	"meshfed.v1.MeshSettings.otlp_endpoint":              256,
	"meshfed.v1.CASettings.rotation":                     256,
	"meshfed.v1.Authority.root_pem":                      64 << 10,
	"meshfed.v1.Authority.intermediate_pem":              64 << 10,
	"meshfed.v1.Authority.cross_signed_intermediate_pem": 64 << 10,
}

var maxItems = map[protoreflect.FullName]int{
	"meshfed.v1.Meta.labels":                  64,
	"meshfed.v1.AuthorizationPolicy.rules":    100,
	"meshfed.v1.AuthorizationRule.principals": 100,
	"meshfed.v1.AuthorizationRule.methods":    16,
	"meshfed.v1.AuthorizationRule.paths":      100,
	"meshfed.v1.RetryPolicy.retry_on":         8,
	"meshfed.v1.TrafficPolicy.splits":         16,
	"meshfed.v1.TrafficPolicy.failover":       16,
	"meshfed.v1.Identity.dns_names":           32,
	"meshfed.v1.Peering.peer_api_addresses":   16,
	"meshfed.v1.ServiceExport.peers":          256,
	"meshfed.v1.ImportedService.endpoints":    10000,
}

const (
	durationName  = protoreflect.FullName("google.protobuf.Duration")
	timestampName = protoreflect.FullName("google.protobuf.Timestamp")
)

// walk applies the generic checks to every set field of m.
func (c *checker) walk(path string, m protoreflect.Message) {
	switch m.Descriptor().FullName() {
	case durationName:
		d := m.Interface().(*durationpb.Duration)
		if err := d.CheckValid(); err != nil {
			c.fail(path, "is not a valid duration")
		} else if d.AsDuration() < 0 {
			c.fail(path, "must not be negative")
		}
		return
	case timestampName:
		if err := m.Interface().(*timestamppb.Timestamp).CheckValid(); err != nil {
			c.fail(path, "is not a valid timestamp")
		}
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := field(path, string(fd.Name()))
		switch {
		case fd.IsList():
			l := v.List()
			if l.Len() > limit(maxItems, fd, defaultMaxItems) {
				c.failf(p, "must have at most %d items", limit(maxItems, fd, defaultMaxItems))
				return false
			}
			for i := 0; i < l.Len() && c.ok(); i++ {
				c.value(index(p, i), fd, l.Get(i))
			}
		case fd.IsMap():
			mp := v.Map()
			if mp.Len() > limit(maxItems, fd, defaultMaxItems) {
				c.failf(p, "must have at most %d entries", limit(maxItems, fd, defaultMaxItems))
				return false
			}
			mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				kp := p + "[" + strconv.Quote(k.String()) + "]"
				c.value(kp, fd.MapKey(), k.Value())
				c.value(kp, fd.MapValue(), v)
				return c.ok()
			})
		default:
			c.value(p, fd, v)
		}
		return c.ok()
	})
}

// value checks one scalar or message value of field fd.
func (c *checker) value(path string, fd protoreflect.FieldDescriptor, v protoreflect.Value) {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		if fd.Enum().Values().ByNumber(v.Enum()) == nil {
			c.failf(path, "unknown value %d: must be one of %s", v.Enum(), enumNames(fd.Enum()))
		}
	case protoreflect.StringKind:
		s := v.String()
		if !utf8.ValidString(s) {
			c.fail(path, "must be valid UTF-8")
		} else if n := limit(maxStringLen, fd, defaultMaxString); len(s) > n {
			c.failf(path, "must be at most %d bytes long", n)
		}
	case protoreflect.BytesKind:
		if len(v.Bytes()) > defaultMaxBytes {
			c.failf(path, "must be at most %d bytes long", defaultMaxBytes)
		}
	case protoreflect.DoubleKind, protoreflect.FloatKind:
		if f := v.Float(); math.IsNaN(f) || math.IsInf(f, 0) {
			c.fail(path, "must be a finite number")
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		c.walk(path, v.Message())
	}
}

// enumNames lists the names of an enum's values, as JSON input spells them.
func enumNames(d protoreflect.EnumDescriptor) string {
	vals := d.Values()
	names := make([]string, vals.Len())
	for i := range vals.Len() {
		names[i] = string(vals.Get(i).Name())
	}
	return strings.Join(names, ", ")
}

func limit(table map[protoreflect.FullName]int, fd protoreflect.FieldDescriptor, def int) int {
	if n, ok := table[fd.FullName()]; ok {
		return n
	}
	return def
}
