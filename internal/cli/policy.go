package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

func (a *app) policyCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "policy",
		Aliases: []string{"policies"},
		Short:   "Manage authorization and traffic policies",
		Long: `Authorization policies allow or deny callers (by SPIFFE ID, and for HTTP and
gRPC by method and path) of a destination service. Traffic policies tune how
callers reach it: timeouts, retries, circuit breaking, rate limits, load
balancing, weighted splits, failover and fault injection.

Policies are written as YAML or JSON files in the JSON shape of the API's
AuthorizationPolicy and TrafficPolicy messages and applied with
"policy authz|traffic apply -f FILE".`,
	})
	cmd.AddCommand(
		policyCommands(a, authzPolicies),
		policyCommands(a, trafficPolicies),
	)
	return cmd
}

// policyType describes one kind of policy to the generic commands.
type policyType[T proto.Message, E watchEvent] struct {
	use, aliases, short, kind string
	plural                    string
	example                   string
	newMsg                    func() T
	meta                      func(T) *meshfedv1.Meta
	apply                     func(context.Context, *client.Client, T, uint64) (T, error)
	get                       func(context.Context, *client.Client, *meshfedv1.GetRequest) (T, error)
	list                      func(context.Context, *client.Client, *meshfedv1.ListRequest) ([]T, string, uint64, error)
	listResponse              func([]T, uint64) proto.Message
	del                       func(context.Context, *client.Client, *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error)
	watch                     func(context.Context, *client.Client, *meshfedv1.WatchRequest) (func() (E, error), error)
	resource                  func(E) T
	headers                   []string
	row                       func(T) []string
}

var authzPolicies = policyType[*meshfedv1.AuthorizationPolicy, *meshfedv1.WatchAuthorizationPoliciesResponse]{
	use: "authz", aliases: "authorization", short: "Manage authorization policies", kind: "authorization policy", plural: "authorization policies",
	example: `  cat > allow-web.yaml <<EOF
  meta:
    name: allow-frontend
    namespace: default
  destination: web
  action: ALLOW            # or AUTHORIZATION_ACTION_ALLOW
  rules:
  - principals: ["spiffe://east.mesh/ns/default/sa/frontend"]
    methods: [GET]
    paths: ["/api/*"]
  EOF
  meshfed policy authz apply -f allow-web.yaml
  meshfed policy authz list -n default
  meshfed policy authz get allow-frontend -o json
  meshfed policy authz delete allow-frontend`,
	newMsg: func() *meshfedv1.AuthorizationPolicy { return &meshfedv1.AuthorizationPolicy{} },
	meta:   (*meshfedv1.AuthorizationPolicy).GetMeta,
	apply: func(ctx context.Context, c *client.Client, p *meshfedv1.AuthorizationPolicy, expected uint64) (*meshfedv1.AuthorizationPolicy, error) {
		return c.Policy.UpdateAuthorizationPolicy(ctx, &meshfedv1.UpdateAuthorizationPolicyRequest{Policy: p, ExpectedVersion: expected, AllowMissing: true})
	},
	get: func(ctx context.Context, c *client.Client, r *meshfedv1.GetRequest) (*meshfedv1.AuthorizationPolicy, error) {
		return c.Policy.GetAuthorizationPolicy(ctx, r)
	},
	list: func(ctx context.Context, c *client.Client, r *meshfedv1.ListRequest) ([]*meshfedv1.AuthorizationPolicy, string, uint64, error) {
		resp, err := c.Policy.ListAuthorizationPolicies(ctx, r)
		return resp.GetPolicies(), resp.GetNextPageToken(), resp.GetIndex(), err
	},
	listResponse: func(ps []*meshfedv1.AuthorizationPolicy, index uint64) proto.Message {
		return &meshfedv1.ListAuthorizationPoliciesResponse{Policies: ps, Index: index}
	},
	del: func(ctx context.Context, c *client.Client, r *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error) {
		return c.Policy.DeleteAuthorizationPolicy(ctx, r)
	},
	watch: func(ctx context.Context, c *client.Client, r *meshfedv1.WatchRequest) (func() (*meshfedv1.WatchAuthorizationPoliciesResponse, error), error) {
		s, err := c.Policy.WatchAuthorizationPolicies(ctx, r)
		if err != nil {
			return nil, err
		}
		return s.Recv, nil
	},
	resource: (*meshfedv1.WatchAuthorizationPoliciesResponse).GetPolicy,
	headers:  []string{"NAMESPACE", "NAME", "DESTINATION", "ACTION", "RULES", "VERSION"},
	row: func(p *meshfedv1.AuthorizationPolicy) []string {
		return []string{p.GetMeta().GetNamespace(), p.GetMeta().GetName(), p.GetDestination(), enumString(p.GetAction()),
			formatUint(uint64(len(p.GetRules()))), formatUint(p.GetMeta().GetVersion())}
	},
}

