package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

func (a *app) tokensCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "tokens",
		Aliases: []string{"token"},
		Short:   "Create, list and revoke API tokens",
		Long: `API callers authenticate with bearer tokens. Kinds:

  admin          every API call
  read           read-only operator: every get, list, watch and status call
  server-join    lets one server join the cluster
  workload-join  lets a workload attest as exactly one SPIFFE ID

Only a hash of a token's secret is stored: the secret is shown once, by
"tokens create". A token is identified by its accessor ID.`,
	})
	cmd.AddCommand(a.tokensCreateCommand(), a.tokensListCommand(), a.tokensGetCommand(), a.tokensDeleteCommand())
	return cmd
}

// createToken creates a token and prints only its secret (or the whole
// token with -o json).
func (a *app) createToken(ctx context.Context, c *client.Client, req *meshfedv1.CreateTokenRequest) error {
	tok, err := c.Tokens.CreateToken(ctx, req)
	if err != nil {
		return err
	}
	if a.isJSON() {
		return a.printJSON(tok)
	}
	_, err = fmt.Fprintln(a.stdout, tok.GetSecret())
	return err
}

// tokenLimits validates --ttl and --uses.
func tokenLimits(ttl time.Duration) (*durationpb.Duration, error) {
	if ttl < 0 {
		return nil, usageErrorf("--ttl %s: must not be negative", ttl)
	}
	if ttl == 0 {
		return nil, nil
	}
	return durationpb.New(ttl), nil
}

func (a *app) tokensCreateCommand() *cobra.Command {
	var (
		kind, spiffeID, description string
		ttl                         time.Duration
		uses                        uint32
		labels                      []string
	)
	cmd := &cobra.Command{
		Use:   "create --kind admin|read|server-join|workload-join",
		Short: "Create a token and print its secret",
		Long: `Create a token. Only its secret is printed, so that T=$(meshfed tokens create
...) captures it; -o json prints the whole token, secret included. The secret
cannot be read again.

--ttl 0 means the server's default: no expiry for admin and read tokens,
30 minutes for join tokens. --uses 0 means unlimited.`,
		Example: `  meshfed tokens create --kind read --description "dashboards"
  meshfed tokens create --kind workload-join --spiffe-id spiffe://east.mesh/ns/default/sa/web --ttl 10m --uses 1
  T=$(meshfed tokens create --kind admin --ttl 1h)`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if kind == "" {
				return usageErrorf("--kind is required (%s)", strings.Join(enumChoices(meshfedv1.TokenKind(0).Descriptor()), ", "))
			}
			k, err := parseEnum(meshfedv1.TokenKind(0).Descriptor(), "--kind", kind)
			if err != nil {
				return err
			}
			tk := meshfedv1.TokenKind(k)
			switch {
			case tk == meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN && spiffeID == "":
				return usageErrorf("--spiffe-id is required with --kind workload-join")
			case tk != meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN && spiffeID != "":
				return usageErrorf("--spiffe-id only applies to --kind workload-join")
			}
			d, err := tokenLimits(ttl)
			if err != nil {
				return err
			}
			lbls, err := parseLabels("--label", labels)
			if err != nil {
				return err
			}
			req := &meshfedv1.CreateTokenRequest{Kind: tk, Description: description, SpiffeId: spiffeID, Ttl: d, MaxUses: uses, Labels: lbls}
			return a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
				return a.createToken(ctx, c, req)
			})(cmd, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&kind, "kind", "", "admin, read, server-join or workload-join")
	f.StringVar(&spiffeID, "spiffe-id", "", "workload-join only: the SPIFFE ID the token lets a workload attest as")
	f.DurationVar(&ttl, "ttl", 0, "time to live, e.g. 10m (0: server default)")
	f.Uint32Var(&uses, "uses", 0, "how many times the token may be used (0: unlimited)")
	f.StringVar(&description, "description", "", "free-form description")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	return cmd
}

var tokenHeaders = []string{"ACCESSOR", "KIND", "DESCRIPTION", "SPIFFE-ID", "USES", "EXPIRES", "VERSION"}

func tokenRow(t *meshfedv1.Token) []string {
	uses := fmt.Sprintf("%d/", t.GetUses())
	if t.GetMaxUses() == 0 {
		uses += "unlimited"
	} else {
		uses += formatUint(uint64(t.GetMaxUses()))
	}
	expires := formatTime(t.GetExpireTime())
	if expires == "" {
		expires = "never"
	}
	return []string{t.GetMeta().GetName(), enumString(t.GetKind()), t.GetDescription(), t.GetSpiffeId(), uses, expires, formatUint(t.GetMeta().GetVersion())}
}

func (a *app) printTokens(ts []*meshfedv1.Token) error {
	t := newTable(a.stdout, tokenHeaders...)
	for _, tok := range ts {
		t.row(tokenRow(tok)...)
	}
	return t.flush()
}

func (a *app) tokensListCommand() *cobra.Command {
	var watchFlag bool
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List tokens (never their secrets)",
		Example: "  meshfed tokens list\n  meshfed tokens list -o json\n  meshfed tokens list --watch",
		Args:    exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			if watchFlag {
				ctx, cancel := a.signalContext(ctx)
				defer cancel()
				stream, err := c.Tokens.WatchTokens(ctx, &meshfedv1.WatchRequest{})
				if err != nil {
					return err
				}
				return watch(ctx, a, stream.Recv, func(ev *meshfedv1.WatchTokensResponse) string {
					t := ev.GetToken()
					if ev.GetType() == meshfedv1.WatchEventType_WATCH_EVENT_TYPE_DELETE {
						return t.GetMeta().GetName()
					}
					return fmt.Sprintf("%s kind=%s uses=%d version=%d", t.GetMeta().GetName(), enumString(t.GetKind()), t.GetUses(), t.GetMeta().GetVersion())
				})
			}
			ts, index, err := listAll(ctx, &meshfedv1.ListRequest{},
				func(ctx context.Context, r *meshfedv1.ListRequest) ([]*meshfedv1.Token, string, uint64, error) {
					resp, err := c.Tokens.ListTokens(ctx, r)
					return resp.GetTokens(), resp.GetNextPageToken(), resp.GetIndex(), err
				})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printListJSON(&meshfedv1.ListTokensResponse{Tokens: ts, Index: index}, "tokens")
			}
			return a.printTokens(ts)
		}),
	}
	cmd.Flags().BoolVarP(&watchFlag, "watch", "w", false, "stream changes until interrupted")
	return cmd
}

func (a *app) tokensGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get ACCESSOR",
		Short:   "Show one token (never its secret)",
		Example: "  meshfed tokens get 6f1c2a9e-... -o json",
		Args:    exactArgs("ACCESSOR"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			t, err := c.Tokens.GetToken(ctx, &meshfedv1.GetRequest{Name: args[0]})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printJSON(t)
			}
			return a.printTokens([]*meshfedv1.Token{t})
		}),
	}
}

func (a *app) tokensDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "delete ACCESSOR",
		Aliases: []string{"revoke"},
		Short:   "Revoke a token",
		Example: "  meshfed tokens delete 6f1c2a9e-...",
		Args:    exactArgs("ACCESSOR"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			resp, err := c.Tokens.DeleteToken(ctx, &meshfedv1.DeleteRequest{Name: args[0]})
			if err != nil {
				return err
			}
			return a.deleted("token", args[0], resp)
		}),
	}
}
