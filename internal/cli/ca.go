package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

func (a *app) caCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:   "ca",
		Short: "Inspect, configure and rotate the cluster's certificate authority",
		Long: `The cluster's CA issues every SVID. An authority (root + intermediate) moves
through prepared -> active -> retiring -> retired; the trust bundle is the set
of roots that are not retired.

"ca settings" shows and changes the key algorithm and lifetimes, "ca import"
brings an operator's own root (plug-in CA), "ca rotate" moves the cluster
onto a new authority without breaking a connection.`,
	})
	cmd.AddCommand(a.caStatusCommand(), a.caRotateCommand(), a.caBundleCommand(), a.caSettingsCommand(), a.caImportCommand())
	return cmd
}

func (a *app) printCAStatus(s *meshfedv1.CAStatus) error {
	if err := keyValues(a.stdout,
		"Trust domain", s.GetTrustDomain(),
		"Bundle sequence", formatUint(s.GetBundleSequence()),
		"Bundle watchers", fmt.Sprintf("%d (%d on the current bundle)", s.GetWatchers(), s.GetWatchersCurrent()),
		"Peer clusters", fmt.Sprintf("%d (%d on the current bundle)", s.GetPeers(), s.GetPeersCurrent()),
		"Rotation step", s.GetRotationStep(),
	); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	return a.printAuthorities(s.GetAuthorities())
}

// authorityHeaders are the columns of "ca status" and "ca import".
// WATCHER-SVIDS counts the connected bundle watchers presenting an SVID the
// authority issued: retire waits for it to reach 0 on the old authority.
var authorityHeaders = []string{"AUTHORITY", "STATE", "ALGORITHM", "ROOT-EXPIRES", "INTERMEDIATE-EXPIRES", "EXTERNAL", "WATCHER-SVIDS", "SINCE"}

func authorityRow(au *meshfedv1.Authority) []string {
	return []string{au.GetId(), enumString(au.GetState()), enumString(au.GetKeyAlgorithm()), formatTime(au.GetRootNotAfter()),
		formatTime(au.GetIntermediateNotAfter()), formatBool(au.GetExternal()), formatUint(uint64(au.GetWatcherSvids())), formatTime(au.GetStateTime())}
}

