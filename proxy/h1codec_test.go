package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

func readTestHead(t *testing.T, raw string, request bool) (*h1Head, *bufio.Reader, error) {
	t.Helper()
	br := bufio.NewReaderSize(strings.NewReader(raw), 64)
	h := &h1Head{}
	err := h.readHead(br, request)
	return h, br, err
}

func TestH1RequestHeads(t *testing.T) {
	for _, c := range []struct {
		name, raw        string
		method, path     string
		body             bodyKind
		length           int64
		close            bool
		upgrade          bool
		wantCode         int // 0: no error
		wantErrSubstring string
	}{
		{name: "get", raw: "GET /a/b?x=1 HTTP/1.1\r\nHost: web\r\n\r\n", method: "GET", path: "/a/b", body: bodyNone, length: -1},
		{name: "post", raw: "POST /p HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello", method: "POST", path: "/p", body: bodyLength, length: 5},
		{name: "repeated equal lengths", raw: "POST /p HTTP/1.1\r\nHost: w\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n", method: "POST", path: "/p", body: bodyLength, length: 5},
		{name: "chunked", raw: "POST /p HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: Chunked\r\n\r\n", method: "POST", path: "/p", body: bodyChunked, length: -1},
		{name: "bare LF and leading empty lines", raw: "\r\n\nGET / HTTP/1.1\nHost: w\n\n", method: "GET", path: "/", body: bodyNone, length: -1},
		{name: "close", raw: "GET / HTTP/1.1\r\nHost: w\r\nConnection: keep-alive, close\r\n\r\n", method: "GET", path: "/", body: bodyNone, length: -1, close: true},
		{name: "http/1.0 closes", raw: "GET / HTTP/1.0\r\n\r\n", method: "GET", path: "/", body: bodyNone, length: -1, close: true},
		{name: "http/1.0 keep-alive", raw: "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", method: "GET", path: "/", body: bodyNone, length: -1},
		{name: "absolute form", raw: "GET http://web:80/x/y?q HTTP/1.1\r\nHost: web\r\n\r\n", method: "GET", path: "/x/y", body: bodyNone, length: -1},
		{name: "absolute form without path", raw: "GET http://web HTTP/1.1\r\nHost: web\r\n\r\n", method: "GET", path: "/", body: bodyNone, length: -1},
		{name: "upgrade", raw: "GET / HTTP/1.1\r\nHost: w\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", method: "GET", path: "/", body: bodyNone, length: -1, upgrade: true},

		{name: "missing host", raw: "GET / HTTP/1.1\r\n\r\n", wantCode: 400, wantErrSubstring: "Host"},
		{name: "two hosts", raw: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", wantCode: 400, wantErrSubstring: "Host"},
		{name: "length and chunked", raw: "POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", wantCode: 400, wantErrSubstring: "both"},
		{name: "conflicting lengths", raw: "POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", wantCode: 400, wantErrSubstring: "conflicting"},
		{name: "conflicting lengths in one header", raw: "POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 3, 4\r\n\r\n", wantCode: 400, wantErrSubstring: "Content-Length"},
		{name: "signed length", raw: "POST / HTTP/1.1\r\nHost: w\r\nContent-Length: +3\r\n\r\n", wantCode: 400, wantErrSubstring: "Content-Length"},
		{name: "negative length", raw: "POST / HTTP/1.1\r\nHost: w\r\nContent-Length: -1\r\n\r\n", wantCode: 400, wantErrSubstring: "Content-Length"},
		{name: "huge length", raw: "POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 99999999999999999999\r\n\r\n", wantCode: 400, wantErrSubstring: "Content-Length"},
		{name: "gzip coding", raw: "POST / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: gzip\r\n\r\n", wantCode: 501},
		{name: "two codings", raw: "POST / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", wantCode: 501},
		{name: "chunked twice", raw: "POST / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", wantCode: 501},
		{name: "obs-fold", raw: "GET / HTTP/1.1\r\nHost: w\r\nX-A: a\r\n b\r\n\r\n", wantCode: 400, wantErrSubstring: "folding"},
		{name: "space before colon", raw: "GET / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding : chunked\r\n\r\n", wantCode: 400, wantErrSubstring: "header line"},
		{name: "no colon", raw: "GET / HTTP/1.1\r\nHost: w\r\nnonsense\r\n\r\n", wantCode: 400, wantErrSubstring: "header line"},
		{name: "bare CR", raw: "GET / HTTP/1.1\r\nHost: w\rX: y\r\n\r\n", wantCode: 400, wantErrSubstring: "CR"},
		{name: "control character", raw: "GET / HTTP/1.1\r\nHost: w\r\nX-A: a\x00b\r\n\r\n", wantCode: 400, wantErrSubstring: "control"},
		{name: "http/2 line", raw: "GET / HTTP/2.0\r\nHost: w\r\n\r\n", wantCode: 505},
		{name: "no version", raw: "GET /\r\nHost: w\r\n\r\n", wantCode: 400, wantErrSubstring: "request line"},
		{name: "bad method", raw: "G(T / HTTP/1.1\r\nHost: w\r\n\r\n", wantCode: 400, wantErrSubstring: "method"},
		{name: "head too large", raw: "GET / HTTP/1.1\r\nHost: w\r\nX-Big: " + strings.Repeat("a", maxHeadBytes) + "\r\n\r\n", wantCode: 431},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, _, err := readTestHead(t, c.raw, true)
			if c.wantCode != 0 {
				var he *h1Error
				if !errors.As(err, &he) || he.code != c.wantCode || !strings.Contains(he.msg, c.wantErrSubstring) {
					t.Fatalf("err = %v, want a %d error containing %q", err, c.wantCode, c.wantErrSubstring)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(h.method) != c.method || string(h.path()) != c.path || h.body != c.body || h.length != c.length || h.close != c.close || h.upgrade != c.upgrade {
				t.Fatalf("method %q path %q body %d length %d close %v upgrade %v", h.method, h.path(), h.body, h.length, h.close, h.upgrade)
			}
		})
	}
	// A head cut short is an unexpected EOF, not a malformed message.
	if _, _, err := readTestHead(t, "GET / HTTP/1.1\r\nHost: w\r\n", true); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated head: %v", err)
	}
	if _, _, err := readTestHead(t, "", true); !errors.Is(err, io.EOF) {
		t.Fatalf("no head: %v", err)
	}
}

