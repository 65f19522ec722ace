package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

func (a *app) peeringCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "peering",
		Aliases: []string{"peerings", "peer"},
		Short:   "Federate this cluster with others",
		Long: `Clusters federate by peering: they exchange trust bundles and exported
services. The accepting cluster makes a token ("peering token"), the dialing
cluster uses it once ("peering establish"); afterwards both ends
authenticate with mutual TLS.`,
		Example: `  # On cluster east (the acceptor)
  T=$(meshfed peering token --peer west)
  # On cluster west (the dialer)
  meshfed peering establish --peer east --token "$T"
  meshfed peering list`,
	})
	cmd.AddCommand(
		a.peeringTokenCommand(),
		a.peeringEstablishCommand(),
		a.peeringListCommand(),
		a.peeringGetCommand(),
		a.peeringDeleteCommand(),
	)
	return cmd
}

func (a *app) peeringTokenCommand() *cobra.Command {
	var peer string
	cmd := &cobra.Command{
		Use:   "token --peer NAME",
		Short: "Make a peering token for another cluster to establish a peering with",
		Long: `Make a peering token and print only the token, so that T=$(meshfed peering
token ...) captures it. It holds this cluster's name, trust domain, API
addresses, CA bundle and a one-time secret. --peer is the local name of the
peering.`,
		Example: `  T=$(meshfed peering token --peer west)`,
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if peer == "" {
				return usageErrorf("--peer is required (the local name of the peering)")
			}
			return a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
				resp, err := c.Peering.GeneratePeeringToken(ctx, &meshfedv1.GeneratePeeringTokenRequest{Peer: peer})
				if err != nil {
					return err
				}
				if a.isJSON() {
					return a.printJSON(resp)
				}
				_, err = fmt.Fprintln(a.stdout, resp.GetToken())
				return err
			})(cmd, args)
		},
	}
	cmd.Flags().StringVar(&peer, "peer", "", "local name of the peering")
	return cmd
}

func (a *app) peeringEstablishCommand() *cobra.Command {
	var peer, token string
	cmd := &cobra.Command{
		Use:   "establish --peer NAME --token T",
		Short: "Establish a peering with the cluster that made a peering token",
		Long: `Establish a peering with the cluster that made the peering token --token.
--peer is the local name of the peering.

Here --token is the peering token: the API token is read from MESHFED_TOKEN.`,
		Example: `  meshfed peering establish --peer east --token "$T"`,
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if peer == "" {
				return usageErrorf("--peer is required (the local name of the peering)")
			}
			if token == "" {
				return usageErrorf(`--token is required (from "meshfed peering token" on the other cluster)`)
			}
			return a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
				p, err := c.Peering.EstablishPeering(ctx, &meshfedv1.EstablishPeeringRequest{Peer: peer, Token: strings.TrimSpace(token)})
				if err != nil {
					return err
				}
				if a.isJSON() {
					return a.printJSON(p)
				}
				_, err = fmt.Fprintf(a.stdout, "Peering %s with cluster %s (%s): %s\n", p.GetMeta().GetName(), p.GetPeerCluster(), p.GetPeerTrustDomain(), enumString(p.GetState()))
				return err
			})(cmd, args)
		},
	}
	cmd.Flags().StringVar(&peer, "peer", "", "local name of the peering")
	// This --token shadows the global one: the API token comes from MESHFED_TOKEN.
	cmd.Flags().StringVar(&token, "token", "", "the peering token")
	return cmd
}

var peeringHeaders = []string{"NAME", "STATE", "PEER-CLUSTER", "TRUST-DOMAIN", "DIALER", "IMPORTED", "EXPORTED", "LAST-SYNC", "LAST-ERROR"}

func peeringRow(p *meshfedv1.Peering) []string {
	return []string{p.GetMeta().GetName(), enumString(p.GetState()), p.GetPeerCluster(), p.GetPeerTrustDomain(), formatBool(p.GetDialer()),
		formatUint(uint64(p.GetImportedServices())), formatUint(uint64(p.GetExportedServices())), formatTime(p.GetLastSync()), p.GetLastError()}
}

func (a *app) printPeerings(ps []*meshfedv1.Peering) error {
	t := newTable(a.stdout, peeringHeaders...)
	for _, p := range ps {
		t.row(peeringRow(p)...)
	}
	return t.flush()
}

func (a *app) peeringListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List peerings",
		Example: "  meshfed peering list\n  meshfed peering list -o json",
		Args:    exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			resp, err := c.Peering.ListPeerings(ctx, &meshfedv1.ListRequest{})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printListJSON(resp, "peerings")
			}
			return a.printPeerings(resp.GetPeerings())
		}),
	}
}

