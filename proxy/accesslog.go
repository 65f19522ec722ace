package proxy

import (
	"bufio"
	"encoding/json"
	"io"
	"sync"
	"time"
)

// accessEntry is one JSON access-log line.
type accessEntry struct {
	Time      string  `json:"time"`
	Direction string  `json:"direction"`
	Protocol  string  `json:"protocol"`
	Source    string  `json:"source,omitempty"`
	Dest      string  `json:"destination"`
	Method    string  `json:"method,omitempty"`
	Path      string  `json:"path,omitempty"`
	Code      int     `json:"code,omitempty"`
	Duration  float64 `json:"duration_ms"`
	Upstream  string  `json:"upstream_address,omitempty"`
	Peer      string  `json:"peer_address,omitempty"`
	Decision  string  `json:"authz,omitempty"`
	Reason    string  `json:"reason,omitempty"`
	Error     string  `json:"error,omitempty"`
}

// accessLog writes JSON lines. Writes are serialized and flushed per line
// so that lines never interleave and nothing waits in a buffer.
type accessLog struct {
	mu sync.Mutex
	w  *bufio.Writer
	e  *json.Encoder
}

func newAccessLog(w io.Writer) *accessLog {
	bw := bufio.NewWriterSize(w, 4096)
	return &accessLog{w: bw, e: json.NewEncoder(bw)}
}

func (a *accessLog) write(e *accessEntry, start time.Time) {
	e.Time = start.UTC().Format(time.RFC3339Nano)
	a.mu.Lock()
	defer a.mu.Unlock()
	_ = a.e.Encode(e)
	_ = a.w.Flush()
}
