// Package spiffeid builds and recognises the SPIFFE IDs meshfed uses:
// spiffe://<td>/ns/<namespace>/sa/<service-account> for workloads and
// spiffe://<td>/meshfed/server/<node-id> for control plane servers.
package spiffeid

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// serverPathPrefix is the path below which every server identity lives.
const serverPathPrefix = "/meshfed/server/"

// Server returns the identity of the control plane server nodeID.
func Server(td spiffeid.TrustDomain, nodeID string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "meshfed", "server", nodeID)
}

// Workload returns the identity of workloads of a service account.
func Workload(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
}

// ServerNodeID returns the node ID of a server identity, and false if id is
// not a server identity.
func ServerNodeID(id spiffeid.ID) (string, bool) {
	p := id.Path()
	if !strings.HasPrefix(p, serverPathPrefix) {
		return "", false
	}
	node := strings.TrimPrefix(p, serverPathPrefix)
	if node == "" || strings.Contains(node, "/") {
		return "", false
	}
	return node, true
}

// MatchServer matches any server identity of any trust domain; pair it with
// a bundle source that only holds the expected trust domain's roots.
func MatchServer() spiffeid.Matcher {
	return func(id spiffeid.ID) error {
		if _, ok := ServerNodeID(id); !ok {
			return fmt.Errorf("%q is not a meshfed server identity", id)
		}
		return nil
	}
}

// MatchServerOf matches server identities of one trust domain.
func MatchServerOf(td spiffeid.TrustDomain) spiffeid.Matcher {
	return func(id spiffeid.ID) error {
		if !id.MemberOf(td) {
			return fmt.Errorf("%q is not a member of trust domain %q", id, td)
		}
		return MatchServer()(id)
	}
}
