package cli

import (
	"context"
	"fmt"
	"net"

	"github.com/spf13/cobra"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

func (a *app) workloadsCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "workloads",
		Aliases: []string{"workload", "wl"},
		Short:   "List workloads (endpoints) and register static ones",
		Long: `A workload is one endpoint of a service. Proxies register and deregister
their own (SOURCE proxy: the control plane marks them unknown when their
heartbeats stop); "workloads register" adds a static endpoint such as a VM
(SOURCE static).`,
	})
	cmd.AddCommand(
		a.workloadsListCommand(),
		a.workloadsGetCommand(),
		a.workloadsRegisterCommand(),
		a.workloadsDeregisterCommand(),
	)
	return cmd
}

var workloadHeaders = []string{"NAMESPACE", "NAME", "SERVICE", "ADDRESS", "PORT", "HEALTH", "SOURCE", "LOCALITY", "VERSION", "SPIFFE-ID"}

func workloadRow(w *meshfedv1.Workload) []string {
	return []string{
		w.GetMeta().GetNamespace(), w.GetMeta().GetName(), w.GetService(), w.GetAddress(),
		formatUint(uint64(w.GetPort())), enumString(w.GetHealth()), workloadSource(w), formatLocality(w.GetLocality()),
		w.GetVersion(), w.GetSpiffeId(),
	}
}

// workloadSource says who registered a workload: its meshfed-proxy, which
// keeps its health current with heartbeats, or an operator (a static
// endpoint).
func workloadSource(w *meshfedv1.Workload) string {
	if w.GetProxy() {
		return "proxy"
	}
	return "static"
}

func (a *app) printWorkloads(ws []*meshfedv1.Workload) error {
	t := newTable(a.stdout, workloadHeaders...)
	for _, w := range ws {
		t.row(workloadRow(w)...)
	}
	return t.flush()
}

func (a *app) workloadsListCommand() *cobra.Command {
	var (
		ns, service string
		watchFlag   bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List workloads",
		Example: `  meshfed workloads list
  meshfed workloads list --service web -n default -o json
  meshfed workloads list --service web --watch`,
		Args: exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			if watchFlag {
				ctx, cancel := a.signalContext(ctx)
				defer cancel()
				stream, err := c.Catalog.WatchWorkloads(ctx, &meshfedv1.WatchRequest{Namespace: ns, Service: service})
				if err != nil {
					return err
				}
				return watch(ctx, a, stream.Recv, func(ev *meshfedv1.WatchWorkloadsResponse) string {
					w := ev.GetWorkload()
					if ev.GetType() == meshfedv1.WatchEventType_WATCH_EVENT_TYPE_DELETE {
						return qualifiedName(w.GetMeta())
					}
					return fmt.Sprintf("%s service=%s address=%s health=%s source=%s version=%d",
						qualifiedName(w.GetMeta()), w.GetService(), net.JoinHostPort(w.GetAddress(), formatUint(uint64(w.GetPort()))),
						enumString(w.GetHealth()), workloadSource(w), w.GetMeta().GetVersion())
				})
			}
			ws, index, err := listAll(ctx, &meshfedv1.ListRequest{Namespace: ns, Service: service},
				func(ctx context.Context, r *meshfedv1.ListRequest) ([]*meshfedv1.Workload, string, uint64, error) {
					resp, err := c.Catalog.ListWorkloads(ctx, r)
					return resp.GetWorkloads(), resp.GetNextPageToken(), resp.GetIndex(), err
				})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printListJSON(&meshfedv1.ListWorkloadsResponse{Workloads: ws, Index: index}, "workloads")
			}
			return a.printWorkloads(ws)
		}),
	}
	addNamespaceFlag(cmd, &ns, "")
	cmd.Flags().StringVar(&service, "service", "", "only workloads of this service")
	cmd.Flags().BoolVarP(&watchFlag, "watch", "w", false, "stream changes until interrupted")
	return cmd
}

