package authz

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// XFCCHeader is the name of the header XFCC builds.
const XFCCHeader = "X-Forwarded-Client-Cert"

// xfccKeys are the keys Envoy writes, in its spelling. Keys compare
// case-insensitively; ParseXFCC returns these in this spelling.
var xfccKeys = [...]string{"By", "Hash", "Cert", "Chain", "Subject", "URI", "DNS"}

// XFCC returns the X-Forwarded-Client-Cert header value the inbound proxy
// sets for the app, in Envoy's format:
//
//	By=<server SPIFFE ID>;URI=<client SPIFFE ID>
//
// Values are double-quoted, with '"' escaped as `\"`, when they contain ',',
// ';', '=' or '"' (SPIFFE IDs can hold ',', ';' and '=' only when go-spiffe
// is built with spiffeid_charset_backcompat). By is left out when server is
// zero. For a plain-text caller (client zero) XFCC returns "": the proxy
// sets no header, and must drop any the caller sent.
func XFCC(server, client spiffeid.ID) string {
	if client.IsZero() {
		return ""
	}
	var b strings.Builder
	if !server.IsZero() {
		appendPair(&b, "By", server.String())
		b.WriteByte(';')
	}
	appendPair(&b, "URI", client.String())
	return b.String()
}

// appendPair writes key=value, quoting value when needed.
func appendPair(b *strings.Builder, key, value string) {
	b.WriteString(key)
	b.WriteByte('=')
	if !needsQuote(value) {
		b.WriteString(value)
		return
	}
	b.WriteByte('"')
	for i := 0; i < len(value); i++ {
		if value[i] == '"' {
			b.WriteByte('\\')
		}
		b.WriteByte(value[i])
	}
	b.WriteByte('"')
}

// needsQuote: Envoy's separators, the quote itself, and the blanks
// ParseXFCC trims around an unquoted value.
func needsQuote(v string) bool {
	if v != "" && (isBlank(v[0]) || isBlank(v[len(v)-1])) {
		return true
	}
	return strings.ContainsAny(v, `,;="`)
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' }

// ParseXFCC parses an X-Forwarded-Client-Cert header value: elements
// separated by ',', each of key=value pairs separated by ';'. A value may be
// double-quoted, in which `\"` stands for '"' (and a backslash before any
// other character is kept, as in Envoy's format). Blanks around separators
// are ignored, so header lines joined with ", " parse too. Keys compare
// case-insensitively; Envoy's keys (By, Hash, Cert, Chain, Subject, URI,
// DNS) are returned in that spelling, others as sent. A key repeated in one
// element is an error, as are empty keys and elements, an unterminated
// quote, and '"' or '=' in an unquoted value. An empty or blank header has
// no elements.
func ParseXFCC(v string) ([]map[string]string, error) {
	p := xfccParser{s: v}
	p.skipBlanks()
	if p.i == len(v) {
		return nil, nil
	}
	var out []map[string]string
	elem := map[string]string{}
	for {
		key, value, err := p.pair()
		if err != nil {
			return nil, err
		}
		for k := range elem {
			if strings.EqualFold(k, key) {
				return nil, fmt.Errorf("xfcc: key %q repeated in element %d", key, len(out)+1)
			}
		}
		elem[key] = value
		p.skipBlanks()
		if p.i == len(v) {
			return append(out, elem), nil
		}
		switch v[p.i] {
		case ';':
		case ',':
			out = append(out, elem)
			elem = map[string]string{}
		default:
			return nil, fmt.Errorf("xfcc: unexpected %q at offset %d", v[p.i], p.i)
		}
		p.i++
	}
}

type xfccParser struct {
	s string
	i int
}

func (p *xfccParser) skipBlanks() {
	for p.i < len(p.s) && isBlank(p.s[p.i]) {
		p.i++
	}
}

// pair reads blanks, key=value, stopping before the next separator.
func (p *xfccParser) pair() (key, value string, err error) {
	p.skipBlanks()
	start := p.i
	for p.i < len(p.s) && !strings.ContainsRune(`=;,"`, rune(p.s[p.i])) && !isBlank(p.s[p.i]) {
		p.i++
	}
	key = p.s[start:p.i]
	if key == "" {
		return "", "", fmt.Errorf("xfcc: empty key or element at offset %d", start)
	}
	if p.i == len(p.s) || p.s[p.i] != '=' {
		return "", "", fmt.Errorf("xfcc: key %q is not followed by '='", key)
	}
	for _, k := range xfccKeys {
		if strings.EqualFold(k, key) {
			key = k
			break
		}
	}
	p.i++
	p.skipBlanks()
	if p.i < len(p.s) && p.s[p.i] == '"' {
		value, err = p.quoted()
		return key, value, err
	}
	start = p.i
	for p.i < len(p.s) && p.s[p.i] != ';' && p.s[p.i] != ',' {
		switch p.s[p.i] {
		case '"', '=':
			return "", "", fmt.Errorf("xfcc: value of %q must be quoted to hold %q", key, p.s[p.i])
		}
		p.i++
	}
	return key, strings.TrimRight(p.s[start:p.i], " \t"), nil
}

var errUnterminated = errors.New("xfcc: unterminated quoted value")

// quoted reads a quoted value, p.i at its opening quote.
func (p *xfccParser) quoted() (string, error) {
	p.i++
	var b strings.Builder
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return b.String(), nil
		case c == '\\' && p.i+1 < len(p.s) && p.s[p.i+1] == '"':
			b.WriteByte('"')
			p.i += 2
		default:
			b.WriteByte(c)
			p.i++
		}
	}
	return "", errUnterminated
}
