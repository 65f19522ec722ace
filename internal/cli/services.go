package cli

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

func (a *app) servicesCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "services",
		Aliases: []string{"service", "svc"},
		Short:   "Register, list, resolve and deregister services",
		Long: `A service is a named, namespaced destination in the mesh. Its workloads
(endpoints) are registered by their proxies, or with "meshfed workloads
register" for static endpoints.`,
	})
	cmd.AddCommand(
		a.servicesRegisterCommand(),
		a.servicesListCommand(),
		a.servicesGetCommand(),
		a.servicesResolveCommand(),
		a.servicesDeregisterCommand(),
	)
	return cmd
}

var serviceHeaders = []string{"NAMESPACE", "NAME", "PORT", "PROTOCOL", "SERVICE-ACCOUNT", "LABELS", "VERSION"}

func serviceRow(s *meshfedv1.Service) []string {
	return []string{
		s.GetMeta().GetNamespace(), s.GetMeta().GetName(), formatUint(uint64(s.GetPort())),
		enumString(s.GetProtocol()), s.GetServiceAccount(), formatLabels(s.GetMeta().GetLabels()),
		formatUint(s.GetMeta().GetVersion()),
	}
}

func (a *app) printServices(services []*meshfedv1.Service) error {
	t := newTable(a.stdout, serviceHeaders...)
	for _, s := range services {
		t.row(serviceRow(s)...)
	}
	return t.flush()
}

func (a *app) printService(s *meshfedv1.Service) error {
	if a.isJSON() {
		return a.printJSON(s)
	}
	return a.printServices([]*meshfedv1.Service{s})
}

func (a *app) servicesRegisterCommand() *cobra.Command {
	var (
		ns, protocol, sa string
		port             uint32
		labels           []string
		expected         uint64
	)
	cmd := &cobra.Command{
		Use:   "register NAME --port P --protocol http|grpc|tcp",
		Short: "Create or update a service",
		Long: `Create a service, or replace the definition of an existing one.

Workloads of the service run as the service account --service-account
(default: the service's name), so their SPIFFE ID is
spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.`,
		Example: `  meshfed services register web --namespace default --port 8080 --protocol http
  meshfed services register payments -n shop --port 9000 --protocol grpc \
      --service-account payments-sa --label team=billing --label tier=backend`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("port") {
				return usageErrorf("--port is required")
			}
			if err := checkPort("--port", port); err != nil {
				return err
			}
			if protocol == "" {
				return usageErrorf("--protocol is required (http, grpc or tcp)")
			}
			proto, err := parseEnum(meshfedv1.Protocol(0).Descriptor(), "--protocol", protocol)
			if err != nil {
				return err
			}
			lbls, err := parseLabels("--label", labels)
			if err != nil {
				return err
			}
			svc := &meshfedv1.Service{
				Meta:           &meshfedv1.Meta{Name: args[0], Namespace: ns, Labels: lbls},
				Port:           port,
				Protocol:       meshfedv1.Protocol(proto),
				ServiceAccount: sa,
			}
			return a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
				out, err := c.Catalog.UpdateService(ctx, &meshfedv1.UpdateServiceRequest{
					Service: svc, ExpectedVersion: expected, AllowMissing: true,
				})
				if err != nil {
					return err
				}
				if a.isJSON() {
					return a.printJSON(out)
				}
				_, err = fmt.Fprintf(a.stdout, "Registered service %s (version %d)\n", qualifiedName(out.GetMeta()), out.GetMeta().GetVersion())
				return err
			})(cmd, args)
		},
	}
	addNamespaceFlag(cmd, &ns, defaultNamespace)
	f := cmd.Flags()
	f.Uint32Var(&port, "port", 0, "port the service's workloads listen on (1-65535)")
	f.StringVar(&protocol, "protocol", "", "application protocol: http, grpc or tcp")
	f.StringVar(&sa, "service-account", "", "service account of its workloads (default: the service name)")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	f.Uint64Var(&expected, "expected-version", 0, "apply only if the stored version still equals this")
	return cmd
}

