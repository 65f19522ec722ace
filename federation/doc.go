// Package federation links clusters: it encodes and checks peering tokens,
// and runs the peer stream that both ends of a peering speak, replicating
// trust bundles and exported services each way. It talks to the server it
// runs in through the narrow Local interface, so the protocol does not know
// about Raft or the state store.
package federation
