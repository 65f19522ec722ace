package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// An HTTP/1.1 message codec for the forwarding path. A message head is
// read into a buffer that belongs to the connection and is reused for
// every message on it; the body is copied from one side's reader to the
// other side's writer without being taken apart (chunked bodies keep
// their framing). net/http's ReadRequest and ReadResponse build maps,
// strings and URLs for every message, about 2.5 KB a request, and the
// garbage collections that follow were the largest source of the proxy's
// 99th-percentile latency.
//
// The parser is strict where a lenient one would let a request mean one
// thing to the proxy and another to the app (request smuggling): a
// request with both Content-Length and Transfer-Encoding, with differing
// Content-Lengths, with a transfer coding other than chunked, with an
// obsolete folded header line, with whitespace before a header's colon,
// or with control characters in a field is refused.

const (
	// maxHeadBytes bounds a message head (Envoy's default is 60 KiB).
	maxHeadBytes = 64 << 10
	// maxChunkLine bounds a chunk-size line, extensions included.
	maxChunkLine = 4 << 10
)

// bodyKind is how a message's body is delimited.
type bodyKind uint8

const (
	bodyNone       bodyKind = iota
	bodyLength              // Content-Length bytes
	bodyChunked             // chunked transfer coding
	bodyUntilClose          // a response read until the connection closes
)

type h1Field struct{ name, value []byte }

// h1Head is one message head. Its slices point into buf and are valid
// until the next read into the same h1Head.
type h1Head struct {
	buf    []byte
	fields []h1Field

	// Request line.
	method, target []byte
	// Status line.
	status []byte // the whole line, forwarded as received
	code   int

	// connNamed are the field names the Connection header lists.
	connNamed [][]byte

	minor    int // HTTP/1.minor
	body     bodyKind
	length   int64
	close    bool // the sender will close (or asks to close) after this message
	upgrade  bool // an Upgrade header was present
	hasHost  bool
	teHeader bool // a Transfer-Encoding header was present
	// expectContinue: the client waits for "100 Continue" before it
	// sends the body.
	expectContinue bool

	// traceparent is the request's traceparent field, if any; traceOut,
	// when set, replaces it in the forwarded request.
	traceparent []byte
	traceOut    string
}

// h1Error is a malformed message: code is the status to answer a request
// with.
type h1Error struct {
	code int
	msg  string
}

func (e *h1Error) Error() string { return e.msg }

func badMessage(msg string) error { return &h1Error{code: http.StatusBadRequest, msg: msg} }

// readLine reads one line of a head into h.buf and returns it without its
// line end. It fails once the head passes maxHeadBytes.
func (h *h1Head) readLine(br *bufio.Reader) ([]byte, error) {
	start := len(h.buf)
	for {
		frag, err := br.ReadSlice('\n')
		if len(h.buf)+len(frag) > maxHeadBytes {
			return nil, &h1Error{code: http.StatusRequestHeaderFieldsTooLarge, msg: "message head too large"}
		}
		h.buf = append(h.buf, frag...)
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) && len(h.buf) > start {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line := h.buf[start : len(h.buf)-1]
	line = bytes.TrimSuffix(line, []byte{'\r'})
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, badMessage("bare CR in message head")
	}
	return line, nil
}

// readHead reads a request head (request true) or a response head.
func (h *h1Head) readHead(br *bufio.Reader, request bool) error {
	h.buf = h.buf[:0]
	h.fields = h.fields[:0]
	h.method, h.target, h.status = nil, nil, nil
	h.code, h.minor, h.body, h.length = 0, 0, bodyNone, -1
	h.close, h.upgrade, h.hasHost, h.teHeader = false, false, false, false
	h.connNamed = h.connNamed[:0]
	h.expectContinue = false
	h.traceparent, h.traceOut = nil, ""

	var first []byte
	for {
		line, err := h.readLine(br)
		if err != nil {
			return err
		}
		// A server ignores empty lines before a request line (RFC 9112
		// section 2.2).
		if len(line) > 0 || !request {
			first = line
			break
		}
		h.buf = h.buf[:0]
	}
	var err error
	if request {
		err = h.parseRequestLine(first)
	} else {
		err = h.parseStatusLine(first)
	}
	if err != nil {
		return err
	}
	for {
		line, err := h.readLine(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // within the head
			}
			return err
		}
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return badMessage("obsolete line folding in a header")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return badMessage("malformed header line")
		}
		value := bytes.Trim(line[colon+1:], " \t")
		for _, c := range value {
			if c < ' ' && c != '\t' || c == 0x7f {
				return badMessage("control character in a header value")
			}
		}
		h.fields = append(h.fields, h1Field{name: line[:colon], value: value})
		if colon == len("traceparent") && asciiEqualFold(line[:colon], "traceparent") {
			h.traceparent = value
		}
	}
	return h.frame(request)
}

