package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshfed/meshfed/internal/svidclient"
)

// defaultFetchTimeout bounds "svid fetch" when no server answers.
const defaultFetchTimeout = 30 * time.Second

func (a *app) svidCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:   "svid",
		Short: "Obtain X.509 SVIDs for workloads",
	})
	cmd.AddCommand(a.svidFetchCommand())
	return cmd
}

// svidFetchResult is the JSON document of "svid fetch -o json".
type svidFetchResult struct {
	SPIFFEID    string    `json:"spiffe_id"`
	ExpiresAt   time.Time `json:"expires_at"`
	AuthorityID string    `json:"authority_id,omitempty"`
	SVIDFile    string    `json:"svid_file"`
	KeyFile     string    `json:"key_file"`
	BundleFile  string    `json:"bundle_file"`
}

func (a *app) svidFetchCommand() *cobra.Command {
	var (
		out, id string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "fetch --token T --out DIR",
		Short: "Attest with a workload-join token and write an SVID, its key and the bundle",
		Long: `Attest as a workload with a workload-join token (--token, or MESHFED_TOKEN)
and write three files into DIR: svid.pem (the certificate chain, leaf
first), key.pem (the private key, PKCS#8, mode 0600) and bundle.pem (the
trust domain's roots). The key is generated here and never leaves this
machine: only a certificate signing request is sent.

The SVID is issued for the identity the token is bound to. --spiffe-id is an
optional check: the request then asks for exactly that identity, and the
server refuses it if the token is bound to another one.

This fetches one SVID and exits; it does not renew it. Long-running
workloads use the client library (internal/svidclient) or the proxy, which
renew at half life and follow CA rotation.

--addr may list several servers separated by commas; they are tried in
order. Unreachable servers are retried with backoff for up to --timeout; a
refused token fails at once.`,
		Example: `  T=$(meshfed tokens create --kind workload-join --spiffe-id spiffe://east.mesh/ns/default/sa/web --ttl 10m --uses 1)
  meshfed svid fetch --token "$T" --out ./certs
  openssl verify -CAfile certs/bundle.pem -untrusted certs/svid.pem certs/svid.pem`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageErrorf("--out is required (the directory to write %s, %s and %s to)", svidclient.SVIDFile, svidclient.KeyFile, svidclient.BundleFile)
			}
			cc := a.clientConfig()
			if cc.Token == "" {
				return usageErrorf("a workload-join token is required: set --token or %s", envToken)
			}
			if cc.Addr == "" {
				return usageErrorf("no server address: set --addr or %s", envAddr)
			}
			if cc.CAFile == "" {
				return usageErrorf("no CA bundle: set --ca-file or %s (a bootstrapped server writes it to <data-dir>/ca.pem)", envCAFile)
			}
			if timeout <= 0 {
				return usageErrorf("--timeout %s: must be positive", timeout)
			}
			cfg := svidclient.Config{
				Addrs:       splitAddrs(cc.Addr),
				CAFile:      cc.CAFile,
				Token:       cc.Token,
				DialOptions: a.dialOptions,
			}
			if id != "" {
				sid, err := spiffeid.FromString(id)
				if err != nil {
					return usageErrorf("--spiffe-id %q: %v", id, err)
				}
				cfg.ExpectedID = sid
			}
			c, err := svidclient.New(cfg)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if err := c.Attest(ctx); err != nil {
				if errors.Is(err, context.DeadlineExceeded) && cmd.Context().Err() == nil {
					return fmt.Errorf("no SVID within %s (--timeout): %w", timeout, err)
				}
				return err
			}
			files, err := c.WriteFiles(out)
			if err != nil {
				return err
			}
			st := c.Status()
			if a.isJSON() {
				return a.printValueJSON(svidFetchResult{
					SPIFFEID:    st.ID.String(),
					ExpiresAt:   st.ExpiresAt.UTC(),
					AuthorityID: st.AuthorityID,
					SVIDFile:    files.SVID,
					KeyFile:     files.Key,
					BundleFile:  files.Bundle,
				})
			}
			_, err = fmt.Fprintf(a.stdout, "%s: SVID valid until %s, wrote %s, %s, %s\n",
				st.ID, st.ExpiresAt.UTC().Format(time.RFC3339), files.SVID, files.Key, files.Bundle)
			return err
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory to write svid.pem, key.pem and bundle.pem to (created if missing)")
	cmd.Flags().StringVar(&id, "spiffe-id", "", "fail unless the token is bound to this SPIFFE ID")
	cmd.Flags().DurationVar(&timeout, "timeout", defaultFetchTimeout, "how long to keep trying while no server answers")
	return cmd
}

// splitAddrs reads a comma-separated list of addresses.
func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}
