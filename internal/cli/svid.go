package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// Files written by "svid fetch".
const (
	svidFile   = "svid.pem"
	keyFile    = "key.pem"
	bundleFile = "bundle.pem"
)

func (a *app) svidCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:   "svid",
		Short: "Obtain X.509 SVIDs for workloads",
	})
	cmd.AddCommand(a.svidFetchCommand())
	return cmd
}

func (a *app) svidFetchCommand() *cobra.Command {
	var (
		out, id string
	)
	cmd := &cobra.Command{
		Use:   "fetch --token T --out DIR",
		Short: "Attest with a workload-join token and write an SVID, its key and the bundle",
		Long: `Attest as a workload with a workload-join token (--token, or MESHFED_TOKEN)
and write three files into DIR: svid.pem (the certificate chain, leaf
first), key.pem (the private key, mode 0600) and bundle.pem (the trust
domain's roots). The key is generated here and never leaves this machine:
only a certificate signing request is sent.

The request must carry the SPIFFE ID the token is bound to: give it with
--spiffe-id, or it is looked up from the token.`,
		Example: `  T=$(meshfed tokens create --kind workload-join --spiffe-id spiffe://east.mesh/ns/default/sa/web --ttl 10m --uses 1)
  meshfed svid fetch --token "$T" --out ./certs --spiffe-id spiffe://east.mesh/ns/default/sa/web`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageErrorf("--out is required (the directory to write %s, %s and %s to)", svidFile, keyFile, bundleFile)
			}
			cfg := a.clientConfig()
			if cfg.Token == "" {
				return usageErrorf("a workload-join token is required: set --token or %s", envToken)
			}
			var sid spiffeid.ID
			if id != "" {
				var err error
				if sid, err = spiffeid.FromString(id); err != nil {
					return usageErrorf("--spiffe-id %q: %v", id, err)
				}
			}
			// The token travels in the Attest request, where it is counted as
			// a use; it is not sent as a bearer token on every call.
			joinToken := cfg.Token
			cfg.Token = ""
			c, err := a.connectWith(cfg)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx := cmd.Context()
			if sid.IsZero() {
				if sid, err = tokenSPIFFEID(ctx, c.Tokens, joinToken); err != nil {
					return err
				}
			}
			key, csr, err := newCSR(sid)
			if err != nil {
				return err
			}
			resp, err := c.Workload.Attest(ctx, &meshfedv1.AttestRequest{Token: joinToken, Csr: csr})
			if err != nil {
				return err
			}
			if err := writeSVIDFiles(out, key, resp); err != nil {
				return err
			}
			if a.isJSON() {
				return a.printJSON(resp)
			}
			_, err = fmt.Fprintf(a.stdout, "Wrote %s, %s and %s for %s to %s\n", svidFile, keyFile, bundleFile, resp.GetSpiffeId(), out)
			return err
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory to write svid.pem, key.pem and bundle.pem to")
	cmd.Flags().StringVar(&id, "spiffe-id", "", "the SPIFFE ID the token is bound to (default: looked up with the token)")
	return cmd
}

// tokenSPIFFEID asks the server which identity the calling token is bound to.
func tokenSPIFFEID(ctx context.Context, tokens meshfedv1.TokenServiceClient, token string) (spiffeid.ID, error) {
	who, err := tokens.WhoAmI(ctx, &meshfedv1.WhoAmIRequest{}, grpc.PerRPCCredentials(client.BearerToken(token)))
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("looking up the token's SPIFFE ID (or pass --spiffe-id): %w", err)
	}
	s := who.GetToken().GetSpiffeId()
	if s == "" {
		return spiffeid.ID{}, fmt.Errorf("the token is a %s token, not a workload-join token bound to a SPIFFE ID", enumString(who.GetToken().GetKind()))
	}
	return spiffeid.FromString(s)
}

// newCSR makes a P-256 key and a CSR whose only SAN is id.
func newCSR(id spiffeid.ID) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	u, err := url.Parse(id.String())
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the certificate request: %w", err)
	}
	return key, csr, nil
}

// writeSVIDFiles writes the key first (0600), then the chain and the bundle,
// each atomically.
func writeSVIDFiles(dir string, key *ecdsa.PrivateKey, resp *meshfedv1.SVIDResponse) error {
	if resp.GetCertificateChainPem() == "" {
		return fmt.Errorf("the server returned no certificate")
	}
	if _, err := tlsutil.ParseCertificatesPEM([]byte(resp.GetCertificateChainPem())); err != nil {
		return fmt.Errorf("the server returned an unreadable certificate chain: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	files := []struct {
		name string
		mode os.FileMode
		data []byte
	}{
		{keyFile, 0o600, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
		{svidFile, 0o644, []byte(strings.TrimRight(resp.GetCertificateChainPem(), "\n") + "\n")},
		{bundleFile, 0o644, []byte(strings.TrimRight(resp.GetBundlePem(), "\n") + "\n")},
	}
	for _, f := range files {
		if _, err := writeFileAtomic(filepath.Join(dir, f.name), f.mode, func(w io.Writer) (int64, error) {
			n, err := w.Write(f.data)
			return int64(n), err
		}); err != nil {
			return fmt.Errorf("writing %s: %w", f.name, err)
		}
	}
	return nil
}