func (h *h1Head) parseRequestLine(line []byte) error {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return badMessage("malformed request line")
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return badMessage("malformed request line")
	}
	h.method, h.target = line[:sp1], rest[:sp2]
	if !isToken(h.method) {
		return badMessage("malformed request method")
	}
	for _, c := range h.target {
		if c <= ' ' || c == 0x7f {
			return badMessage("malformed request target")
		}
	}
	return h.parseVersion(rest[sp2+1:])
}

func (h *h1Head) parseStatusLine(line []byte) error {
	h.status = line
	if len(line) < 12 || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return errors.New("malformed status line")
	}
	if err := h.parseVersion(line[:8]); err != nil {
		return err
	}
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return errors.New("malformed status code")
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return errors.New("malformed status code")
	}
	h.code = code
	return nil
}

func (h *h1Head) parseVersion(v []byte) error {
	if len(v) != 8 || string(v[:7]) != "HTTP/1." || v[7] < '0' || v[7] > '9' {
		return &h1Error{code: http.StatusHTTPVersionNotSupported, msg: "unsupported HTTP version " + strconv.Quote(string(v))}
	}
	h.minor = int(v[7] - '0')
	return nil
}

// frame reads the headers that decide the body's length and the
// connection's fate.
func (h *h1Head) frame(request bool) error {
	keepAlive := false
	chunked := false
	for _, f := range h.fields {
		switch {
		case asciiEqualFold(f.name, "Content-Length"):
			n, ok := parseContentLength(f.value)
			if !ok {
				return badMessage("invalid Content-Length")
			}
			if h.length >= 0 && h.length != n {
				return badMessage("conflicting Content-Length values")
			}
			h.length = n
		case asciiEqualFold(f.name, "Transfer-Encoding"):
			h.teHeader = true
			// The last coding decides; only chunked is understood in
			// requests (RFC 9112 section 6.1).
			last := f.value
			if i := bytes.LastIndexByte(last, ','); i >= 0 {
				last = bytes.Trim(last[i+1:], " \t")
			}
			chunked = asciiEqualFold(last, "chunked")
			if request && (!chunked || bytes.IndexByte(f.value, ',') >= 0) {
				return &h1Error{code: http.StatusNotImplemented, msg: "unsupported transfer coding"}
			}
		case asciiEqualFold(f.name, "Connection"):
			forEachToken(f.value, func(t []byte) {
				switch {
				case asciiEqualFold(t, "close"):
					h.close = true
				case asciiEqualFold(t, "keep-alive"):
					keepAlive = true
				}
				h.connNamed = append(h.connNamed, t)
			})
		case asciiEqualFold(f.name, "Upgrade"):
			h.upgrade = true
		case asciiEqualFold(f.name, "Expect"):
			h.expectContinue = request && asciiEqualFold(f.value, "100-continue")
		case asciiEqualFold(f.name, "Host"):
			if request && h.hasHost {
				return badMessage("more than one Host header")
			}
			h.hasHost = true
		}
	}
	if h.minor == 0 && !keepAlive {
		h.close = true
	}
	if h.teHeader && h.length >= 0 {
		if request {
			return badMessage("both Content-Length and Transfer-Encoding")
		}
		// A response: Transfer-Encoding wins (RFC 9112 section 6.3),
		// and the connection cannot be trusted afterwards.
		h.length = -1
		h.close = true
	}
	if request && h.minor >= 1 && !h.hasHost {
		return badMessage("missing Host header")
	}
	switch {
	case chunked:
		h.body = bodyChunked
	case h.teHeader:
		h.body = bodyUntilClose // a response with another final coding
		h.close = true
	case h.length > 0:
		h.body = bodyLength
	case h.length == 0 || request:
		h.body = bodyNone
	default:
		h.body = bodyUntilClose
		h.close = true
	}
	return nil
}

