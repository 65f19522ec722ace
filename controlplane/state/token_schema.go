package state

import meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"

// tokenSecretHashIndex finds a token by the hash of its secret, which is how
// a bearer token is authenticated. Tokens without a hash are not indexed.
var tokenSecretHashIndex = secondaryIndex{
	name:   "secret_hash",
	unique: true,
	group: func(r Resource) (string, bool) {
		t, ok := r.(*meshfedv1.Token)
		if !ok || len(t.GetSecretHash()) == 0 {
			return "", false
		}
		return string(t.GetSecretHash()), true
	},
}