var trafficPolicies = policyType[*meshfedv1.TrafficPolicy, *meshfedv1.WatchTrafficPoliciesResponse]{
	use: "traffic", short: "Manage traffic policies", kind: "traffic policy", plural: "traffic policies",
	example: `  cat > web-traffic.yaml <<EOF
  meta:
    name: web
    namespace: default
  destination: web
  timeouts: {connect: 1s, request: 5s}
  retries: {attempts: 3, perTryTimeout: 2s, retryOn: [connect-failure, 5xx]}
  loadBalancer: LEAST_REQUEST   # or LOAD_BALANCER_LEAST_REQUEST
  splits:
  - {version: v1, weight: 90}
  - {version: v2, weight: 10}
  failover: [west]
  EOF
  meshfed policy traffic apply -f web-traffic.yaml
  meshfed policy traffic list -o json
  meshfed policy traffic delete web -n default`,
	newMsg: func() *meshfedv1.TrafficPolicy { return &meshfedv1.TrafficPolicy{} },
	meta:   (*meshfedv1.TrafficPolicy).GetMeta,
	apply: func(ctx context.Context, c *client.Client, p *meshfedv1.TrafficPolicy, expected uint64) (*meshfedv1.TrafficPolicy, error) {
		return c.Policy.UpdateTrafficPolicy(ctx, &meshfedv1.UpdateTrafficPolicyRequest{Policy: p, ExpectedVersion: expected, AllowMissing: true})
	},
	get: func(ctx context.Context, c *client.Client, r *meshfedv1.GetRequest) (*meshfedv1.TrafficPolicy, error) {
		return c.Policy.GetTrafficPolicy(ctx, r)
	},
	list: func(ctx context.Context, c *client.Client, r *meshfedv1.ListRequest) ([]*meshfedv1.TrafficPolicy, string, uint64, error) {
		resp, err := c.Policy.ListTrafficPolicies(ctx, r)
		return resp.GetPolicies(), resp.GetNextPageToken(), resp.GetIndex(), err
	},
	listResponse: func(ps []*meshfedv1.TrafficPolicy, index uint64) proto.Message {
		return &meshfedv1.ListTrafficPoliciesResponse{Policies: ps, Index: index}
	},
	del: func(ctx context.Context, c *client.Client, r *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error) {
		return c.Policy.DeleteTrafficPolicy(ctx, r)
	},
	watch: func(ctx context.Context, c *client.Client, r *meshfedv1.WatchRequest) (func() (*meshfedv1.WatchTrafficPoliciesResponse, error), error) {
		s, err := c.Policy.WatchTrafficPolicies(ctx, r)
		if err != nil {
			return nil, err
		}
		return s.Recv, nil
	},
	resource: (*meshfedv1.WatchTrafficPoliciesResponse).GetPolicy,
	headers:  []string{"NAMESPACE", "NAME", "DESTINATION", "LOAD-BALANCER", "TIMEOUT", "RETRIES", "SPLITS", "FAILOVER", "VERSION"},
	row: func(p *meshfedv1.TrafficPolicy) []string {
		var splits []string
		for _, s := range p.GetSplits() {
			splits = append(splits, fmt.Sprintf("%s=%d", s.GetVersion(), s.GetWeight()))
		}
		retries := ""
		if n := p.GetRetries().GetAttempts(); n > 0 {
			retries = formatUint(uint64(n))
		}
		return []string{p.GetMeta().GetNamespace(), p.GetMeta().GetName(), p.GetDestination(), enumString(p.GetLoadBalancer()),
			formatDuration(p.GetTimeouts().GetRequest()), retries, strings.Join(splits, ","), strings.Join(p.GetFailover(), ","),
			formatUint(p.GetMeta().GetVersion())}
	},
}

