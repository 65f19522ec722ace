package controlplane

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestAuthFailure: only an unknown token on a server still catching up
// after a restart turns into UNAVAILABLE (retry); every other failure is
// returned as it is.
func TestAuthFailure(t *testing.T) {
	unknown := status.Error(codes.Unauthenticated, "invalid token")
	denied := status.Error(codes.PermissionDenied, "a read token cannot call X")
	for _, tt := range []struct {
		name                 string
		err                  error
		hasToken, catchingUp bool
		want                 codes.Code
	}{
		{"unknown token, catching up", unknown, true, true, codes.Unavailable},
		{"unknown token, caught up", unknown, true, false, codes.Unauthenticated},
		{"no token, catching up", status.Error(codes.Unauthenticated, "missing bearer token"), false, true, codes.Unauthenticated},
		{"denied, catching up", denied, true, true, codes.PermissionDenied},
	} {
		if got := status.Code(authFailure(tt.err, tt.hasToken, tt.catchingUp)); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
