package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
	"sigs.k8s.io/yaml"
)

// readFileArg reads the file named by -f, or standard input for "-". It
// returns the name to use in error messages.
func (a *app) readFileArg(path string) (string, []byte, error) {
	if path == "" {
		return "", nil, usageErrorf("-f/--file is required (a YAML or JSON file, or - for standard input)")
	}
	if path == "-" {
		data, err := io.ReadAll(a.stdin)
		if err != nil {
			return "", nil, fmt.Errorf("reading standard input: %w", err)
		}
		return "<stdin>", data, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	return path, data, nil
}

// decodeDocuments parses data (YAML, possibly several documents separated by
// "---", or JSON) into messages of the type newMsg returns. Every document
// must be in the protojson shape of that type; enum values may also be
// written the short way ("allow" for AUTHORIZATION_ACTION_ALLOW). All
// documents are parsed before any is used, so a bad file changes nothing.
func decodeDocuments[T proto.Message](source string, data []byte, newMsg func() T) ([]T, error) {
	var out []T
	docs := splitYAMLDocuments(data)
	for i, doc := range docs {
		where := source
		if len(docs) > 1 {
			where = fmt.Sprintf("%s: document %d", source, i+1)
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %s", where, strings.TrimPrefix(err.Error(), "error converting YAML to JSON: "))
		}
		js = bytes.TrimSpace(js)
		if bytes.Equal(js, []byte("null")) {
			continue // an empty document, e.g. a trailing "---"
		}
		msg := newMsg()
		js, err = normalizeJSON(js, msg.ProtoReflect().Descriptor())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if err := protojson.Unmarshal(js, msg); err != nil {
			return nil, fmt.Errorf("%s: %s", where, cleanProtoJSONError(err))
		}
		out = append(out, msg)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no document found", source)
	}
	return out, nil
}

var yamlSeparator = regexp.MustCompile(`^---(\s.*)?$`)

// splitYAMLDocuments splits on "---" lines.
func splitYAMLDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if yamlSeparator.MatchString(strings.TrimRight(line, "\r")) {
			docs = append(docs, bytes.Clone(cur.Bytes()))
			cur.Reset()
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	docs = append(docs, cur.Bytes())
	return docs
}

var (
	protoJSONPrefix   = regexp.MustCompile(`^proto:[\s\x{00a0}]*`)
	protoJSONLocation = regexp.MustCompile(`[\s\x{00a0}]*\(line \d+:\d+\):?`)
)

// cleanProtoJSONError drops protojson's "proto:" prefix and its "(line
// 1:23)" positions, which refer to the converted JSON rather than the user's
// file.
func cleanProtoJSONError(err error) string {
	s := protoJSONPrefix.ReplaceAllString(err.Error(), "")
	return strings.TrimSpace(protoJSONLocation.ReplaceAllString(s, ""))
}

// normalizeJSON walks a JSON document along message descriptor d. It rejects
// unknown fields naming their path (protojson would not say where) and
// expands short enum names ("allow", "round-robin") to their constants.
func normalizeJSON(js []byte, d protoreflect.MessageDescriptor) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("expected an object with the fields of %s, got %s", d.Name(), jsonKind(v))
	}
	if err := normalizeMessage(obj, d, ""); err != nil {
		return nil, err
	}
	return json.Marshal(obj)
}

func normalizeMessage(obj map[string]any, d protoreflect.MessageDescriptor, path string) error {
	fields := d.Fields()
	for _, key := range slices.Sorted(maps.Keys(obj)) {
		val := obj[key]
		fd := fields.ByJSONName(key)
		if fd == nil {
			fd = fields.ByTextName(key)
		}
		p := joinPath(path, key)
		if fd == nil {
			return fmt.Errorf("%s: unknown field (%s has %s)", p, d.Name(), fieldList(d))
		}
		nv, err := normalizeField(val, fd, p)
		if err != nil {
			return err
		}
		obj[key] = nv
	}
	return nil
}

func normalizeField(val any, fd protoreflect.FieldDescriptor, path string) (any, error) {
	switch {
	case val == nil:
		return val, nil
	case fd.IsMap():
		m, ok := val.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: expected a map of key: value, got %s", path, jsonKind(val))
		}
		for k, mv := range m {
			nv, err := normalizeSingular(mv, fd.MapValue(), path+"."+k)
			if err != nil {
				return nil, err
			}
			m[k] = nv
		}
		return m, nil
	case fd.IsList():
		l, ok := val.([]any)
		if !ok {
			return nil, fmt.Errorf("%s: expected a list, got %s", path, jsonKind(val))
		}
		for i, lv := range l {
			nv, err := normalizeSingular(lv, fd, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			l[i] = nv
		}
		return l, nil
	default:
		return normalizeSingular(val, fd, path)
	}
}

func normalizeSingular(val any, fd protoreflect.FieldDescriptor, path string) (any, error) {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		s, ok := val.(string)
		if !ok || fd.Enum().FullName() == "google.protobuf.NullValue" {
			return val, nil
		}
		if v := fd.Enum().Values().ByName(protoreflect.Name(s)); v != nil {
			return s, nil
		}
		if v := lookupEnum(fd.Enum(), s); v != nil {
			return string(v.Name()), nil
		}
		return nil, fmt.Errorf("%s: %q is not one of %s", path, s, strings.Join(enumChoices(fd.Enum()), ", "))
	case protoreflect.MessageKind, protoreflect.GroupKind:
		if val == nil {
			return val, nil
		}
		// Well-known types (Duration "1.5s", Timestamp) have their own JSON
		// forms: decode the value alone to name the field if it is wrong.
		if strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf.") {
			if fd.Message().FullName() == "google.protobuf.Duration" {
				val = goDuration(val)
			}
			js, err := json.Marshal(val)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			if err := protojson.Unmarshal(js, dynamicpb.NewMessage(fd.Message())); err != nil {
				return nil, fmt.Errorf("%s: %s", path, cleanProtoJSONError(err))
			}
			return val, nil
		}
		obj, ok := val.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: expected an object with the fields of %s, got %s", path, fd.Message().Name(), jsonKind(val))
		}
		return obj, normalizeMessage(obj, fd.Message(), path)
	default:
		return val, nil
	}
}

// goDuration turns a duration written the Go way ("300ms", "1m30s") into
// protobuf JSON's seconds ("0.3s", "90s"); anything else is returned as it
// is, for protojson to accept ("1.5s") or refuse.
func goDuration(val any) any {
	s, ok := val.(string)
	if !ok {
		return val
	}
	if _, err := strconv.ParseFloat(strings.TrimSuffix(s, "s"), 64); err == nil && strings.HasSuffix(s, "s") {
		return s
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return val
	}
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// fieldList names the JSON fields of d, for "unknown field" errors.
func fieldList(d protoreflect.MessageDescriptor) string {
	names := make([]string, d.Fields().Len())
	for i := range names {
		names[i] = d.Fields().Get(i).JSONName()
	}
	return strings.Join(names, ", ")
}

func jsonKind(v any) string {
	switch v.(type) {
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	default:
		return fmt.Sprintf("%T", v)
	}
}
