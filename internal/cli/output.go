package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// table writes aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
	t.row(headers...)
	return t
}

func (t *table) row(cols ...string) {
	for i, c := range cols {
		if c == "" {
			cols[i] = "-"
		}
	}
	fmt.Fprintln(t.tw, strings.Join(cols, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// keyValues writes "Key: value" lines with aligned values.
func keyValues(w io.Writer, pairs ...string) error {
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	for i := 0; i+1 < len(pairs); i += 2 {
		v := pairs[i+1]
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s:\t%s\n", pairs[i], v)
	}
	return tw.Flush()
}

// marshalJSON renders m as indented protojson with stable spacing.
func marshalJSON(m proto.Message) ([]byte, error) {
	raw, err := protojson.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding %s as JSON: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// printJSON writes m as the one JSON document of the command.
func (a *app) printJSON(m proto.Message) error {
	b, err := marshalJSON(m)
	if err != nil {
		return err
	}
	_, err = a.stdout.Write(b)
	return err
}

// printListJSON writes a List*Response and makes sure its list field (by
// JSON name, e.g. "services") is present even when empty, so that scripts
// can always index it.
func (a *app) printListJSON(m proto.Message, key string) error {
	b, err := listJSON(m, key)
	if err != nil {
		return err
	}
	_, err = a.stdout.Write(b)
	return err
}

func listJSON(m proto.Message, key string) ([]byte, error) {
	raw, err := protojson.Marshal(m)
	if err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, err
	}
	if _, ok := fields[key]; !ok {
		rest := bytes.TrimSpace(raw[1:]) // after "{"
		head := `{"` + key + `":[]`
		if !bytes.Equal(rest, []byte("}")) {
			head += ","
		}
		raw = append([]byte(head), rest...)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// printJSONLine writes m as one compact line (for --watch).
func (a *app) printJSONLine(m proto.Message) error {
	raw, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Compact(&out, raw); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = a.stdout.Write(out.Bytes())
	return err
}

// printValueJSON writes a plain Go value as the command's JSON document.
func (a *app) printValueJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(a.stdout, "%s\n", b)
	return err
}

// enumString renders an enum value the way flags spell it: without the type
// prefix, lower case, '-' between words (TOKEN_KIND_SERVER_JOIN is
// "server-join"). The zero value renders as "".
func enumString(e protoreflect.Enum) string {
	if e.Number() == 0 {
		return ""
	}
	d := e.Descriptor()
	v := d.Values().ByNumber(e.Number())
	if v == nil {
		return strconv.Itoa(int(e.Number()))
	}
	name := strings.TrimPrefix(string(v.Name()), enumPrefix(d))
	return strings.ReplaceAll(strings.ToLower(name), "_", "-")
}

// enumPrefix is what every value name of d starts with, taken from its zero
// value ("TOKEN_KIND_UNSPECIFIED" gives "TOKEN_KIND_").
func enumPrefix(d protoreflect.EnumDescriptor) string {
	zero := d.Values().ByNumber(0)
	if zero == nil {
		return ""
	}
	return strings.TrimSuffix(string(zero.Name()), "UNSPECIFIED")
}

// parseEnum reads a flag value into an enum number. It accepts the flag
// spelling ("server-join"), the short constant ("SERVER_JOIN") and the full
// constant ("TOKEN_KIND_SERVER_JOIN"), in any case.
func parseEnum(d protoreflect.EnumDescriptor, flag, s string) (protoreflect.EnumNumber, error) {
	if v := lookupEnum(d, s); v != nil {
		return v.Number(), nil
	}
	return 0, usageErrorf("%s %q: must be one of %s", flag, s, strings.Join(enumChoices(d), ", "))
}

func lookupEnum(d protoreflect.EnumDescriptor, s string) protoreflect.EnumValueDescriptor {
	name := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(s), "-", "_"))
	prefix := enumPrefix(d)
	for _, n := range []string{name, prefix + name} {
		if v := d.Values().ByName(protoreflect.Name(n)); v != nil && v.Number() != 0 {
			return v
		}
	}
	return nil
}

// enumChoices lists the flag spellings of every non-zero value of d.
func enumChoices(d protoreflect.EnumDescriptor) []string {
	var out []string
	vals := d.Values()
	prefix := enumPrefix(d)
	for i := 0; i < vals.Len(); i++ {
		v := vals.Get(i)
		if v.Number() == 0 {
			continue
		}
		out = append(out, strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(string(v.Name()), prefix)), "_", "-"))
	}
	return out
}

// formatTime renders a timestamp in UTC, "" when unset.
func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// formatDuration renders a duration, "" when unset.
func formatDuration(d *durationpb.Duration) string {
	if d == nil {
		return ""
	}
	return d.AsDuration().String()
}

func formatUint(v uint64) string { return strconv.FormatUint(v, 10) }

func formatBool(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// qualifiedName is "namespace/name", or just name for cluster-scoped resources.
func qualifiedName(m *meshfedv1.Meta) string {
	if m.GetNamespace() == "" {
		return m.GetName()
	}
	return m.GetNamespace() + "/" + m.GetName()
}

// formatLabels renders labels as sorted k=v pairs.
func formatLabels(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}

func formatLocality(l *meshfedv1.Locality) string {
	switch {
	case l.GetRegion() == "" && l.GetZone() == "":
		return ""
	case l.GetZone() == "":
		return l.GetRegion()
	default:
		return l.GetRegion() + "/" + l.GetZone()
	}
}
