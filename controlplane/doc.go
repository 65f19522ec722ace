// Package controlplane is the meshfed server: a Raft node replicating the
// state store, the gRPC management API in front of it, the HTTP endpoints for
// health and metrics, and the leader's housekeeping (bootstrap, membership,
// dead-server cleanup).
//
// Every write follows the same path: a follower forwards the call to the
// leader; the leader authenticates and authorizes the caller, normalizes and
// validates the request, skips writes that change nothing, and applies a Raft
// command whose result (including compare-and-swap failures) comes back as a
// value from the FSM.
package controlplane