func policyCommands[T proto.Message, E watchEvent](a *app, p policyType[T, E]) *cobra.Command {
	cmd := asGroup(&cobra.Command{Use: p.use, Short: p.short, Example: p.example})
	if p.aliases != "" {
		cmd.Aliases = []string{p.aliases}
	}
	printList := func(items []T) error {
		t := newTable(a.stdout, p.headers...)
		for _, it := range items {
			t.row(p.row(it)...)
		}
		return t.flush()
	}

	// apply
	var (
		file, applyNS string
		expected      uint64
	)
	apply := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or replace " + p.plural + " from a YAML or JSON file",
		Long: `Create or replace the ` + p.plural + ` of FILE ("-" reads standard input).
FILE holds one or more YAML documents separated by "---", or a JSON object,
in the JSON shape of the API message; enum values may be written without
their prefix. Every document is parsed before anything is applied. A
document without meta.namespace goes to --namespace (default "default").

With -o json, one policy prints as an object and several as
{"policies": [...]}.`,
		Example: p.example,
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			source, data, err := a.readFileArg(file)
			if err != nil {
				return err
			}
			docs, err := decodeDocuments(source, data, p.newMsg)
			if err != nil {
				return err
			}
			if expected != 0 && len(docs) > 1 {
				return usageErrorf("--expected-version needs a file with exactly one policy, %s has %d", source, len(docs))
			}
			for i, d := range docs {
				m := p.meta(d)
				if m.GetName() == "" {
					return fmt.Errorf("%s: document %d: meta.name is required", source, i+1)
				}
				if m.GetNamespace() == "" && applyNS != "" {
					m.Namespace = applyNS
				}
			}
			c, err := a.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			var applied []T
			for _, d := range docs {
				out, err := p.apply(cmd.Context(), c, d, expected)
				if err != nil {
					return fmt.Errorf("applying %s %s: %w", p.kind, qualifiedName(p.meta(d)), err)
				}
				applied = append(applied, out)
				if !a.isJSON() {
					fmt.Fprintf(a.stdout, "Applied %s %s (version %d)\n", p.kind, qualifiedName(p.meta(out)), p.meta(out).GetVersion())
				}
			}
			if !a.isJSON() {
				return nil
			}
			if len(applied) == 1 {
				return a.printJSON(applied[0])
			}
			return a.printListJSON(p.listResponse(applied, 0), "policies")
		},
	}
	apply.Flags().StringVarP(&file, "file", "f", "", `YAML or JSON file, "-" for standard input`)
	apply.Flags().StringVarP(&applyNS, "namespace", "n", "", "namespace for documents that name none")
	apply.Flags().Uint64Var(&expected, "expected-version", 0, "apply only if the stored version still equals this (one policy only)")

	// list
	var (
		listNS    string
		watchFlag bool
	)
	list := &cobra.Command{
		Use:     "list",
		Short:   "List " + p.plural,
		Example: fmt.Sprintf("  meshfed policy %s list\n  meshfed policy %s list -n default -o json\n  meshfed policy %s list --watch", p.use, p.use, p.use),
		Args:    exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			if watchFlag {
				ctx, cancel := a.signalContext(ctx)
				defer cancel()
				recv, err := p.watch(ctx, c, &meshfedv1.WatchRequest{Namespace: listNS})
				if err != nil {
					return err
				}
				return watch(ctx, a, recv, func(ev E) string {
					r := p.resource(ev)
					if ev.GetType() == meshfedv1.WatchEventType_WATCH_EVENT_TYPE_DELETE {
						return qualifiedName(p.meta(r))
					}
					return fmt.Sprintf("%s version=%d", qualifiedName(p.meta(r)), p.meta(r).GetVersion())
				})
			}
			items, index, err := listAll(ctx, &meshfedv1.ListRequest{Namespace: listNS},
				func(ctx context.Context, r *meshfedv1.ListRequest) ([]T, string, uint64, error) {
					return p.list(ctx, c, r)
				})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printListJSON(p.listResponse(items, index), "policies")
			}
			return printList(items)
		}),
	}
	addNamespaceFlag(list, &listNS, "")
	list.Flags().BoolVarP(&watchFlag, "watch", "w", false, "stream changes until interrupted")

	// get
	var getNS string
	get := &cobra.Command{
		Use:     "get NAME",
		Short:   "Show one " + p.kind,
		Example: fmt.Sprintf("  meshfed policy %s get NAME -n default -o json", p.use),
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			it, err := p.get(ctx, c, &meshfedv1.GetRequest{Namespace: getNS, Name: args[0]})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printJSON(it)
			}
			return printList([]T{it})
		}),
	}
	addNamespaceFlag(get, &getNS, defaultNamespace)

	// delete
	var (
		delNS       string
		delExpected uint64
	)
	del := &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete a " + p.kind,
		Example: fmt.Sprintf("  meshfed policy %s delete NAME -n default", p.use),
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			resp, err := p.del(ctx, c, &meshfedv1.DeleteRequest{Namespace: delNS, Name: args[0], ExpectedVersion: delExpected})
			if err != nil {
				return err
			}
			return a.deleted(p.kind, delNS+"/"+args[0], resp)
		}),
	}
	addNamespaceFlag(del, &delNS, defaultNamespace)
	del.Flags().Uint64Var(&delExpected, "expected-version", 0, "delete only if the stored version still equals this")

	cmd.AddCommand(apply, list, get, del)
	return cmd
}