func TestH1ResponseHeads(t *testing.T) {
	for _, c := range []struct {
		name, raw, reqMethod string
		code                 int
		body                 bodyKind
		close                bool
		bad                  bool
	}{
		{name: "length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", reqMethod: "GET", code: 200, body: bodyLength},
		{name: "chunked", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", reqMethod: "GET", code: 200, body: bodyChunked},
		{name: "until close", raw: "HTTP/1.1 200 OK\r\n\r\n", reqMethod: "GET", code: 200, body: bodyUntilClose, close: true},
		{name: "head", raw: "HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n", reqMethod: "HEAD", code: 200, body: bodyNone},
		{name: "head without length", raw: "HTTP/1.1 200 OK\r\n\r\n", reqMethod: "HEAD", code: 200, body: bodyNone},
		{name: "no content", raw: "HTTP/1.1 204 No Content\r\n\r\n", reqMethod: "DELETE", code: 204, body: bodyNone},
		{name: "not modified", raw: "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", reqMethod: "GET", code: 304, body: bodyNone},
		{name: "both: chunked wins, then close", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", reqMethod: "GET", code: 200, body: bodyChunked, close: true},
		{name: "other coding: until close", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", reqMethod: "GET", code: 200, body: bodyUntilClose, close: true},
		{name: "no reason phrase", raw: "HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", reqMethod: "GET", code: 404, body: bodyNone},
		{name: "http/1.0 closes", raw: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", reqMethod: "GET", code: 200, body: bodyLength, close: true},
		{name: "bad status", raw: "HTTP/1.1 2x0 OK\r\n\r\n", bad: true},
		{name: "short status", raw: "HTTP/1.1 20\r\n\r\n", bad: true},
		{name: "not http", raw: "SSH-2.0-OpenSSH\r\n\r\n", bad: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, _, err := readTestHead(t, c.raw, false)
			if c.bad {
				if err == nil {
					t.Fatal("a malformed status line was accepted")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			h.responseBody([]byte(c.reqMethod))
			if h.code != c.code || h.body != c.body || h.close != c.close {
				t.Fatalf("code %d body %d close %v", h.code, h.body, h.close)
			}
		})
	}
}

// TestH1WriteRequestHead: hop-by-hop fields and those the Connection
// header names are dropped, Transfer-Encoding and the rest are kept in
// order, a field can be replaced, and a bodiless POST says so.
func TestH1WriteRequestHead(t *testing.T) {
	raw := "POST /x?y HTTP/1.1\r\nHost: web\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n" +
		"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nX-Forwarded-Client-Cert: forged\r\nUpgrade: h2c\r\nX-Keep: a\r\n\r\n"
	h, _, err := readTestHead(t, raw, true)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	h.writeRequestHead(bw, "X-Forwarded-Client-Cert", "X-Forwarded-Client-Cert", "By=me")
	bw.Flush()
	want := "POST /x?y HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nX-Keep: a\r\nX-Forwarded-Client-Cert: By=me\r\n\r\n"
	if out.String() != want {
		t.Fatalf("wrote\n%q\nwant\n%q", out.String(), want)
	}

	h, _, err = readTestHead(t, "POST / HTTP/1.0\r\n\r\n", true)
	if err != nil {
		t.Fatal(err)
	}
	out.Reset()
	h.writeRequestHead(bw, "")
	bw.Flush()
	if want := "POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n"; out.String() != want {
		t.Fatalf("wrote %q, want %q", out.String(), want)
	}
}

func TestH1Bodies(t *testing.T) {
	copyOf := func(t *testing.T, head, body string, request, dechunk bool) (string, error) {
		t.Helper()
		br := bufio.NewReaderSize(strings.NewReader(head+body+"NEXT"), 16)
		h := &h1Head{}
		if err := h.readHead(br, request); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		bw := bufio.NewWriterSize(&out, 16)
		err := copyBody(bw, br, h, dechunk)
		bw.Flush()
		if err == nil && h.body != bodyUntilClose {
			if rest, _ := io.ReadAll(br); string(rest) != "NEXT" {
				t.Fatalf("after the body: %q, want the next message", rest)
			}
		}
		return out.String(), err
	}
	const req = "POST / HTTP/1.1\r\nHost: w\r\n"
	chunkedBody := "5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n"
	for _, c := range []struct {
		name, head, body string
		request, dechunk bool
		want             string
		bad              bool
	}{
		{name: "length", head: req + "Content-Length: 40\r\n\r\n", body: strings.Repeat("x", 40), request: true, want: strings.Repeat("x", 40)},
		{name: "chunked verbatim", head: req + "Transfer-Encoding: chunked\r\n\r\n", body: chunkedBody, request: true, want: chunkedBody},
		{name: "chunked, bare LF", head: req + "Transfer-Encoding: chunked\r\n\r\n", body: "3\nabc\n0\n\n", request: true, want: "3\r\nabc\r\n0\r\n\r\n"},
		{name: "dechunked", head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", body: chunkedBody, dechunk: true, want: "helloabcdefghijklmnopqrstuvwxyz"},
		{name: "until close", head: "HTTP/1.1 200 OK\r\n\r\n", body: "all of it", want: "all of itNEXT"},
		{name: "chunk longer than its size", head: req + "Transfer-Encoding: chunked\r\n\r\n", body: "3\r\nabcd\r\n0\r\n\r\n", request: true, bad: true},
		{name: "bad chunk size", head: req + "Transfer-Encoding: chunked\r\n\r\n", body: "x\r\nabc\r\n0\r\n\r\n", request: true, bad: true},
		{name: "negative chunk size", head: req + "Transfer-Encoding: chunked\r\n\r\n", body: "-1\r\nabc\r\n0\r\n\r\n", request: true, bad: true},
		{name: "huge chunk size", head: req + "Transfer-Encoding: chunked\r\n\r\n", body: "fffffffffffffffff\r\n", request: true, bad: true},
		{name: "bad trailer", head: req + "Transfer-Encoding: chunked\r\n\r\n", body: "0\r\n folded\r\n\r\n", request: true, bad: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := copyOf(t, c.head, c.body, c.request, c.dechunk)
			if c.bad {
				var he *h1Error
				if !errors.As(err, &he) || he.code != http.StatusBadRequest {
					t.Fatalf("err = %v, want a 400 error", err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("copied %q (%v), want %q", got, err, c.want)
			}
		})
	}
	// A body cut short.
	br := bufio.NewReader(strings.NewReader(req + "Content-Length: 10\r\n\r\nshort"))
	h := &h1Head{}
	if err := h.readHead(br, true); err != nil {
		t.Fatal(err)
	}
	if err := copyBody(bufio.NewWriter(io.Discard), br, h, false); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short body: %v", err)
	}
}

// TestH1Allocations: reading a head, writing it and copying its body
// allocate nothing once the connection's buffers have grown.
func TestH1Allocations(t *testing.T) {
	msg := "POST /api/v1/items?x=1 HTTP/1.1\r\nHost: web\r\nUser-Agent: bench\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n0123456789abcdef"
	src := strings.NewReader(msg)
	br := bufio.NewReader(src)
	bw := bufio.NewWriter(io.Discard)
	h := &h1Head{}
	run := func() {
		src.Reset(msg)
		br.Reset(src)
		if err := h.readHead(br, true); err != nil {
			t.Fatal(err)
		}
		h.writeRequestHead(bw, "X-Forwarded-Client-Cert", "X-Forwarded-Client-Cert", "By=x")
		if err := copyBody(bw, br, h, false); err != nil {
			t.Fatal(err)
		}
		_ = h.path()
	}
	run()
	if a := testing.AllocsPerRun(100, run); a != 0 {
		t.Fatalf("%.1f allocations per message, want 0", a)
	}
}

// FuzzH1Request: any input either fails with an error or gives a request
// that, written out by the proxy and read again, has the same method,
// target, framing and body: what the proxy forwards means to the next
// hop what the proxy understood (no request smuggling through it).
func FuzzH1Request(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: w\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\n\r\nabc",
		"POST /p HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n",
		"POST /p HTTP/1.0\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\nContent-Length: 1\r\n\r\nz",
		"GET http://h/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		br := bufio.NewReaderSize(strings.NewReader(in), 16)
		var h h1Head
		if err := h.readHead(br, true); err != nil {
			return
		}
		var body bytes.Buffer
		bw := bufio.NewWriter(&body)
		if err := copyBody(bw, br, &h, false); err != nil {
			return
		}
		bw.Flush()
		var out bytes.Buffer
		bw = bufio.NewWriter(&out)
		h.writeRequestHead(bw, "")
		bw.Flush()
		out.Write(body.Bytes())

		br2 := bufio.NewReader(bytes.NewReader(out.Bytes()))
		var h2 h1Head
		if err := h2.readHead(br2, true); err != nil {
			t.Fatalf("re-reading %q: %v", out.String(), err)
		}
		var body2 bytes.Buffer
		bw2 := bufio.NewWriter(&body2)
		if err := copyBody(bw2, br2, &h2, false); err != nil {
			t.Fatalf("re-reading the body of %q: %v", out.String(), err)
		}
		bw2.Flush()
		if rest, _ := io.ReadAll(br2); len(rest) != 0 {
			t.Fatalf("%q left %q after the message", out.String(), rest)
		}
		if string(h2.method) != string(h.method) || string(h2.target) != string(h.target) || h2.body != h.body ||
			(h.body == bodyLength && h2.length != h.length) || !bytes.Equal(body2.Bytes(), body.Bytes()) {
			t.Fatalf("%q was forwarded as %q, which reads differently", in, out.String())
		}
	})
}

func TestH1ExpectContinue(t *testing.T) {
	for raw, want := range map[string]string{
		"POST / HTTP/1.1\r\nHost: w\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n": "HTTP/1.1 100 Continue\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: w\r\nExpect: 100-continue\r\n\r\n":                      "", // no body to wait for
		"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n":            "", // 1.0 has no 100
		"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\n\r\n":                         "",
	} {
		h, _, err := readTestHead(t, raw, true)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		if err := continueIfExpected(bw, h); err != nil {
			t.Fatal(err)
		}
		if out.String() != want {
			t.Errorf("%q: wrote %q, want %q", raw, out.String(), want)
		}
	}
}
