package state

// importedServicePeerIndex finds the services imported from one peering:
// peer, NUL. Imported services are keyed by namespace and name like every
// resource, so the federation code must give services imported from
// different peers distinct names.
var importedServicePeerIndex = secondaryIndex{
	name: "peer",
	group: func(r Resource) (string, bool) {
		p := r.GetMeta().GetPeer()
		if p == "" {
			return "", false
		}
		return peerKey(p), true
	},
}

func peerKey(peer string) string {
	return peer + "\x00"
}
