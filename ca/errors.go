package ca

import "errors"

var (
	// ErrNoActiveAuthority is returned by Sign before SetAuthorities has
	// installed an authority, and by SetAuthorities when no authority of the
	// set is ACTIVE.
	ErrNoActiveAuthority = errors.New("no active certificate authority")

	// ErrMultipleActiveAuthorities is returned by SetAuthorities when more
	// than one authority is ACTIVE: which one signs would be ambiguous.
	ErrMultipleActiveAuthorities = errors.New("more than one active certificate authority")

	// ErrInvalidAuthority is returned when a stored authority cannot be used:
	// a certificate or key does not parse, a key does not match its
	// certificate, or the intermediate was not issued by the root.
	ErrInvalidAuthority = errors.New("invalid certificate authority")

	// ErrAuthorityExpired is returned by Sign when the active intermediate
	// has expired. Nothing can be signed until another authority is active.
	ErrAuthorityExpired = errors.New("active intermediate certificate has expired")

	// ErrInvalidCSR is returned by Sign when the certificate request does not
	// parse, its signature does not verify, or its key is of an unsupported
	// type or too weak.
	ErrInvalidCSR = errors.New("invalid certificate request")

	// ErrInvalidID is returned when a requested SPIFFE ID is empty or not a
	// member of the CA's trust domain.
	ErrInvalidID = errors.New("invalid SPIFFE ID")

	// ErrInvalidParams is returned when a field of GenerateParams or
	// SignParams is out of range; the message names the field.
	ErrInvalidParams = errors.New("invalid parameters")

	// ErrRotationState is returned when a rotation step does not fit where
	// the authorities are: activating with nothing prepared, preparing
	// while an old authority still waits to retire.
	ErrRotationState = errors.New("rotation step does not apply")

	// ErrInvalidKey is returned when a private key does not parse as PKCS#8.
	ErrInvalidKey = errors.New("invalid private key")
)
