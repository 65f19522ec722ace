package proxy

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func pprofServer(t *testing.T, on bool) *httptest.Server {
	t.Helper()
	p := &Proxy{m: newMetrics()}
	p.cfg.Pprof = on
	srv := httptest.NewServer(p.adminHandler())
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	// Without transparent decompression, to see the profile's own gzip.
	c := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestPprofIndex(t *testing.T) {
	srv := pprofServer(t, true)
	resp, body := get(t, srv.URL+"/debug/pprof/")
	if resp.StatusCode != 200 {
		t.Fatalf("index: %d %s", resp.StatusCode, body)
	}
	for _, want := range []string{`href="heap?debug=1"`, ">heap<", ">goroutine<", ">allocs<", ">mutex<", ">block<", ">threadcreate<", `href="profile"`, `href="goroutine?debug=2"`} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("index lacks %s:\n%s", want, body)
		}
	}
	// The subtree root without its slash redirects, as with net/http/pprof.
	resp, _ = get(t, srv.URL+"/debug/pprof")
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/debug/pprof/" {
		t.Errorf("/debug/pprof: %d at %s", resp.StatusCode, resp.Request.URL.Path)
	}
}

func TestPprofNamedProfiles(t *testing.T) {
	srv := pprofServer(t, true)
	for _, name := range []string{"heap", "goroutine", "allocs", "block", "mutex", "threadcreate"} {
		resp, body := get(t, srv.URL+"/debug/pprof/"+name)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", name, resp.StatusCode, body)
		}
		if len(body) < 2 || body[0] != 0x1f || body[1] != 0x8b {
			t.Errorf("%s: not a gzip-compressed profile: % x", name, body[:min(len(body), 8)])
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/octet-stream" {
			t.Errorf("%s: Content-Type %q", name, ct)
		}
	}
	resp, body := get(t, srv.URL+"/debug/pprof/heap?debug=1&gc=1")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") || !bytes.HasPrefix(body, []byte("heap profile:")) {
		t.Errorf("heap?debug=1: %d %q %.60q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	resp, body = get(t, srv.URL+"/debug/pprof/goroutine?debug=2")
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("goroutine ")) {
		t.Errorf("goroutine?debug=2: %d %.60q", resp.StatusCode, body)
	}
	if resp, _ := get(t, srv.URL+"/debug/pprof/nosuch"); resp.StatusCode != 404 {
		t.Errorf("unknown profile: %d", resp.StatusCode)
	}
	if resp, _ := get(t, srv.URL+"/debug/pprof/heap?seconds=5"); resp.StatusCode != 400 {
		t.Errorf("delta profile: %d", resp.StatusCode)
	}
}

func TestPprofCPUProfile(t *testing.T) {
	srv := pprofServer(t, true)
	for _, bad := range []string{"bad", "0", "-1", "1.5", "301"} {
		resp, body := get(t, srv.URL+"/debug/pprof/profile?seconds="+bad)
		if resp.StatusCode != 400 || !bytes.Contains(body, []byte("seconds")) {
			t.Errorf("seconds=%s: %d %s", bad, resp.StatusCode, body)
		}
	}
	resp, body := get(t, srv.URL+"/debug/pprof/profile?seconds=1")
	if resp.StatusCode != 200 {
		t.Fatalf("profile: %d %s", resp.StatusCode, body)
	}
	if len(body) < 2 || body[0] != 0x1f || body[1] != 0x8b {
		t.Fatalf("profile: not gzip: % x", body[:min(len(body), 8)])
	}
	if _, err := gzip.NewReader(bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	// go tool pprof reads it, when the go command is at hand.
	goBin, err := exec.LookPath("go")
	if err != nil || testing.Short() {
		return
	}
	f := filepath.Join(t.TempDir(), "cpu.pprof")
	if err := os.WriteFile(f, body, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(goBin, "tool", "pprof", "-raw", f).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("PeriodType: cpu nanoseconds")) {
		t.Errorf("go tool pprof -raw: %v\n%s", err, out)
	}
}

func TestPprofOff(t *testing.T) {
	srv := pprofServer(t, false)
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/profile?seconds=1"} {
		if resp, _ := get(t, srv.URL+path); resp.StatusCode != 404 {
			t.Errorf("%s without --pprof: %d", path, resp.StatusCode)
		}
	}
	if resp, body := get(t, srv.URL+"/metrics"); resp.StatusCode != 200 || !bytes.Contains(body, []byte("meshfed_proxy_certificate_expiry_timestamp_seconds 0\n")) {
		t.Errorf("/metrics: %d %.200s", resp.StatusCode, body)
	}
}