func (a *app) printAuthorities(auths []*meshfedv1.Authority) error {
	t := newTable(a.stdout, authorityHeaders...)
	for _, au := range auths {
		t.row(authorityRow(au)...)
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
		Long: `Rotate the cluster's CA. Without --step the whole sequence runs, starting
where the authorities stand (a rotation that was interrupted, or an
authority staged by "meshfed ca import", resumes at activate):

  prepare   make a new root and intermediate (with the key algorithm and
            lifetimes of "ca settings"), add the new root to the bundle,
            cross-sign the new intermediate with the old root
  activate  once every bundle watcher (proxies, peers) on every server has
            acknowledged the new bundle, sign with the new intermediate
  retire    once no connected watcher and no server presents a certificate
            of the old authority, drop its root from the bundle and its keys
            from the replicated state

Each step waits up to --timeout; --force skips the wait. Progress is printed
as it happens; with -o json it goes to standard error and the last progress
message, with the final status, is the JSON document.

After retire, clients must trust the new root: re-read <data-dir>/ca.pem
(every server rewrites it) or save "meshfed ca bundle" as --ca-file.`,
		Example: `  meshfed ca rotate
  meshfed ca rotate --step prepare
  meshfed ca rotate --step activate --timeout 10m
  meshfed ca rotate --step retire --force
  meshfed ca bundle > ca.pem   # afterwards`,
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
				progress := a.stdout
				if a.isJSON() {
					progress = a.stderr
				}
				// A rotation is resumable: its state is replicated, so when
				// the leader goes away mid-rotation, the whole sequence is
				// simply asked for again and continues where it stands. A
				// single step is retried only if it had not started.
				wait := timeout
				if wait == 0 {
					wait = 5 * time.Minute
				}
				deadline := time.Now().Add(wait)
				backoff := 500 * time.Millisecond
				var last *meshfedv1.RotateCAProgress
				for {
					var started bool
					var err error
					last, started, err = a.rotateOnce(ctx, c, req, progress)
					if err == nil {
						break
					}
					if status.Code(err) != codes.Unavailable || time.Now().Add(backoff).After(deadline) ||
						(started && req.GetStep() != meshfedv1.RotationStep_ROTATION_STEP_UNSPECIFIED) {
						return err
					}
					fmt.Fprintf(progress, "cluster unavailable (%s); retrying in %s\n", status.Convert(err).Message(), backoff)
					select {
					case <-ctx.Done():
						return ctx.Err()
					case <-time.After(backoff):
					}
					backoff = min(2*backoff, 5*time.Second)
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

// rotateOnce runs one RotateCA call, printing its progress. started says
// whether the server reported anything before an error.
func (a *app) rotateOnce(ctx context.Context, c *client.Client, req *meshfedv1.RotateCARequest, progress io.Writer) (*meshfedv1.RotateCAProgress, bool, error) {
	stream, err := c.CA.RotateCA(ctx, req)
	if err != nil {
		return nil, false, err
	}
	var last *meshfedv1.RotateCAProgress
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return last, last != nil, nil
		}
		if err != nil {
			return last, last != nil, err
		}
		last = p
		// The final message of a whole rotation names no step.
		if step := enumString(p.GetStep()); step != "" {
			fmt.Fprintf(progress, "[%s] %s\n", step, p.GetMessage())
		} else {
			fmt.Fprintln(progress, p.GetMessage())
		}
	}
}

func (a *app) caBundleCommand() *cobra.Command {
	var federated bool
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Print the trust bundle (PEM)",
		Long: `Print the roots of this cluster's trust bundle (the roots of every
authority that is not retired) as PEM, ready to be used as --ca-file. During
a rotation it holds both the old and the new root.

--federated adds the bundle of every peer trust domain the server knows,
each bundle preceded by a comment line naming its trust domain and
sequence. -o json prints {"bundles": [...]}, each with its trust domain,
roots and sequence.`,
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

// caSettingFlags names the flags of "ca settings" that change a setting.
var caSettingFlags = []string{"key-algorithm", "root-ttl", "intermediate-ttl", "svid-ttl"}

// caSettingsFieldFlags maps the API fields of CASettings to their flags, to
// name the flag when the server rejects a value.
var caSettingsFieldFlags = map[string]string{
	"settings.key_algorithm":    "--key-algorithm",
	"settings.root_ttl":         "--root-ttl",
	"settings.intermediate_ttl": "--intermediate-ttl",
	"settings.svid_ttl":         "--svid-ttl",
}

func (a *app) printCASettings(s *meshfedv1.CASettings) error {
	if a.isJSON() {
		return a.printJSON(s)
	}
	return keyValues(a.stdout,
		"Key algorithm", enumString(s.GetKeyAlgorithm()),
		"Root TTL", formatTTL(s.GetRootTtl()),
		"Intermediate TTL", formatTTL(s.GetIntermediateTtl()),
		"SVID TTL", formatTTL(s.GetSvidTtl()),
		"Version", formatUint(s.GetMeta().GetVersion()),
	)
}

// formatTTL renders a lifetime without trailing zero units ("720h", "1h30m",
// "45s").
func formatTTL(d *durationpb.Duration) string {
	if d == nil {
		return ""
	}
	s := d.AsDuration().String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// ttlFlag reads a lifetime flag: negative is a usage error, 0 means "the
// default" (the field is sent unset).
func ttlFlag(flag string, d time.Duration) (*durationpb.Duration, error) {
	switch {
	case d < 0:
		return nil, usageErrorf("--%s %s: must not be negative (0 restores the default)", flag, d)
	case d == 0:
		return nil, nil
	}
	return durationpb.New(d), nil
}

// withFieldFlag prefixes a server validation error with the flag that set
// the field it names first, so that "invalid settings.svid_ttl: ..." reads
// as "--svid-ttl: invalid settings.svid_ttl: ...".
func withFieldFlag(err error, fields map[string]string) error {
	st, ok := grpcStatus(err)
	if !ok || st.Code() != codes.InvalidArgument {
		return err
	}
	msg := st.Message()
	best, at := "", -1
	for field := range fields {
		if i := fieldIndex(msg, field); i >= 0 && (at < 0 || i < at || (i == at && len(field) > len(best))) {
			best, at = field, i
		}
	}
	if best == "" {
		return err
	}
	return fmt.Errorf("%s: %w", fields[best], err)
}

// fieldIndex finds field in msg as a whole path element: not inside a
// longer name ("svid_ttl" is not in "max_svid_ttl").
func fieldIndex(msg, field string) int {
	ident := func(b byte) bool {
		return b == '_' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9'
	}
	for off := 0; ; {
		i := strings.Index(msg[off:], field)
		if i < 0 {
			return -1
		}
		i += off
		end := i + len(field)
		if (i == 0 || !ident(msg[i-1]) && msg[i-1] != '.') && (end == len(msg) || !ident(msg[end])) {
			return i
		}
		off = i + 1
	}
}

func (a *app) caSettingsCommand() *cobra.Command {
	var (
		keyAlg                     string
		rootTTL, interTTL, svidTTL time.Duration
		expected                   uint64
	)
	cmd := &cobra.Command{
		Use:   "settings [flags]",
		Short: "Show or change the CA's key algorithm and lifetimes",
		Long: `Without flags, show the CA settings. With any of --key-algorithm,
--root-ttl, --intermediate-ttl or --svid-ttl, change those settings and keep
the others. The change applies only if nobody changed the settings since
they were read (or, with --expected-version, only if the stored version is
still that one); otherwise the command fails with FAILED_PRECONDITION and
nothing changes.

Defaults: key algorithm ecdsa-p256, root 87600h (10 years), intermediate
720h (30 days), SVID 1h. A lifetime of 0 restores its default. The server
checks the bounds: an SVID lives at least 10s and at most half as long as
the intermediate, an intermediate at least 1h and at most half as long as
the root.

New values apply to what is issued next: SVIDs at once (an identity
registration's --svid-ttl overrides the setting), intermediates at their
next renewal, the key algorithm and the root lifetime at the next
"meshfed ca rotate".`,
		Example: `  meshfed ca settings
  meshfed ca settings -o json
  meshfed ca settings --svid-ttl 5m
  meshfed ca settings --key-algorithm ecdsa-p384 --root-ttl 43800h && meshfed ca rotate`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			update := anyChanged(cmd, caSettingFlags...)
			if f.Changed("expected-version") && !update {
				return usageErrorf("--expected-version needs a setting to change (--%s)", strings.Join(caSettingFlags, ", --"))
			}
			var alg meshfedv1.KeyAlgorithm
			if f.Changed("key-algorithm") {
				n, err := parseEnum(meshfedv1.KeyAlgorithm(0).Descriptor(), "--key-algorithm", keyAlg)
				if err != nil {
					return err
				}
				alg = meshfedv1.KeyAlgorithm(n)
			}
			ttls := map[string]*durationpb.Duration{}
			for flag, d := range map[string]time.Duration{"root-ttl": rootTTL, "intermediate-ttl": interTTL, "svid-ttl": svidTTL} {
				if !f.Changed(flag) {
					continue
				}
				v, err := ttlFlag(flag, d)
				if err != nil {
					return err
				}
				ttls[flag] = v
			}
			return a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
				cur, err := c.CA.GetCASettings(ctx, &meshfedv1.GetCASettingsRequest{})
				if err != nil {
					return err
				}
				if !update {
					return a.printCASettings(cur)
				}
				s := proto.CloneOf(cur)
				if f.Changed("key-algorithm") {
					s.KeyAlgorithm = alg
				}
				if v, ok := ttls["root-ttl"]; ok {
					s.RootTtl = v
				}
				if v, ok := ttls["intermediate-ttl"]; ok {
					s.IntermediateTtl = v
				}
				if v, ok := ttls["svid-ttl"]; ok {
					s.SvidTtl = v
				}
				want := expected
				if !f.Changed("expected-version") {
					want = cur.GetMeta().GetVersion()
				}
				out, err := c.CA.UpdateCASettings(ctx, &meshfedv1.UpdateCASettingsRequest{Settings: s, ExpectedVersion: want})
				if err != nil {
					return withFieldFlag(err, caSettingsFieldFlags)
				}
				return a.printCASettings(out)
			})(cmd, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyAlg, "key-algorithm", "", "key algorithm of new CA keys: "+strings.Join(enumChoices(meshfedv1.KeyAlgorithm(0).Descriptor()), ", "))
	f.DurationVar(&rootTTL, "root-ttl", 0, "lifetime of new roots, e.g. 87600h (0: default)")
	f.DurationVar(&interTTL, "intermediate-ttl", 0, "lifetime of new intermediates, e.g. 720h (0: default)")
	f.DurationVar(&svidTTL, "svid-ttl", 0, "lifetime of new workload SVIDs, e.g. 1h (0: default)")
	f.Uint64Var(&expected, "expected-version", 0, "apply only if the stored version still equals this")
	return cmd
}

func (a *app) caImportCommand() *cobra.Command {
	var rootFile, interFile, keyFile string
	cmd := &cobra.Command{
		Use:   "import --root FILE [--intermediate FILE] --key FILE",
		Short: "Stage an operator's own root (plug-in CA) as the next authority",
		Long: `Import an operator's own CA material as the prepared authority, which
"meshfed ca rotate" then activates, and onto which it retires the current
authority, like a generated one.

Two forms:

  --root ROOT.pem --key ROOT-KEY.pem
      the root's own key: the cluster makes its intermediate under this
      root and renews it at half life.
  --root ROOT.pem --intermediate INTER.pem --key INTER-KEY.pem
      an intermediate signed by the root (optionally followed by further
      intermediates up to the root) and the intermediate's key: the root's
      key never reaches the cluster. Renew the intermediate before it
      expires by importing a new one and rotating again.

The files are PEM. The key may be PKCS#8 ("PRIVATE KEY"), SEC 1 ("EC PRIVATE
KEY") or PKCS#1 ("RSA PRIVATE KEY"), unencrypted; it is sent as PKCS#8 and
stored in the replicated state, and no command or API ever prints it. Keys
may be ECDSA P-256 or P-384, or RSA 2048 or 4096 bits. The certificates must
be valid now and allowed to sign certificates.

Only one authority can be prepared at a time, and none while an old one is
still retiring (FAILED_PRECONDITION).`,
		Example: `  meshfed ca import --root root.pem --key root.key
  meshfed ca import --root root.pem --intermediate intermediate.pem --key intermediate.key
  meshfed ca rotate            # activate it, then retire the old authority
  meshfed ca bundle > ca.pem   # clients trust the new root`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if rootFile == "" {
				return usageErrorf("--root is required (the root certificate, PEM)")
			}
			if keyFile == "" {
				of := "the root"
				if interFile != "" {
					of = "the intermediate"
				}
				return usageErrorf("--key is required (the private key of %s, PEM)", of)
			}
			req := &meshfedv1.ImportAuthorityRequest{}
			root, err := readCertificatesFile("--root", rootFile)
			if err != nil {
				return err
			}
			req.RootPem = root
			if interFile != "" {
				inter, err := readCertificatesFile("--intermediate", interFile)
				if err != nil {
					return err
				}
				req.IntermediatePem = inter
			}
			key, err := readPrivateKeyFile("--key", keyFile)
			if err != nil {
				return err
			}
			req.PrivateKeyPem = key
			return a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
				au, err := c.CA.ImportAuthority(ctx, req)
				if err != nil {
					return withFieldFlag(err, map[string]string{"root_pem": "--root", "intermediate_pem": "--intermediate", "private_key_pem": "--key"})
				}
				if a.isJSON() {
					return a.printJSON(au)
				}
				fmt.Fprintf(a.stdout, "Imported authority %s (%s); it is %s.\n\n", au.GetId(), enumString(au.GetKeyAlgorithm()), enumString(au.GetState()))
				if err := a.printAuthorities([]*meshfedv1.Authority{au}); err != nil {
					return err
				}
				_, err = fmt.Fprintln(a.stdout, "\nRun \"meshfed ca rotate\" to activate it and retire the current authority.")
				return err
			})(cmd, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&rootFile, "root", "", "PEM file of the root certificate")
	f.StringVar(&interFile, "intermediate", "", "PEM file of an intermediate signed by the root (then --key is its key)")
	f.StringVar(&keyFile, "key", "", "PEM file of the private key of the intermediate, or of the root without --intermediate")
	return cmd
}

// readCertificatesFile reads the certificates of a PEM file given by flag
// and returns them re-encoded (text around the PEM blocks dropped). A file
// holding a private key is refused, so that a key given to the wrong flag
// is not sent as a certificate.
func readCertificatesFile(flag, path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	var out []byte
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case strings.Contains(b.Type, "PRIVATE KEY"):
			return "", fmt.Errorf("%s %s: holds a private key, not a certificate (give the key with --key)", flag, path)
		case b.Type == "CERTIFICATE":
			if _, err := x509.ParseCertificate(b.Bytes); err != nil {
				return "", fmt.Errorf("%s %s: %w", flag, path, err)
			}
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes})...)
		}
	}
	if len(out) == 0 {
		return "", fmt.Errorf("%s %s: no PEM certificate found", flag, path)
	}
	return string(out), nil
}

