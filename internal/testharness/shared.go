package testharness

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

// Shared is a testing.TB for servers that outlive one test: clusters that a
// package's TestMain (or a sync.Once) starts once and every test of the
// package uses. It runs the cleanups that the harness registers (stopping
// the servers) when Close is called, prints what was logged to standard
// error if the run failed, and turns Fatal into a panic carrying a
// *SharedFatal, which Do recovers into an error.
//
// Only the methods the harness calls are implemented; the others panic.
type Shared struct {
	testing.TB // nil: guards against the methods not implemented here

	name string

	mu       sync.Mutex
	failed   bool
	logs     []string
	cleanups []func()
	tempDirs []string
}

// SharedFatal is the panic value of Shared.Fatal and Shared.Fatalf.
type SharedFatal struct{ Msg string }

func (f *SharedFatal) Error() string { return f.Msg }

// NewShared returns a Shared named name.
func NewShared(name string) *Shared { return &Shared{name: name} }

// Do runs fn (which starts clusters with s) and returns the failure of a
// Fatal in it, if any.
func (s *Shared) Do(fn func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(*SharedFatal)
			if !ok {
				panic(r)
			}
			err = f
		}
	}()
	fn()
	return nil
}

func (s *Shared) Helper()      {}
func (s *Shared) Name() string { return s.name }

func (s *Shared) Log(args ...any) { s.Logf("%s", fmt.Sprint(args...)) }

func (s *Shared) Logf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logs = append(s.logs, fmt.Sprintf(format, args...))
}

func (s *Shared) Error(args ...any) { s.Fail(); s.Log(args...) }

func (s *Shared) Errorf(format string, args ...any) { s.Fail(); s.Logf(format, args...) }

func (s *Shared) Fatal(args ...any) { s.Fatalf("%s", fmt.Sprint(args...)) }

func (s *Shared) Fatalf(format string, args ...any) {
	s.Errorf(format, args...)
	panic(&SharedFatal{Msg: fmt.Sprintf(format, args...)})
}

// Fail marks the run failed: Close then prints the logs (the servers'
// logs among them).
func (s *Shared) Fail() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failed = true
}

func (s *Shared) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

func (s *Shared) Cleanup(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, fn)
}

func (s *Shared) TempDir() string {
	dir, err := os.MkdirTemp("", "meshfed-shared-")
	if err != nil {
		s.Fatalf("creating a temporary directory: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tempDirs = append(s.tempDirs, dir)
	return dir
}

// Close runs the cleanups, last registered first, removes the temporary
// directories, and prints the logs if the run failed.
func (s *Shared) Close() {
	s.mu.Lock()
	cleanups := s.cleanups
	s.cleanups = nil
	s.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.tempDirs {
		os.RemoveAll(d)
	}
	if s.failed {
		for _, l := range s.logs {
			fmt.Fprintln(os.Stderr, l)
		}
	}
}
