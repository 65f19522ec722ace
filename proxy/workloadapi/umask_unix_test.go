//go:build unix

package workloadapi_test

import (
	"path/filepath"
	"syscall"
	"testing"

	"github.com/meshfed/meshfed/proxy/workloadapi"
)

// TestModeIgnoresUmask: the socket gets Config.Mode whatever the umask.
// It changes the process umask, so it must not run in parallel.
func TestModeIgnoresUmask(t *testing.T) {
	path := filepath.Join(shortDir(t), "api.sock")
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)

	srv, err := workloadapi.New(newFixture(t).src, workloadapi.Config{Path: path, Mode: 0o660})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if got := socketMode(t, path); got != 0o660 {
		t.Fatalf("socket mode %v under umask 077, want 0660", got)
	}
}
