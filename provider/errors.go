package provider

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fieldMap says how the field paths of the API's validation errors
// ("invalid service.meta.labels[\"app\"]: ...", see docs/api.md) map onto a
// resource's attributes.
type fieldMap struct {
	// root is the request field holding the resource ("service",
	// "policy"); it is dropped from the path.
	root string
	// renames maps a top-level field name (after "meta." is dropped) to its
	// attribute ("version" -> "version_label").
	renames map[string]string
	// sets are attributes that are sets: a path stops at them, since set
	// elements have no index.
	sets map[string]bool
}

// apiFieldPath returns the attribute an API error names, if it names one.
func (fm fieldMap) apiFieldPath(msg string) (path.Path, bool) {
	rest, ok := strings.CutPrefix(msg, "invalid ")
	if !ok {
		return path.Empty(), false
	}
	steps, ok := parseFieldPath(rest)
	if !ok || len(steps) == 0 {
		return path.Empty(), false
	}
	if steps[0].name == fm.root && fm.root != "" {
		steps = steps[1:]
	}
	if len(steps) > 1 && steps[0].name == "meta" {
		steps = steps[1:]
	}
	if len(steps) == 0 || steps[0].name == "" {
		return path.Empty(), false
	}
	top := steps[0].name
	if r, ok := fm.renames[top]; ok {
		top = r
	}
	p := path.Root(top)
	if fm.sets[top] {
		return p, true
	}
	for _, s := range steps[1:] {
		switch {
		case s.name != "":
			p = p.AtName(s.name)
		case s.key != nil:
			p = p.AtMapKey(*s.key)
		default:
			p = p.AtListIndex(s.index)
		}
	}
	return p, true
}

// fieldStep is one element of an API field path: a name, a list index or
// a map key.
type fieldStep struct {
	name  string
	index int
	key   *string
}

// parseFieldPath reads `a.b[0].c["k"]` up to the ": " that ends it.
func parseFieldPath(s string) ([]fieldStep, bool) {
	var steps []fieldStep
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == ':':
			return steps, len(steps) > 0
		case c == '.':
			i++
		case c == '[':
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return nil, false
			}
			if i+1 < len(s) && s[i+1] == '"' {
				q, err := strconv.QuotedPrefix(s[i+1:])
				if err != nil {
					return nil, false
				}
				k, _ := strconv.Unquote(q)
				steps = append(steps, fieldStep{key: &k})
				i += 1 + len(q) + 1
				continue
			}
			n, err := strconv.Atoi(s[i+1 : i+end])
			if err != nil {
				return nil, false
			}
			steps = append(steps, fieldStep{index: n})
			i += end + 1
		default:
			j := i
			for j < len(s) && (s[j] == '_' || s[j] >= 'a' && s[j] <= 'z' || s[j] >= '0' && s[j] <= '9') {
				j++
			}
			if j == i {
				return nil, false
			}
			steps = append(steps, fieldStep{name: s[i:j]})
			i = j
		}
	}
	return steps, len(steps) > 0
}

// addAPIError reports a failed API call. A validation error that names a
// field becomes a diagnostic on that attribute; anything else a general
// error with the status code.
func addAPIError(diags *diag.Diagnostics, summary string, err error, fm fieldMap) {
	st, ok := status.FromError(err)
	if !ok {
		diags.AddError(summary, err.Error())
		return
	}
	if p, ok := fm.apiFieldPath(st.Message()); ok {
		diags.AddAttributeError(p, summary, "The meshfed API refused the value: "+st.Message())
		return
	}
	detail := codeName(st.Code()) + ": " + st.Message()
	switch st.Code() {
	case codes.FailedPrecondition:
		if strings.Contains(st.Message(), "version mismatch") {
			detail += "\n\nThe object changed since Terraform last read it. Run terraform plan (or apply) again: " +
				"it reads the current version and shows what would change."
		}
	case codes.Unauthenticated:
		detail += "\n\nCheck the provider's token (or MESHFED_TOKEN)."
	case codes.PermissionDenied:
		detail += "\n\nThe provider's token does not allow this call: managing resources takes an admin token."
	case codes.Unavailable:
		detail += "\n\nThe server could not be reached, or the cluster has no leader at the moment; retry."
	}
	diags.AddError(summary, detail)
}

// isNotFound reports whether err is the API's NOT_FOUND.
func isNotFound(err error) bool { return status.Code(err) == codes.NotFound }

// codeName is the canonical name of a code ("FAILED_PRECONDITION").
func codeName(c codes.Code) string {
	s := c.String()
	var b strings.Builder
	for i, r := range s {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// errNotConfigured is reported when an operation runs without a client.
var errNotConfigured = errors.New("the meshfed provider is not configured")

func notConfigured(diags *diag.Diagnostics) {
	diags.AddError("Provider not configured", fmt.Sprintf("%v: its address, token or trust bundle is missing or unknown.", errNotConfigured))
}

// isUnavailable reports whether err is the API's UNAVAILABLE (no leader,
// or the server unreachable): worth retrying.
func isUnavailable(err error) bool { return status.Code(err) == codes.Unavailable }
