package logging

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHCLogWritesStructuredSlog(t *testing.T) {
	var buf bytes.Buffer
	l := HCLog(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), "raft")
	l.Debug("hidden", "k", 1)
	l.Named("net").Warn("peer lost", "servers", hclog.Fmt("%d of %d", 1, 3))
	out := buf.String()
	if strings.Contains(out, "hidden") {
		t.Fatalf("debug line written at info level: %s", out)
	}
	for _, want := range []string{`"level":"WARN"`, `"msg":"peer lost"`, `"component":"raft.net"`, `"servers":"1 of 3"`} {
		if !strings.Contains(out, want) {
			t.Fatalf("missing %s in %s", want, out)
		}
	}
	if strings.Count(out, `"component"`) != 1 {
		t.Fatalf("component written more than once: %s", out)
	}
	if !l.IsWarn() || l.IsDebug() {
		t.Fatal("levels not taken from the slog handler")
	}
}
