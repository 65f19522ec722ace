// Package e2e holds end-to-end tests of the control plane: real "meshfed
// server" processes on 127.0.0.1 (started by internal/testharness exactly
// as an operator starts them), driven through the meshfed CLI binary and,
// where the CLI has no command for a call, through the Go API client.
//
// The tests kill, pause and restart servers, refuse joins, wipe and restore
// a whole cluster from a snapshot, and scrape the HTTP endpoints. Run them
// with
//
//	go test -tags hashicorpmetrics ./test/e2e/
package e2e
