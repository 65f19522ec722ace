package svidclient

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	// ErrRefused is returned when a server refused a request in a way that
	// retrying cannot fix: the token is invalid, expired, used up or of the
	// wrong kind, the identity is not allowed, or the request is malformed.
	// The gRPC status of the refusal is in the same error chain.
	ErrRefused = errors.New("refused by the server")

	// ErrNoSVID is returned by GetX509SVID (and what needs an SVID) before
	// the first attestation succeeded.
	ErrNoSVID = errors.New("no SVID yet")

	// ErrClosed is returned by Start after Close.
	ErrClosed = errors.New("client closed")

	// ErrInvalidResponse is returned when a server's answer does not hold
	// together: the certificate is not for the local key, does not verify
	// against the bundle, or names another identity than expected.
	ErrInvalidResponse = errors.New("invalid response")
)

// refusedError is a permanent failure of op at addr. It unwraps to
// ErrRefused and to the server's status, so callers can test either.
type refusedError struct {
	op, addr string
	err      error
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("%s refused by %s: %v", e.op, e.addr, e.err)
}

func (e *refusedError) Unwrap() []error { return []error{ErrRefused, e.err} }

// invalidResponseError is a response from addr that failed validation.
type invalidResponseError struct {
	addr string
	err  error
}

func (e *invalidResponseError) Error() string {
	return fmt.Sprintf("%v from %s: %v", ErrInvalidResponse, e.addr, e.err)
}

func (e *invalidResponseError) Unwrap() []error { return []error{ErrInvalidResponse, e.err} }

// retryable reports whether a failed call may succeed on another server or
// later: the server is unreachable, overloaded, electing a leader, or did not
// answer in time. Everything else (a refused token, a bad CSR, an RPC the
// server does not know) fails the same way everywhere.
func retryable(err error) bool {
	var ir *invalidResponseError
	if errors.As(err, &ir) {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted,
		codes.Aborted, codes.Internal, codes.Unknown, codes.Canceled:
		return true
	}
	return false
}