func (a *app) workloadsGetCommand() *cobra.Command {
	var ns string
	cmd := &cobra.Command{
		Use:     "get NAME",
		Short:   "Show one workload",
		Example: "  meshfed workloads get vm-1 -n default",
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			w, err := c.Catalog.GetWorkload(ctx, &meshfedv1.GetRequest{Namespace: ns, Name: args[0]})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printJSON(w)
			}
			return a.printWorkloads([]*meshfedv1.Workload{w})
		}),
	}
	addNamespaceFlag(cmd, &ns, defaultNamespace)
	return cmd
}

func (a *app) workloadsRegisterCommand() *cobra.Command {
	var (
		ns, service, address, version, region, zone, spiffeID, health string
		port                                                          uint32
		labels                                                        []string
		expected                                                      uint64
	)
	cmd := &cobra.Command{
		Use:   "register NAME --service S --address IP --port P",
		Short: "Create or update a static workload endpoint",
		Long: `Register a static endpoint (for example a VM) of a service. Its SPIFFE ID
defaults to the service's identity.`,
		Example: `  meshfed workloads register vm-1 --service web --address 10.0.0.7 --port 15443
  meshfed workloads register vm-2 -n shop --service payments --address 10.0.1.9 --port 15443 \
      --version v2 --region eu-west --zone b`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if service == "" {
				return usageErrorf("--service is required")
			}
			if net.ParseIP(address) == nil {
				return usageErrorf("--address %q: must be an IP address", address)
			}
			if err := checkPort("--port", port); err != nil {
				return err
			}
			lbls, err := parseLabels("--label", labels)
			if err != nil {
				return err
			}
			w := &meshfedv1.Workload{
				Meta:     &meshfedv1.Meta{Name: args[0], Namespace: ns, Labels: lbls},
				Service:  service,
				Address:  address,
				Port:     port,
				Version:  version,
				SpiffeId: spiffeID,
			}
			if region != "" || zone != "" {
				w.Locality = &meshfedv1.Locality{Region: region, Zone: zone}
			}
			if health != "" {
				h, err := parseEnum(meshfedv1.HealthStatus(0).Descriptor(), "--health", health)
				if err != nil {
					return err
				}
				w.Health = meshfedv1.HealthStatus(h)
			}
			return a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
				out, err := c.Catalog.UpdateWorkload(ctx, &meshfedv1.UpdateWorkloadRequest{Workload: w, ExpectedVersion: expected, AllowMissing: true})
				if err != nil {
					return err
				}
				if a.isJSON() {
					return a.printJSON(out)
				}
				_, err = fmt.Fprintf(a.stdout, "Registered workload %s (version %d)\n", qualifiedName(out.GetMeta()), out.GetMeta().GetVersion())
				return err
			})(cmd, args)
		},
	}
	addNamespaceFlag(cmd, &ns, defaultNamespace)
	f := cmd.Flags()
	f.StringVar(&service, "service", "", "service the workload belongs to (same namespace)")
	f.StringVar(&address, "address", "", "IP address of the endpoint")
	f.Uint32Var(&port, "port", 0, "port of the endpoint (its proxy's inbound listener)")
	f.StringVar(&version, "version", "", "version label, used by weighted traffic splits")
	f.StringVar(&region, "region", "", "locality region")
	f.StringVar(&zone, "zone", "", "locality zone")
	f.StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID the endpoint presents (default: the service's identity)")
	f.StringVar(&health, "health", "", "initial health: healthy, unhealthy or unknown")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	f.Uint64Var(&expected, "expected-version", 0, "apply only if the stored version still equals this")
	return cmd
}

func (a *app) workloadsDeregisterCommand() *cobra.Command {
	var ns string
	var expected uint64
	cmd := &cobra.Command{
		Use:     "deregister NAME",
		Aliases: []string{"delete"},
		Short:   "Delete a workload",
		Example: "  meshfed workloads deregister vm-1 -n default",
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			resp, err := c.Catalog.DeleteWorkload(ctx, &meshfedv1.DeleteRequest{Namespace: ns, Name: args[0], ExpectedVersion: expected})
			if err != nil {
				return err
			}
			return a.deleted("workload", ns+"/"+args[0], resp)
		}),
	}
	addNamespaceFlag(cmd, &ns, defaultNamespace)
	cmd.Flags().Uint64Var(&expected, "expected-version", 0, "delete only if the stored version still equals this")
	return cmd
}