// responseBody adjusts a response's body for the request it answers: HEAD
// responses, 1xx, 204 and 304 have none (RFC 9112 section 6.3).
func (h *h1Head) responseBody(reqMethod []byte) {
	if string(reqMethod) == "HEAD" || h.code < 200 || h.code == 204 || h.code == 304 {
		if h.body == bodyUntilClose {
			h.close = false
		}
		h.body = bodyNone
	}
}

// path is the request target's path for authorization: the target
// itself in origin form ("/a/b?q"), the path of an absolute-form target,
// "*" for OPTIONS *.
func (h *h1Head) path() []byte {
	t := h.target
	if len(t) > 0 && t[0] != '/' {
		if i := bytes.Index(t, []byte("://")); i > 0 {
			t = t[i+3:]
			if j := bytes.IndexByte(t, '/'); j >= 0 {
				t = t[j:]
			} else {
				t = []byte("/")
			}
		}
	}
	if i := bytes.IndexByte(t, '?'); i >= 0 {
		t = t[:i]
	}
	return t
}

// hopByHopField reports whether a field describes one connection, not the
// message: it is not forwarded. Transfer-Encoding and Trailer are
// forwarded, because a chunked body is forwarded with its framing.
func (h *h1Head) hopByHopField(name []byte) bool {
	for _, k := range [...]string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Upgrade"} {
		if asciiEqualFold(name, k) {
			return true
		}
	}
	// Fields the Connection header names.
	for _, t := range h.connNamed {
		if bytes.EqualFold(t, name) {
			return !asciiEqualFold(name, "Transfer-Encoding")
		}
	}
	return false
}

// writeRequestHead writes the request line and the forwarded fields; skip
// names fields to leave out, and extra adds fields.
func (h *h1Head) writeRequestHead(bw *bufio.Writer, skip string, extra ...string) {
	bw.Write(h.method)
	bw.WriteByte(' ')
	bw.Write(h.target)
	if h.minor == 0 {
		// An HTTP/1.0 client's request stays one, so that the
		// response comes back in a form the client reads.
		bw.WriteString(" HTTP/1.0\r\n")
	} else {
		bw.WriteString(" HTTP/1.1\r\n")
	}
	for _, f := range h.fields {
		if h.hopByHopField(f.name) || asciiEqualFold(f.name, "Expect") || (skip != "" && asciiEqualFold(f.name, skip)) ||
			(h.traceOut != "" && asciiEqualFold(f.name, "traceparent")) {
			continue
		}
		writeField(bw, f.name, f.value)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		bw.WriteString(extra[i])
		bw.WriteString(": ")
		bw.WriteString(extra[i+1])
		bw.WriteString("\r\n")
	}
	if h.traceOut != "" {
		bw.WriteString("traceparent: ")
		bw.WriteString(h.traceOut)
		bw.WriteString("\r\n")
	}
	if h.body == bodyNone && h.length < 0 && bodyExpected(h.method) {
		// A POST without a body still says so.
		bw.WriteString("Content-Length: 0\r\n")
	}
	bw.WriteString("\r\n")
}

// bodyExpected reports methods whose requests normally carry a body.
func bodyExpected(method []byte) bool {
	switch string(method) {
	case "POST", "PUT", "PATCH":
		return true
	}
	return false
}