// readPrivateKeyFile reads the one private key of a PEM file given by flag
// and returns it as PKCS#8 PEM, the form the API takes. PKCS#1 ("RSA
// PRIVATE KEY") and SEC 1 ("EC PRIVATE KEY") keys are converted; encrypted
// keys are refused. Errors never include the key.
func readPrivateKeyFile(flag, path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	var der []byte
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if !strings.HasSuffix(b.Type, "PRIVATE KEY") {
			continue // certificates, EC PARAMETERS
		}
		if der != nil {
			return "", fmt.Errorf("%s %s: holds more than one private key", flag, path)
		}
		if b.Type == "ENCRYPTED PRIVATE KEY" || b.Headers["Proc-Type"] != "" {
			return "", fmt.Errorf("%s %s: the key is encrypted: decrypt it first (openssl pkey -in %s -out key.pem)", flag, path, path)
		}
		var key any
		switch b.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		default:
			return "", fmt.Errorf("%s %s: unsupported key type %q (PKCS#8, EC or RSA private keys)", flag, path, b.Type)
		}
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", flag, path, err)
		}
		if der, err = x509.MarshalPKCS8PrivateKey(key); err != nil {
			return "", fmt.Errorf("%s %s: %w", flag, path, err)
		}
	}
	if der == nil {
		return "", fmt.Errorf("%s %s: no PEM private key found", flag, path)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
}