func (a *app) servicesListCommand() *cobra.Command {
	var (
		ns          string
		allClusters bool
		watchFlag   bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List services",
		Long: `List the services of this cluster. --all-clusters adds the services that
peer clusters export to this one. --watch prints every current service, then
each change, until interrupted.`,
		Example: `  meshfed services list
  meshfed services list --namespace shop -o json
  meshfed services list --all-clusters
  meshfed services list --watch`,
		Args: exactArgs(),
		PreRunE: func(*cobra.Command, []string) error {
			if watchFlag && allClusters {
				return usageErrorf("--watch and --all-clusters cannot be combined")
			}
			return nil
		},
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			if watchFlag {
				return a.watchServices(ctx, c, ns)
			}
			services, index, err := listAll(ctx, &meshfedv1.ListRequest{Namespace: ns},
				func(ctx context.Context, r *meshfedv1.ListRequest) ([]*meshfedv1.Service, string, uint64, error) {
					resp, err := c.Catalog.ListServices(ctx, r)
					return resp.GetServices(), resp.GetNextPageToken(), resp.GetIndex(), err
				})
			if err != nil {
				return err
			}
			if allClusters {
				return a.printAllClusters(ctx, c, ns, services, index)
			}
			if a.isJSON() {
				return a.printListJSON(&meshfedv1.ListServicesResponse{Services: services, Index: index}, "services")
			}
			return a.printServices(services)
		}),
	}
	addNamespaceFlag(cmd, &ns, "")
	cmd.Flags().BoolVar(&allClusters, "all-clusters", false, "include services imported from peer clusters")
	cmd.Flags().BoolVarP(&watchFlag, "watch", "w", false, "stream changes until interrupted")
	return cmd
}

func (a *app) watchServices(ctx context.Context, c *client.Client, ns string) error {
	ctx, cancel := a.signalContext(ctx)
	defer cancel()
	stream, err := c.Catalog.WatchServices(ctx, &meshfedv1.WatchRequest{Namespace: ns})
	if err != nil {
		return err
	}
	return watch(ctx, a, stream.Recv, func(ev *meshfedv1.WatchServicesResponse) string {
		s := ev.GetService()
		if ev.GetType() == meshfedv1.WatchEventType_WATCH_EVENT_TYPE_DELETE {
			return qualifiedName(s.GetMeta())
		}
		return fmt.Sprintf("%s port=%d protocol=%s version=%d", qualifiedName(s.GetMeta()), s.GetPort(), enumString(s.GetProtocol()), s.GetMeta().GetVersion())
	})
}

// printAllClusters prints local services beside the imported ones. The JSON
// document is {"cluster": ..., "services": [...], "importedServices": [...]}.
func (a *app) printAllClusters(ctx context.Context, c *client.Client, ns string, local []*meshfedv1.Service, index uint64) error {
	imported, _, err := listAll(ctx, &meshfedv1.ListRequest{Namespace: ns},
		func(ctx context.Context, r *meshfedv1.ListRequest) ([]*meshfedv1.ImportedService, string, uint64, error) {
			resp, err := c.Peering.ListImportedServices(ctx, r)
			return resp.GetServices(), resp.GetNextPageToken(), resp.GetIndex(), err
		})
	if err != nil {
		// A server without federation still has local services to show.
		if st, ok := grpcStatus(err); ok && st.Code() == codes.Unimplemented {
			fmt.Fprintf(a.stderr, "Warning: imported services unavailable: %s\n", errorMessage(err))
		} else {
			return err
		}
	}
	cluster := "local"
	if st, err := c.Cluster.GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{}); err == nil && st.GetCluster() != "" {
		cluster = st.GetCluster()
	}
	if a.isJSON() {
		return a.printAllClustersJSON(cluster, local, imported, index)
	}
	t := newTable(a.stdout, "CLUSTER", "PEER", "NAMESPACE", "NAME", "PORT", "PROTOCOL", "ENDPOINTS", "STALE")
	for _, s := range local {
		t.row(cluster, "", s.GetMeta().GetNamespace(), s.GetMeta().GetName(), formatUint(uint64(s.GetPort())), enumString(s.GetProtocol()), "", "")
	}
	for _, s := range imported {
		svc := s.GetService()
		stale := ""
		if s.GetStale() {
			stale = "since " + formatTime(s.GetLastSync())
		}
		t.row(s.GetPeerCluster(), s.GetMeta().GetPeer(), s.GetMeta().GetNamespace(), s.GetMeta().GetName(),
			formatUint(uint64(svc.GetPort())), enumString(svc.GetProtocol()), formatUint(uint64(len(s.GetEndpoints()))), stale)
	}
	return t.flush()
}

