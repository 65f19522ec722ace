package validate

import (
	"crypto/sha256"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func checkToken(c *checker, root string, t *meshfedv1.Token) {
	c.meta(root, t.GetMeta(), false, true)
	c.required(field(root, "kind"), t.GetKind() != meshfedv1.TokenKind_TOKEN_KIND_UNSPECIFIED)
	id := field(root, "spiffe_id")
	if t.GetKind() == meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN {
		// The one identity the token lets a workload attest as.
		c.spiffeID(id, t.GetSpiffeId())
	} else if c.ok() && t.GetSpiffeId() != "" {
		c.fail(id, "is allowed only on workload-join tokens")
	}
	if c.ok() && t.GetSecret() != "" {
		c.fail(field(root, "secret"), "must not be stored: store secret_hash")
	}
	if n := len(t.GetSecretHash()); c.ok() && n != 0 && n != sha256.Size {
		c.failf(field(root, "secret_hash"), "must be a SHA-256 hash (%d bytes), not %d bytes", sha256.Size, n)
	}
}
