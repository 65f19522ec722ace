package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

func (a *app) caCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:   "ca",
		Short: "Inspect and rotate the cluster's certificate authority",
		Long: `The cluster's CA issues every SVID. An authority (root + intermediate) moves
through prepared -> active -> retiring -> retired; the trust bundle is the set
of roots that are not retired.`,
	})
	cmd.AddCommand(a.caStatusCommand(), a.caRotateCommand(), a.caBundleCommand())
	return cmd
}

func (a *app) printCAStatus(s *meshfedv1.CAStatus) error {
	if err := keyValues(a.stdout,
		"Trust domain", s.GetTrustDomain(),
		"Bundle sequence", formatUint(s.GetBundleSequence()),
		"Bundle watchers", fmt.Sprintf("%d (%d on the current bundle)", s.GetWatchers(), s.GetWatchersCurrent()),
		"Rotation step", s.GetRotationStep(),
	); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	t := newTable(a.stdout, "AUTHORITY", "STATE", "ALGORITHM", "ROOT-EXPIRES", "INTERMEDIATE-EXPIRES", "EXTERNAL", "SINCE")
	for _, au := range s.GetAuthorities() {
		t.row(au.GetId(), enumString(au.GetState()), enumString(au.GetKeyAlgorithm()), formatTime(au.GetRootNotAfter()),
			formatTime(au.GetIntermediateNotAfter()), formatBool(au.GetExternal()), formatTime(au.GetStateTime()))
	}
	return t.flush()
}

func (a *app) caStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "status",
		Short:   "Show the authorities, the bundle and any rotation in progress",
		Example: "  meshfed ca status\n  meshfed ca status -o json",
		Args:    exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			s, err := c.CA.GetCAStatus(ctx, &meshfedv1.GetCAStatusRequest{})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printJSON(s)
			}
			return a.printCAStatus(s)
		}),
	}
}

func (a *app) caRotateCommand() *cobra.Command {
	var (
		step    string
		force   bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate the CA without breaking a connection",
		Long: `Rotate the cluster's CA. Without --step the whole sequence runs:

  prepare   make a new root and intermediate, add the new root to the bundle,
            cross-sign the new intermediate with the old root
  activate  once every proxy and peer has the new bundle, sign with the new
            intermediate
  retire    once no live SVID chains to the old root, drop it from the bundle

Progress is printed as it happens; with -o json it goes to standard error
and the final status is the JSON document.`,
		Example: `  meshfed ca rotate
  meshfed ca rotate --step prepare
  meshfed ca rotate --step retire --force`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &meshfedv1.RotateCARequest{Force: force}
			if step != "" {
				n, err := parseEnum(meshfedv1.RotationStep(0).Descriptor(), "--step", step)
				if err != nil {
					return err
				}
				req.Step = meshfedv1.RotationStep(n)
			}
			if timeout < 0 {
				return usageErrorf("--timeout %s: must not be negative", timeout)
			}
			if timeout > 0 {
				req.Timeout = durationpb.New(timeout)
			}
			return a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
				stream, err := c.CA.RotateCA(ctx, req)
				if err != nil {
					return err
				}
				progress := a.stdout
				if a.isJSON() {
					progress = a.stderr
				}
				var last *meshfedv1.RotateCAProgress
				for {
					p, err := stream.Recv()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						return err
					}
					last = p
					fmt.Fprintf(progress, "[%s] %s\n", enumString(p.GetStep()), p.GetMessage())
				}
				if last == nil {
					return errors.New("the server ended the rotation without reporting progress")
				}
				if a.isJSON() {
					return a.printJSON(last)
				}
				if last.GetStatus() != nil {
					fmt.Fprintln(a.stdout)
					return a.printCAStatus(last.GetStatus())
				}
				return nil
			})(cmd, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&step, "step", "", "run only this step: prepare, activate or retire")
	f.BoolVar(&force, "force", false, "activate before every watcher has the new bundle, retire while SVIDs still chain to the old root")
	f.DurationVar(&timeout, "timeout", 0, "how long to wait for propagation (0: server default, 5m)")
	return cmd
}

func (a *app) caBundleCommand() *cobra.Command {
	var federated bool
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Print the trust bundle (PEM)",
		Long: `Print the roots of this cluster's trust bundle as PEM, ready to be used as
--ca-file. --federated adds the bundle of every peer trust domain, each
preceded by a comment line naming it.`,
		Example: "  meshfed ca bundle > ca.pem\n  meshfed ca bundle --federated\n  meshfed ca bundle -o json",
		Args:    exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			resp, err := c.CA.GetTrustBundle(ctx, &meshfedv1.GetTrustBundleRequest{Federated: federated})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printListJSON(resp, "bundles")
			}
			var b strings.Builder
			for _, tb := range resp.GetBundles() {
				if federated {
					fmt.Fprintf(&b, "# trust domain %s", tb.GetTrustDomain())
					if tb.GetPeer() != "" {
						fmt.Fprintf(&b, " (peer %s)", tb.GetPeer())
					}
					fmt.Fprintf(&b, ", sequence %d\n", tb.GetSequence())
				}
				for _, r := range tb.GetRootsPem() {
					b.WriteString(strings.TrimRight(r, "\n") + "\n")
				}
			}
			_, err = io.WriteString(a.stdout, b.String())
			return err
		}),
	}
	cmd.Flags().BoolVar(&federated, "federated", false, "include every peer trust domain's bundle")
	return cmd
}
