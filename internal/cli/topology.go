package cli

import (
	"context"

	"github.com/spf13/cobra"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

func (a *app) topologyCommand() *cobra.Command {
	var ns string
	cmd := &cobra.Command{
		Use:   "topology",
		Short: "Show which services call which",
		Long: `Show the service graph: for each caller service and destination service
(and the cluster that served the calls, when a peer did), the requests and
TCP connections the callers' proxies made and how many failed (5xx or no
answer). Proxies send their counts with each heartbeat; the leader keeps
totals in memory from when it took over ("since" in -o json) and drops an
edge no proxy has reported for 15 minutes.`,
		Example: "  meshfed topology\n  meshfed topology -n shop\n  meshfed topology -o json",
		Args:    exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			topo, err := c.Catalog.GetTopology(ctx, &meshfedv1.GetTopologyRequest{Namespace: ns})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printJSON(topo)
			}
			t := newTable(a.stdout, "SOURCE", "DESTINATION", "CLUSTER", "REQUESTS", "ERRORS", "LAST-SEEN")
			for _, e := range topo.GetEdges() {
				cluster := e.GetDestinationCluster()
				if cluster == "" {
					cluster = "(local)"
				}
				t.row(e.GetSourceNamespace()+"/"+e.GetSourceService(), e.GetDestinationNamespace()+"/"+e.GetDestinationService(),
					cluster, formatUint(e.GetRequests()), formatUint(e.GetErrors()), formatTime(e.GetLastSeen()))
			}
			return t.flush()
		}),
	}
	cmd.Flags().StringVarP(&ns, "namespace", "n", "", "only edges from or to this namespace (default: all)")
	return cmd
}
