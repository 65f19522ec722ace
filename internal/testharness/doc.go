// Package testharness runs real meshfed server processes for tests: it
// builds the binaries once per test binary, starts clusters of servers on
// 127.0.0.1 with free ports, bootstraps and joins them the way an operator
// does (the CLI's "server join-token"), and stops everything when the test
// ends. A server's standard error goes to a file in its data directory and is
// printed with t.Log when the test fails.
//
// Every wait is a poll with a deadline; nothing sleeps for a fixed time.
//
// Packages whose tests use the harness should remove the built binaries at
// the end with
//
//	func TestMain(m *testing.M) { os.Exit(testharness.Main(m)) }
package testharness
