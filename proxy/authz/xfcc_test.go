package authz

import (
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestXFCC(t *testing.T) {
	server := id("spiffe://example.org/ns/default/sa/web")
	client := id(peerShop)
	got := XFCC(server, client)
	want := "By=spiffe://example.org/ns/default/sa/web;URI=spiffe://east.mesh/ns/shop/sa/cart"
	if got != want {
		t.Fatalf("XFCC = %q, want %q", got, want)
	}
	els, err := ParseXFCC(got)
	if err != nil {
		t.Fatal(err)
	}
	if wantEls := []map[string]string{{"By": server.String(), "URI": client.String()}}; !reflect.DeepEqual(els, wantEls) {
		t.Fatalf("ParseXFCC = %v, want %v", els, wantEls)
	}

	if got := XFCC(spiffeid.ID{}, client); got != "URI=spiffe://east.mesh/ns/shop/sa/cart" {
		t.Errorf("XFCC without server = %q", got)
	}
	if got := XFCC(server, spiffeid.ID{}); got != "" {
		t.Errorf("XFCC of a plain-text caller = %q, want \"\"", got)
	}
}

// format writes elements with appendPair, keys sorted.
func format(els []map[string]string) string {
	var b strings.Builder
	for i, el := range els {
		if i > 0 {
			b.WriteByte(',')
		}
		for j, k := range slices.Sorted(maps.Keys(el)) {
			if j > 0 {
				b.WriteByte(';')
			}
			appendPair(&b, k, el[k])
		}
	}
	return b.String()
}

func TestXFCCQuoting(t *testing.T) {
	for _, tt := range []struct {
		value, encoded string
	}{
		{"spiffe://td/a", `URI=spiffe://td/a`},
		{"", `URI=`},
		{`spiffe://td/a,b`, `URI="spiffe://td/a,b"`},
		{`spiffe://td/a;b=c`, `URI="spiffe://td/a;b=c"`},
		{`CN=x,O="y"`, `URI="CN=x,O=\"y\""`},
		{`a\b`, `URI=a\b`},
		{`a\"b,`, `URI="a\\"b,"`},
		{` a`, `URI=" a"`},
		{"a\t", "URI=\"a\t\""},
		{"a b", `URI=a b`},
	} {
		els := []map[string]string{{"URI": tt.value}}
		if got := format(els); got != tt.encoded {
			t.Errorf("format(%q) = %s, want %s", tt.value, got, tt.encoded)
		}
		back, err := ParseXFCC(tt.encoded)
		if err != nil || !reflect.DeepEqual(back, els) {
			t.Errorf("ParseXFCC(%s) = %q, %v; want %q", tt.encoded, back, err, els)
		}
	}
}

func TestParseXFCC(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []map[string]string
	}{
		{"", nil},
		{"  ", nil},
		// Envoy's documented examples.
		{`By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com`,
			[]map[string]string{{
				"By": "http://frontend.lyft.com", "Hash": "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688",
				"Subject": "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client", "URI": "http://testclient.lyft.com",
			}}},
		{`By=http://frontend.lyft.com;Hash=468;URI=http://testclient.lyft.com,By=http://backend.lyft.com;Hash=9ba;URI=http://frontend.lyft.com`,
			[]map[string]string{
				{"By": "http://frontend.lyft.com", "Hash": "468", "URI": "http://testclient.lyft.com"},
				{"By": "http://backend.lyft.com", "Hash": "9ba", "URI": "http://frontend.lyft.com"},
			}},
		// Header lines joined with ", ", keys in any case, quoted separators.
		{`by=spiffe://a/x ; uri=spiffe://b/y, URI="spiffe://c/z;,=" ,Foo=bar`,
			[]map[string]string{
				{"By": "spiffe://a/x", "URI": "spiffe://b/y"},
				{"URI": "spiffe://c/z;,="},
				{"Foo": "bar"},
			}},
		{`Subject="CN=foo\,bar"`, []map[string]string{{"Subject": `CN=foo\,bar`}}},
		{`URI=;By=`, []map[string]string{{"URI": "", "By": ""}}},
		{`URI=""`, []map[string]string{{"URI": ""}}},
	} {
		got, err := ParseXFCC(tt.in)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseXFCC(%s) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestParseXFCCErrors(t *testing.T) {
	for _, in := range []string{
		`URI`,
		`=x`,
		`URI=a;`,
		`URI=a,`,
		`,URI=a`,
		`URI=a,,By=b`,
		`URI=a;;By=b`,
		`URI="a`,
		`URI="a\"`,
		`URI="a"b`,
		`URI=a"b`,
		`URI=a=b`,
		`URI=a;uri=b`,
		`Foo=a;FOO=b`,
		`U RI=a`,
		`"URI"=a`,
	} {
		if got, err := ParseXFCC(in); err == nil {
			t.Errorf("ParseXFCC(%s) = %q, want an error", in, got)
		}
	}
}

// FuzzParseXFCC: whatever parses formats back to the same elements, and
// XFCC of any IDs parses back to them.
func FuzzParseXFCC(f *testing.F) {
	for _, s := range []string{
		"",
		"By=spiffe://example.org/ns/default/sa/web;URI=spiffe://east.mesh/ns/shop/sa/cart",
		`By=a;URI=b,By=c;URI="d;e"`,
		`Subject="/C=US/CN=Test Client";URI=http://x`,
		`URI="a\\"b,"`,
		`URI="a\"`,
		` uri = x `,
		`A=1;B=2, C=3`,
		`0= \`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		els, err := ParseXFCC(s)
		if err != nil {
			return
		}
		for _, el := range els {
			if len(el) == 0 {
				t.Fatalf("ParseXFCC(%q): empty element", s)
			}
		}
		out := format(els)
		back, err := ParseXFCC(out)
		if err != nil {
			t.Fatalf("ParseXFCC(%q) = %q, formatted %q, which does not parse: %v", s, els, out, err)
		}
		if len(els) == 0 && len(back) == 0 {
			return
		}
		if !reflect.DeepEqual(back, els) {
			t.Fatalf("ParseXFCC(%q) = %q, formatted %q, parsed back %q", s, els, out, back)
		}

		// Any SPIFFE IDs found in the input survive XFCC.
		for _, el := range els {
			c, err1 := spiffeid.FromString(el["URI"])
			sv, err2 := spiffeid.FromString(el["By"])
			if err1 != nil || err2 != nil {
				continue
			}
			got, err := ParseXFCC(XFCC(sv, c))
			if err != nil || len(got) != 1 || got[0]["URI"] != c.String() || got[0]["By"] != sv.String() {
				t.Fatalf("XFCC(%q, %q) parses to %q, %v", sv, c, got, err)
			}
		}
	})
}
