// Package cli is the meshfed command tree: the server command and the
// operator commands that talk to the management API. cmd/meshfed only builds
// the tree with NewRootCommand and runs it with Execute, so every command can
// be driven from tests with its own stdout, stderr and environment.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/meshfed/meshfed/controlplane"
)

// Output formats accepted by -o/--output.
const (
	outputTable = "table"
	outputJSON  = "json"
)

// deps are what the command tree needs from its surroundings. Tests replace
// them; NewRootCommand uses the real ones.
type deps struct {
	// runServer runs a control plane server until ctx is cancelled.
	runServer func(ctx context.Context, cfg controlplane.Config) error
	// getenv reads MESHFED_* defaults.
	getenv func(string) string
	// stdin is read by "-f -".
	stdin io.Reader
	// dialOptions are appended to every API connection.
	dialOptions []grpc.DialOption
	// notifySignals wires SIGINT/SIGTERM into long-running commands.
	notifySignals bool
}

// app holds the global flags and the streams shared by every command.
type app struct {
	deps
	stdout, stderr io.Writer

	addr   string
	token  string
	caFile string
	output string
}

// NewRootCommand returns the meshfed command tree writing to stdout and
// stderr. Run it with Execute.
func NewRootCommand(stdout, stderr io.Writer) *cobra.Command {
	return newRootCommand(stdout, stderr, deps{
		runServer:     runControlPlane,
		getenv:        os.Getenv,
		stdin:         os.Stdin,
		notifySignals: true,
	})
}

// runControlPlane is the real server: build it, run it until ctx ends.
func runControlPlane(ctx context.Context, cfg controlplane.Config) error {
	srv, err := controlplane.New(cfg)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

func newRootCommand(stdout, stderr io.Writer, d deps) *cobra.Command {
	a := &app{deps: d, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "meshfed",
		Short: "meshfed runs and operates a multi-cluster service mesh control plane",
		Long: `meshfed runs and operates a multi-cluster service mesh control plane.

"meshfed server" runs a control plane server. Every other command is a client
of the management API: it connects to --addr (or MESHFED_ADDR) over TLS,
verifies the server against the cluster's CA bundle --ca-file (or
MESHFED_CA_FILE) and authenticates with the bearer token --token (or
MESHFED_TOKEN). A bootstrapped server writes these three values to
<data-dir>/env, ready to be sourced.

Output is a human-readable table by default; -o json prints exactly one JSON
document (lists are an object holding an array, for example
{"services": [...]}). Commands that create a secret print only the secret, so
that T=$(meshfed ...) captures it.

Exit status: 0 on success, 1 when the operation failed (the server's error is
printed as "Error: CODE: message"), 2 when the command line is wrong.`,
		Example: `  # Start a development server and point the CLI at it
  meshfed server --dev --data-dir /tmp/meshfed-dev &
  source /tmp/meshfed-dev/env

  # Register a service and list services as JSON
  meshfed services register web --namespace default --port 8080 --protocol http
  meshfed services list -o json`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch a.output {
			case outputTable, outputJSON:
				return nil
			default:
				return usageErrorf("-o/--output %q: must be %q or %q", a.output, outputTable, outputJSON)
			}
		},
	}
	asGroup(root)
	// Groups are runnable only to reject unknown subcommands: their usage
	// shows the subcommands, not "meshfed services [flags]".
	root.SetUsageTemplate(strings.Replace(root.UsageTemplate(), "{{if .Runnable}}",
		`{{if and .Runnable (ne (index .Annotations "`+groupAnnotation+`") "true")}}`, 1))
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	pf := root.PersistentFlags()
	pf.StringVar(&a.addr, "addr", "", "API address host:port of any server (env "+envAddr+")")
	pf.StringVar(&a.token, "token", "", "API bearer token (env "+envToken+")")
	pf.StringVar(&a.caFile, "ca-file", "", "PEM file of the cluster's CA bundle (env "+envCAFile+")")
	pf.StringVarP(&a.output, "output", "o", outputTable, "output format: table or json")

	root.AddCommand(
		a.serverCommand(),
		a.membersCommand(),
		a.statusCommand(),
		a.servicesCommand(),
		a.workloadsCommand(),
		a.policyCommand(),
		a.meshCommand(),
		a.tokensCommand(),
		a.svidCommand(),
		a.caCommand(),
		a.identitiesCommand(),
		a.peeringCommand(),
		a.exportsCommand(),
		a.snapshotCommand(),
		a.topologyCommand(),
	)
	return root
}

// groupAnnotation marks commands that only hold subcommands.
const groupAnnotation = "meshfed/group"

// asGroup makes cmd a command that only holds subcommands: without arguments
// it prints its help, with an unknown one it fails as a usage error (cobra
// would otherwise print the help and succeed).
func asGroup(cmd *cobra.Command) *cobra.Command {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[groupAnnotation] = "true"
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return c.Help()
		}
		return unknownCommand(c, args[0])
	}
	return cmd
}

func unknownCommand(c *cobra.Command, arg string) error {
	msg := fmt.Sprintf("unknown command %q for %q", arg, c.CommandPath())
	if c.SuggestionsMinimumDistance <= 0 {
		c.SuggestionsMinimumDistance = 2
	}
	if s := c.SuggestionsFor(arg); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, " or "))
	}
	return usageError{fmt.Errorf("%s", msg)}
}

// isJSON reports whether -o json was asked for.
func (a *app) isJSON() bool { return a.output == outputJSON }
