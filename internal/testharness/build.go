package testharness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// EnvBinDir names a directory of prebuilt binaries to use instead of
// building them (for CI jobs that build once).
const EnvBinDir = "MESHFED_TEST_BIN_DIR"

// BuildTags are the tags the binaries are built with.
const BuildTags = "hashicorpmetrics,grpcnotrace"

// binaries are the main packages built, if present in the module.
var binaries = []string{"meshfed", "meshfed-proxy"}

// built caches the one build of a test binary.
var built struct {
	once    sync.Once
	dir     string
	err     error
	cleanup bool // dir is ours to remove
}

// BuildBinaries builds ./cmd/meshfed (and ./cmd/meshfed-proxy when it
// exists) with -tags hashicorpmetrics, once per test binary, and returns the
// directory holding them. tb may be nil (in TestMain); then a failed build
// panics.
func BuildBinaries(tb testing.TB) string {
	if tb != nil {
		tb.Helper()
	}
	built.once.Do(func() {
		if d := os.Getenv(EnvBinDir); d != "" {
			built.dir = d
			if _, err := os.Stat(filepath.Join(d, "meshfed")); err != nil {
				built.err = fmt.Errorf("%s=%s: %w", EnvBinDir, d, err)
			}
			return
		}
		built.dir, built.err = buildBinaries()
		built.cleanup = built.err == nil
	})
	if built.err != nil {
		if tb == nil {
			panic(built.err)
		}
		tb.Fatalf("building meshfed binaries: %v", built.err)
	}
	return built.dir
}

// Binary returns the path of a built binary ("meshfed", "meshfed-proxy").
func Binary(tb testing.TB, name string) string {
	return filepath.Join(BuildBinaries(tb), name)
}

// Main runs the tests and removes the built binaries; use it from TestMain.
func Main(m *testing.M) int {
	code := m.Run()
	if built.cleanup {
		os.RemoveAll(built.dir)
	}
	return code
}

func buildBinaries() (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	var pkgs []string
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(root, "cmd", b)); err == nil {
			pkgs = append(pkgs, "./cmd/"+b)
		}
	}
	if len(pkgs) == 0 {
		return "", errors.New("no cmd/meshfed in module " + root)
	}
	dir, err := os.MkdirTemp("", "meshfed-testbin-")
	if err != nil {
		return "", err
	}
	args := append([]string{"build", "-tags", BuildTags, "-o", dir + string(os.PathSeparator)}, pkgs...)
	cmd := exec.Command(goTool(), args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("go %v: %w\n%s", args, err, out)
	}
	return dir, nil
}

// goTool finds the go command: on PATH, else in the GOROOT the test was
// built with.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// ModuleRoot returns the directory of the go.mod above the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}
