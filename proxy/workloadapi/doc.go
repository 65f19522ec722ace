// Package workloadapi serves the X.509 part of the SPIFFE Workload API on a
// unix domain socket, so that an application running beside meshfed-proxy
// gets its identity from the proxy instead of joining the mesh itself.
//
// # What it serves
//
// The per-pod proxy holds the pod's X.509 SVID and the trust bundles it
// follows (the own trust domain's and every federated one), usually through
// an svidclient.Client. A Server publishes them, read-only, to any local
// process that uses a SPIFFE Workload API client such as go-spiffe's
// workloadapi package (NewX509Source, Client.WatchX509Context, ...), or
// anything else that speaks the standard API (Envoy's SDS-to-Workload-API
// bridges, spiffe-helper, the Java and Rust SPIFFE libraries):
//
//   - FetchX509SVID streams the SVID (chain, PKCS#8 private key, the own
//     trust domain's bundle) and the federated bundles, keyed by trust
//     domain ID ("spiffe://example.org").
//   - FetchX509Bundles streams every bundle, own and federated.
//   - The JWT-SVID and WIT-SVID profiles answer Unimplemented: meshfed
//     issues X.509 SVIDs only.
//
// Both streams send a first response as soon as there is something to send,
// then a new complete response each time the Source reports a change that
// actually alters it (a renewed SVID, a CA rotation, a federated bundle
// added, updated or removed). The application therefore rotates its
// certificate and key with the proxy, without restarting and without
// reading files.
//
// # Behaviour worth knowing
//
// Every call must carry the gRPC metadata "workload.spiffe.io: true", as the
// SPIFFE Workload Endpoint specification requires so that a request forged
// through some other local service (server-side request forgery) cannot
// reach the API; a call without it fails with InvalidArgument.
//
// Before the proxy holds its first SVID (it is still attesting), a
// FetchX509SVID stream stays open and sends the SVID the moment it arrives;
// likewise FetchX509Bundles until a bundle is known. The specification's
// PermissionDenied is meant for a caller that is not entitled to any
// identity, which the workload beside its own proxy always is; answering it
// during start-up would make go-spiffe's clients retry with a linear
// backoff (1s, 2s, ... up to 30s between attempts) and start the
// application late, and would tell them to drop identities they hold.
// Callers that cannot wait bound the call with a context deadline.
//
// The socket is the only access control: any process that can connect to
// it obtains the pod's private key. The Server creates it with Config.Mode
// (0660 by default; set with chmod after listening, so the process umask
// does not matter) and it should live in a directory shared only with the
// application's container (an emptyDir volume, for instance).
// Start refuses to replace a file that is not a socket, or a socket that
// another process still serves, and removes a stale socket left by a
// previous run; Close ends every stream and removes the socket it created.
//
//	srv, err := workloadapi.New(svids, workloadapi.Config{
//		Path: "/run/meshfed/workload.sock",
//	})
//	if err != nil { ... }
//	if err := srv.Start(); err != nil { ... }
//	defer srv.Close()
//
// The application then points its client at the socket, e.g. with
// SPIFFE_ENDPOINT_SOCKET=unix:///run/meshfed/workload.sock.
package workloadapi