// writeResponseHead writes the status line and the forwarded fields. close
// adds "Connection: close". dechunk drops Transfer-Encoding (the body is
// written without its chunk framing, for an HTTP/1.0 client).
func (h *h1Head) writeResponseHead(bw *bufio.Writer, close, dechunk bool) {
	bw.Write(h.status)
	bw.WriteString("\r\n")
	for _, f := range h.fields {
		if h.hopByHopField(f.name) || (dechunk && (asciiEqualFold(f.name, "Transfer-Encoding") || asciiEqualFold(f.name, "Trailer"))) {
			continue
		}
		writeField(bw, f.name, f.value)
	}
	if close {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

func writeField(bw *bufio.Writer, name, value []byte) {
	bw.Write(name)
	bw.WriteString(": ")
	bw.Write(value)
	bw.WriteString("\r\n")
}

// continueIfExpected answers "Expect: 100-continue" at once: the proxy
// reads the body before the next hop sees the request (so that a small
// one can be sent again elsewhere), and the next hop does not see Expect.
func continueIfExpected(bw *bufio.Writer, req *h1Head) error {
	if !req.expectContinue || req.body == bodyNone || req.minor == 0 {
		return nil
	}
	bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	return bw.Flush()
}

// copyBody copies a message's body from br to bw, as its framing says;
// with dechunk, a chunked body's data is written without its framing
// (and its trailer is dropped).
func copyBody(bw *bufio.Writer, br *bufio.Reader, h *h1Head, dechunk bool) error {
	switch h.body {
	case bodyLength:
		return copyN(bw, br, h.length)
	case bodyUntilClose:
		_, err := br.WriteTo(bw)
		return err
	case bodyChunked:
		return copyChunked(bw, br, dechunk)
	}
	return nil
}

// copyN copies exactly n bytes.
func copyN(bw *bufio.Writer, br *bufio.Reader, n int64) error {
	for n > 0 {
		if br.Buffered() == 0 {
			if _, err := br.Peek(1); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
		}
		k := br.Buffered()
		if int64(k) > n {
			k = int(n)
		}
		b, _ := br.Peek(k)
		if _, err := bw.Write(b); err != nil {
			return err
		}
		_, _ = br.Discard(k)
		n -= int64(k)
	}
	return nil
}

// copyChunked copies a chunked body: size lines, data, the last chunk and
// the trailer section.
func copyChunked(bw *bufio.Writer, br *bufio.Reader, dechunk bool) error {
	var line []byte
	for {
		var err error
		line, err = readChunkLine(br, line[:0])
		if err != nil {
			return err
		}
		size, ok := parseChunkSize(line)
		if !ok {
			return badMessage("malformed chunk size")
		}
		if !dechunk {
			bw.Write(line)
			bw.WriteString("\r\n")
		}
		if size == 0 {
			break
		}
		if err := copyN(bw, br, size); err != nil {
			return err
		}
		end, err := readChunkLine(br, line[:0])
		if err != nil {
			return err
		}
		if len(end) != 0 {
			return badMessage("chunk data longer than its size")
		}
		if !dechunk {
			bw.WriteString("\r\n")
		}
	}
	// Trailer fields, then an empty line.
	for {
		var err error
		line, err = readChunkLine(br, line[:0])
		if err != nil {
			return err
		}
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t' || bytes.IndexByte(line, ':') <= 0) {
			return badMessage("malformed trailer field")
		}
		if !dechunk {
			bw.Write(line)
			bw.WriteString("\r\n")
		}
		if len(line) == 0 {
			return nil
		}
	}
}

// readChunkLine reads a line of a chunked body (without its line end)
// into buf.
func readChunkLine(br *bufio.Reader, buf []byte) ([]byte, error) {
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)+len(frag) > maxChunkLine {
			return nil, badMessage("chunk line too long")
		}
		buf = append(buf, frag...)
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	buf = buf[:len(buf)-1]
	buf = bytes.TrimSuffix(buf, []byte{'\r'})
	if bytes.IndexByte(buf, '\r') >= 0 {
		return nil, badMessage("bare CR in chunked body")
	}
	return buf, nil
}

// parseChunkSize reads a chunk-size line: hex digits, then optional
// extensions after ';'.
func parseChunkSize(line []byte) (int64, bool) {
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range line {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | int64(d)
	}
	return n, true
}

func parseContentLength(v []byte) (int64, bool) {
	// A list of identical values ("5, 5") is allowed (RFC 9110 section
	// 8.6); anything else must be digits.
	var n int64 = -1
	ok := true
	forEachToken(v, func(t []byte) {
		if len(t) == 0 || len(t) > 18 {
			ok = false
			return
		}
		var x int64
		for _, c := range t {
			if c < '0' || c > '9' {
				ok = false
				return
			}
			x = x*10 + int64(c-'0')
		}
		if n >= 0 && n != x {
			ok = false
		}
		n = x
	})
	return n, ok && n >= 0
}

// forEachToken calls fn with each comma-separated element, trimmed.
func forEachToken(v []byte, fn func([]byte)) {
	for len(v) > 0 {
		var t []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			t, v = v[:i], v[i+1:]
		} else {
			t, v = v, nil
		}
		fn(bytes.Trim(t, " \t"))
	}
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if lower(b[i]) != lower(s[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// isToken reports whether b is a non-empty RFC 9110 token.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenChar[c] {
			return false
		}
	}
	return true
}

// tokenChar marks the bytes of an RFC 9110 token (tchar).
var tokenChar = func() (t [256]bool) {
	for c := '!'; c <= '~'; c++ {
		if !strings.ContainsRune(`"(),/:;<=>?@[\]{}`, c) {
			t[c] = true
		}
	}
	return t
}()
