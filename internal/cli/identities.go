package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

func (a *app) identitiesCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "identities",
		Aliases: []string{"identity"},
		Short:   "Register workload identities",
		Long: `An identity registration says which SPIFFE ID the workloads of a service
account hold and how their SVIDs are issued: their lifetime (overriding the
CA's SVID lifetime) and the DNS names they may carry besides the SPIFFE ID.

A workload obtains an SVID with a workload-join token bound to the SPIFFE ID
("meshfed tokens create --kind workload-join --spiffe-id ID"), whether or
not the identity is registered; an unregistered identity gets the CA's
defaults and no DNS names.`,
	})
	cmd.AddCommand(
		a.identitiesCreateCommand(),
		a.identitiesListCommand(),
		a.identitiesGetCommand(),
		a.identitiesDeleteCommand(),
	)
	return cmd
}

var identityHeaders = []string{"NAMESPACE", "NAME", "SPIFFE-ID", "SERVICE-ACCOUNT", "SVID-TTL", "DNS-NAMES", "VERSION"}

func identityRow(i *meshfedv1.Identity) []string {
	return []string{
		i.GetMeta().GetNamespace(), i.GetMeta().GetName(), i.GetSpiffeId(), i.GetServiceAccount(),
		formatTTL(i.GetSvidTtl()), strings.Join(i.GetDnsNames(), ","), formatUint(i.GetMeta().GetVersion()),
	}
}

func (a *app) printIdentities(ids []*meshfedv1.Identity) error {
	t := newTable(a.stdout, identityHeaders...)
	for _, i := range ids {
		t.row(identityRow(i)...)
	}
	return t.flush()
}

// identityFieldFlags maps the API fields of Identity to the flags of
// "identities create".
var identityFieldFlags = map[string]string{
	"identity.meta.name":       "NAME",
	"identity.meta.namespace":  "--namespace",
	"identity.meta.labels":     "--label",
	"identity.spiffe_id":       "--spiffe-id",
	"identity.service_account": "--service-account",
	"identity.svid_ttl":        "--svid-ttl",
	"identity.dns_names":       "--dns-name",
}

func (a *app) identitiesCreateCommand() *cobra.Command {
	var (
		ns, sa, id string
		svidTTL    time.Duration
		dnsNames   []string
		labels     []string
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Register a workload identity",
		Long: `Register the identity NAME in a namespace. Its service account is NAME
unless --service-account is given, and its SPIFFE ID is
spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> unless
--spiffe-id is given.

--svid-ttl overrides the CA's SVID lifetime ("meshfed ca settings") for
this identity; --dns-name (repeatable) lists the DNS names its SVIDs may
carry. Registering a NAME that exists fails with ALREADY_EXISTS: delete it
first to change it.`,
		Example: `  meshfed identities create web --namespace default
  meshfed identities create payments -n shop --service-account payments-sa --svid-ttl 15m \
      --dns-name payments.shop.svc --dns-name payments.example.com
  meshfed identities create web -o json`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ttl, err := ttlFlag("svid-ttl", svidTTL)
			if err != nil {
				return err
			}
			if id != "" {
				if _, err := spiffeid.FromString(id); err != nil {
					return usageErrorf("--spiffe-id %q: %v", id, err)
				}
			}
			for _, n := range dnsNames {
				if strings.TrimSpace(n) == "" {
					return usageErrorf("--dns-name %q: must not be empty", n)
				}
			}
			lbls, err := parseLabels("--label", labels)
			if err != nil {
				return err
			}
			ident := &meshfedv1.Identity{
				Meta:           &meshfedv1.Meta{Name: args[0], Namespace: ns, Labels: lbls},
				SpiffeId:       id,
				ServiceAccount: sa,
				SvidTtl:        ttl,
				DnsNames:       dnsNames,
			}
			return a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
				out, err := c.Identity.CreateIdentity(ctx, &meshfedv1.CreateIdentityRequest{Identity: ident})
				if err != nil {
					return withFieldFlag(err, identityFieldFlags)
				}
				if a.isJSON() {
					return a.printJSON(out)
				}
				_, err = fmt.Fprintf(a.stdout, "Created identity %s: %s (version %d)\n", qualifiedName(out.GetMeta()), out.GetSpiffeId(), out.GetMeta().GetVersion())
				return err
			})(cmd, args)
		},
	}
	addNamespaceFlag(cmd, &ns, defaultNamespace)
	f := cmd.Flags()
	f.StringVar(&sa, "service-account", "", "service account of the workloads (default: NAME)")
	f.StringVar(&id, "spiffe-id", "", "SPIFFE ID (default: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)")
	f.DurationVar(&svidTTL, "svid-ttl", 0, "lifetime of its SVIDs, e.g. 15m (0: the CA's SVID lifetime)")
	f.StringArrayVar(&dnsNames, "dns-name", nil, "DNS name its SVIDs may carry (repeatable)")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	return cmd
}

func (a *app) identitiesListCommand() *cobra.Command {
	var ns string
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List workload identities",
		Example: "  meshfed identities list\n  meshfed identities list --namespace shop -o json",
		Args:    exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			ids, index, err := listAll(ctx, &meshfedv1.ListRequest{Namespace: ns},
				func(ctx context.Context, r *meshfedv1.ListRequest) ([]*meshfedv1.Identity, string, uint64, error) {
					resp, err := c.Identity.ListIdentities(ctx, r)
					return resp.GetIdentities(), resp.GetNextPageToken(), resp.GetIndex(), err
				})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printListJSON(&meshfedv1.ListIdentitiesResponse{Identities: ids, Index: index}, "identities")
			}
			return a.printIdentities(ids)
		}),
	}
	addNamespaceFlag(cmd, &ns, "")
	return cmd
}

func (a *app) identitiesGetCommand() *cobra.Command {
	var ns string
	cmd := &cobra.Command{
		Use:     "get NAME",
		Short:   "Show one workload identity",
		Example: "  meshfed identities get web -n default -o json",
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			i, err := c.Identity.GetIdentity(ctx, &meshfedv1.GetRequest{Namespace: ns, Name: args[0]})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printJSON(i)
			}
			return a.printIdentities([]*meshfedv1.Identity{i})
		}),
	}
	addNamespaceFlag(cmd, &ns, defaultNamespace)
	return cmd
}

func (a *app) identitiesDeleteCommand() *cobra.Command {
	var (
		ns       string
		expected uint64
	)
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a workload identity registration",
		Long: `Delete the registration NAME. SVIDs already issued stay valid until they
expire; new ones for its SPIFFE ID get the CA's defaults and no DNS names.`,
		Example: "  meshfed identities delete web -n default",
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			resp, err := c.Identity.DeleteIdentity(ctx, &meshfedv1.DeleteRequest{Namespace: ns, Name: args[0], ExpectedVersion: expected})
			if err != nil {
				return err
			}
			return a.deleted("identity", ns+"/"+args[0], resp)
		}),
	}
	addNamespaceFlag(cmd, &ns, defaultNamespace)
	cmd.Flags().Uint64Var(&expected, "expected-version", 0, "delete only if the stored version still equals this")
	return cmd
}