func (a *app) printAllClustersJSON(cluster string, local []*meshfedv1.Service, imported []*meshfedv1.ImportedService, index uint64) error {
	encode := func(msgs []proto.Message) ([]json.RawMessage, error) {
		out := make([]json.RawMessage, 0, len(msgs))
		for _, m := range msgs {
			b, err := protojson.Marshal(m)
			if err != nil {
				return nil, err
			}
			out = append(out, b)
		}
		return out, nil
	}
	l := make([]proto.Message, len(local))
	for i, s := range local {
		l[i] = s
	}
	im := make([]proto.Message, len(imported))
	for i, s := range imported {
		im[i] = s
	}
	lj, err := encode(l)
	if err != nil {
		return err
	}
	ij, err := encode(im)
	if err != nil {
		return err
	}
	return a.printValueJSON(struct {
		Cluster          string            `json:"cluster"`
		Services         []json.RawMessage `json:"services"`
		ImportedServices []json.RawMessage `json:"importedServices"`
		Index            string            `json:"index"`
	}{cluster, lj, ij, formatUint(index)})
}

func (a *app) servicesGetCommand() *cobra.Command {
	var ns string
	var consistent bool
	cmd := &cobra.Command{
		Use:     "get NAME",
		Short:   "Show one service",
		Example: "  meshfed services get web -n default -o json",
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			s, err := c.Catalog.GetService(ctx, &meshfedv1.GetRequest{
				Namespace: ns, Name: args[0], Read: &meshfedv1.ReadOptions{Consistent: consistent},
			})
			if err != nil {
				return err
			}
			return a.printService(s)
		}),
	}
	addNamespaceFlag(cmd, &ns, defaultNamespace)
	cmd.Flags().BoolVar(&consistent, "consistent", false, "read through the leader (fails without a quorum)")
	return cmd
}

func (a *app) servicesResolveCommand() *cobra.Command {
	var (
		ns, region, zone string
		unhealthy        bool
	)
	cmd := &cobra.Command{
		Use:   "resolve NAME",
		Short: "Show a service's endpoints in every cluster, in failover order",
		Long: `Resolve a service the way a proxy does: local endpoints first (same
locality first), then the clusters of its traffic policy's failover list.`,
		Example: `  meshfed services resolve payments -n shop
  meshfed services resolve payments --region eu-west --zone a --include-unhealthy`,
		Args: exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			req := &meshfedv1.ResolveRequest{Namespace: ns, Name: args[0], IncludeUnhealthy: unhealthy}
			if region != "" || zone != "" {
				req.Locality = &meshfedv1.Locality{Region: region, Zone: zone}
			}
			resp, err := c.Catalog.Resolve(ctx, req)
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printListJSON(resp, "clusters")
			}
			t := newTable(a.stdout, "CLUSTER", "PEER", "ADDRESS", "PORT", "HEALTH", "LOCALITY", "VERSION", "SPIFFE-ID", "STALE")
			for _, ce := range resp.GetClusters() {
				stale := ""
				if ce.GetStale() {
					stale = "yes"
				}
				for _, e := range ce.GetEndpoints() {
					t.row(ce.GetCluster(), ce.GetPeer(), e.GetAddress(), formatUint(uint64(e.GetPort())), enumString(e.GetHealth()),
						formatLocality(e.GetLocality()), e.GetVersion(), e.GetSpiffeId(), stale)
				}
			}
			return t.flush()
		}),
	}
	addNamespaceFlag(cmd, &ns, defaultNamespace)
	f := cmd.Flags()
	f.StringVar(&region, "region", "", "caller's region, to order endpoints")
	f.StringVar(&zone, "zone", "", "caller's zone, to order endpoints")
	f.BoolVar(&unhealthy, "include-unhealthy", false, "include unhealthy endpoints")
	return cmd
}

func (a *app) servicesDeregisterCommand() *cobra.Command {
	var ns string
	var expected uint64
	cmd := &cobra.Command{
		Use:     "deregister NAME",
		Aliases: []string{"delete"},
		Short:   "Delete a service",
		Example: "  meshfed services deregister web -n default",
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			resp, err := c.Catalog.DeleteService(ctx, &meshfedv1.DeleteRequest{Namespace: ns, Name: args[0], ExpectedVersion: expected})
			if err != nil {
				return err
			}
			return a.deleted("service", ns+"/"+args[0], resp)
		}),
	}
	addNamespaceFlag(cmd, &ns, defaultNamespace)
	cmd.Flags().Uint64Var(&expected, "expected-version", 0, "delete only if the stored version still equals this")
	return cmd
}