func (a *app) peeringGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show one peering",
		Example: "  meshfed peering get west -o json",
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			p, err := c.Peering.GetPeering(ctx, &meshfedv1.GetRequest{Name: args[0]})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printJSON(p)
			}
			return a.printPeerings([]*meshfedv1.Peering{p})
		}),
	}
}

func (a *app) peeringDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete a peering, its imports and its bundle, on both sides",
		Example: "  meshfed peering delete west",
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			resp, err := c.Peering.DeletePeering(ctx, &meshfedv1.DeleteRequest{Name: args[0]})
			if err != nil {
				return err
			}
			return a.deleted("peering", args[0], resp)
		}),
	}
}

func (a *app) exportsCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "exports",
		Aliases: []string{"export"},
		Short:   "Export local services to peer clusters",
		Long: `An export makes a local service, with its healthy endpoints, visible to the
listed peers.`,
	})
	cmd.AddCommand(a.exportsSetCommand(), a.exportsListCommand(), a.exportsDeleteCommand())
	return cmd
}

func (a *app) exportsSetCommand() *cobra.Command {
	var (
		ns       string
		to       []string
		expected uint64
	)
	cmd := &cobra.Command{
		Use:     "set SERVICE --to PEER[,PEER]",
		Short:   "Export a service to peers (replacing its list of peers)",
		Example: `  meshfed exports set payments -n shop --to west,north`,
		Args:    exactArgs("SERVICE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var peers []string
			for _, p := range to {
				if p = strings.TrimSpace(p); p != "" {
					peers = append(peers, p)
				}
			}
			if len(peers) == 0 {
				return usageErrorf("--to is required (peering names, comma separated or repeated)")
			}
			return a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
				e, err := c.Peering.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{
					Export:          &meshfedv1.ServiceExport{Meta: &meshfedv1.Meta{Name: args[0], Namespace: ns}, Peers: peers},
					ExpectedVersion: expected,
				})
				if err != nil {
					return err
				}
				if a.isJSON() {
					return a.printJSON(e)
				}
				_, err = fmt.Fprintf(a.stdout, "Exported service %s to %s\n", qualifiedName(e.GetMeta()), strings.Join(e.GetPeers(), ", "))
				return err
			})(cmd, args)
		},
	}
	addNamespaceFlag(cmd, &ns, defaultNamespace)
	cmd.Flags().StringSliceVar(&to, "to", nil, "peering names to export to (comma separated or repeated)")
	cmd.Flags().Uint64Var(&expected, "expected-version", 0, "apply only if the stored version still equals this")
	return cmd
}

func (a *app) exportsListCommand() *cobra.Command {
	var ns string
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List exported services",
		Example: "  meshfed exports list\n  meshfed exports list -o json",
		Args:    exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			es, index, err := listAll(ctx, &meshfedv1.ListRequest{Namespace: ns},
				func(ctx context.Context, r *meshfedv1.ListRequest) ([]*meshfedv1.ServiceExport, string, uint64, error) {
					resp, err := c.Peering.ListServiceExports(ctx, r)
					return resp.GetExports(), resp.GetNextPageToken(), resp.GetIndex(), err
				})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printListJSON(&meshfedv1.ListServiceExportsResponse{Exports: es, Index: index}, "exports")
			}
			t := newTable(a.stdout, "NAMESPACE", "SERVICE", "PEERS", "VERSION")
			for _, e := range es {
				t.row(e.GetMeta().GetNamespace(), e.GetMeta().GetName(), strings.Join(e.GetPeers(), ","), formatUint(e.GetMeta().GetVersion()))
			}
			return t.flush()
		}),
	}
	addNamespaceFlag(cmd, &ns, "")
	return cmd
}

func (a *app) exportsDeleteCommand() *cobra.Command {
	var ns string
	cmd := &cobra.Command{
		Use:     "delete SERVICE",
		Short:   "Stop exporting a service",
		Example: "  meshfed exports delete payments -n shop",
		Args:    exactArgs("SERVICE"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			resp, err := c.Peering.DeleteServiceExport(ctx, &meshfedv1.DeleteRequest{Namespace: ns, Name: args[0]})
			if err != nil {
				return err
			}
			return a.deleted("export of", ns+"/"+args[0], resp)
		}),
	}
	addNamespaceFlag(cmd, &ns, defaultNamespace)
	return cmd
}
