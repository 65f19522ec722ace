package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	rpccode "google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes of the meshfed binary.
const (
	ExitOK    = 0
	ExitError = 1 // the operation failed
	ExitUsage = 2 // the command line is wrong
)

// usageError is a mistake on the command line: a bad flag, a missing
// argument, an unknown command. It exits with ExitUsage.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// Execute runs the command tree built by NewRootCommand with os.Args and
// returns the process exit code. Errors are printed to the command's stderr:
// a gRPC status as "Error: CODE: message", a usage error followed by a hint
// to the command's --help.
func Execute(root *cobra.Command) int {
	return ExecuteContext(context.Background(), root)
}

// ExecuteContext is Execute with a parent context.
func ExecuteContext(ctx context.Context, root *cobra.Command) int {
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	if cmd == nil {
		cmd = root
	}
	stderr := root.ErrOrStderr()
	fmt.Fprintln(stderr, "Error: "+errorMessage(err))
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return ExitUsage
	}
	if st, ok := grpcStatus(err); ok && st.Code() == codes.Unimplemented {
		fmt.Fprintln(stderr, "The server does not implement this operation (yet).")
	}
	return ExitError
}

// errorMessage renders err for humans and scripts. When err carries a gRPC
// status, the code comes first in the canonical upper-case form
// ("PERMISSION_DENIED"), then any context the CLI added, then the server's
// message.
func errorMessage(err error) string {
	st, ok := grpcStatus(err)
	if !ok {
		return err.Error()
	}
	msg := st.Message()
	// Keep the context wrapped around the status ("document 2: ...") without
	// grpc's own "rpc error: code = ... desc = ..." rendering.
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		if inner, ok := se.(error); ok {
			prefix := strings.TrimSuffix(strings.TrimSuffix(err.Error(), inner.Error()), ": ")
			if prefix != "" && prefix != err.Error() {
				msg = prefix + ": " + msg
			}
		}
	}
	return codeName(st.Code()) + ": " + msg
}

// grpcStatus finds a gRPC status in err's chain. Context errors count, so a
// call cut short by Ctrl-C or a deadline reads as CANCELED or
// DEADLINE_EXCEEDED.
func grpcStatus(err error) (*status.Status, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus(), true
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err), true
	}
	return nil, false
}

// codeName returns the canonical name of a code, e.g. "PERMISSION_DENIED".
func codeName(c codes.Code) string {
	if n, ok := rpccode.Code_name[int32(c)]; ok {
		return n
	}
	return c.String()
}

// isCanceled reports whether err only says that ctx ended, which is how
// --watch and the server stop on Ctrl-C.
func isCanceled(ctx context.Context, err error) bool {
	if ctx.Err() == nil {
		return false
	}
	if errors.Is(err, context.Canceled) {
		return true
	}
	st, ok := grpcStatus(err)
	return ok && st.Code() == codes.Canceled
}
