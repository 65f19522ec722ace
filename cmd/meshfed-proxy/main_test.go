package main

import (
	"bytes"
	"strings"
	"testing"
)

// Bad flags stop the proxy before it contacts anything, with exit status 2
// and a message naming the flag.
func TestBadFlags(t *testing.T) {
	base := []string{"--server", "127.0.0.1:7700", "--ca-file", "ca.pem", "--token", "t", "--service", "web", "--port", "8080"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--server: required"},
		{append(base[:8:8], "--port", "0"), "--port"},
		{append(base, "--upstream", "payments"), "want NAME[.NAMESPACE]=HOST:PORT"},
		{append(base, "--upstream", "Payments=127.0.0.1:9001"), "lower case"},
		{append(base, "--log-level", "loud"), "--log-level"},
		{append(base, "--log-format", "xml"), "--log-format"},
		{append(base, "--listen", "nope"), "--listen"},
		{append(base, "--token-file", "/nonexistent/token"), "--token-file"},
		{append(base, "extra"), "unexpected argument"},
		{append(base, "--no-such-flag"), "flag provided but not defined"},
	} {
		var stderr bytes.Buffer
		code := run(tc.args, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("run(%q) = %d, stderr %q; want 2 and %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}

func TestHelp(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"--help"}, &stderr); code != 0 {
		t.Fatalf("--help exits %d", code)
	}
	for _, want := range []string{"--upstream", "--workload-api-socket", "Example:", "--admin"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}
