package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

func (a *app) meshCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:   "mesh",
		Short: "Show and change the cluster-wide mesh settings",
		Long: `The mesh settings are the cluster-wide defaults: the action when no
authorization policy allows a call (deny unless changed: zero trust), what
proxies' inbound listeners accept (mTLS mode: strict unless changed), access
logs, trace sampling and export, the default traffic policy, and the
cluster's locality.`,
	})
	cmd.AddCommand(a.meshGetCommand(), a.meshSetCommand(), a.meshResetCommand())
	return cmd
}

func (a *app) printMeshSettings(s *meshfedv1.MeshSettings) error {
	if a.isJSON() {
		return a.printJSON(s)
	}
	action := enumString(s.GetDefaultAuthorizationAction())
	if action == "" {
		action = "deny (default)"
	}
	mtls := enumString(s.GetMtlsMode())
	if mtls == "" {
		mtls = "strict (default)"
	}
	dtp := ""
	if s.GetDefaultTrafficPolicy() != nil {
		dtp = "set (see -o json)"
	}
	return keyValues(a.stdout,
		"Default authorization action", action,
		"mTLS mode", mtls,
		"Access logs", formatBool(s.GetAccessLogs()),
		"Trace sampling", fmt.Sprintf("%g", s.GetTraceSampling()),
		"OTLP endpoint", s.GetOtlpEndpoint(),
		"Locality", formatLocality(s.GetLocality()),
		"Default traffic policy", dtp,
		"Version", formatUint(s.GetMeta().GetVersion()),
	)
}

func (a *app) meshGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get",
		Short:   "Show the mesh settings",
		Example: "  meshfed mesh get\n  meshfed mesh get -o json",
		Args:    exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			s, err := c.Mesh.GetMeshSettings(ctx, &meshfedv1.GetMeshSettingsRequest{})
			if err != nil {
				return err
			}
			return a.printMeshSettings(s)
		}),
	}
}

func (a *app) meshSetCommand() *cobra.Command {
	var (
		file, action, mtls, otlp, region, zone string
		accessLogs                             bool
		sampling                               float64
		expected                               uint64
	)
	cmd := &cobra.Command{
		Use:   "set [flags]",
		Short: "Change the mesh settings",
		Long: `Change some mesh settings with flags (the others keep their value), or
replace all of them with -f FILE (YAML or JSON in the JSON shape of the API's
MeshSettings). Without --expected-version the change applies only if nobody
changed the settings since they were read.`,
		Example: `  meshfed mesh set --default-action deny --access-logs
  meshfed mesh set --mtls-mode permissive
  meshfed mesh set --trace-sampling 0.1 --otlp-endpoint otel-collector:4317
  meshfed mesh set --region eu-west --zone a
  meshfed mesh set -f mesh.yaml`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			var fromFile *meshfedv1.MeshSettings
			if file != "" {
				for _, name := range meshSettingFlags {
					if f.Changed(name) {
						return usageErrorf("-f and --%s cannot be combined", name)
					}
				}
				source, data, err := a.readFileArg(file)
				if err != nil {
					return err
				}
				docs, err := decodeDocuments(source, data, func() *meshfedv1.MeshSettings { return &meshfedv1.MeshSettings{} })
				if err != nil {
					return err
				}
				if len(docs) != 1 {
					return fmt.Errorf("%s: expected one document, found %d", source, len(docs))
				}
				fromFile = docs[0]
			} else if !anyChanged(cmd, meshSettingFlags...) {
				return usageErrorf("nothing to change: give -f FILE or at least one setting flag")
			}
			var actionNum int32
			if f.Changed("default-action") {
				n, err := parseEnum(meshfedv1.AuthorizationAction(0).Descriptor(), "--default-action", action)
				if err != nil {
					return err
				}
				actionNum = int32(n)
			}
			var mtlsNum int32
			if f.Changed("mtls-mode") {
				n, err := parseEnum(meshfedv1.MTLSMode(0).Descriptor(), "--mtls-mode", mtls)
				if err != nil {
					return err
				}
				mtlsNum = int32(n)
			}
			if f.Changed("trace-sampling") && (sampling < 0 || sampling > 1) {
				return usageErrorf("--trace-sampling %g: must be between 0 and 1", sampling)
			}
			return a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
				s := fromFile
				if s == nil {
					cur, err := c.Mesh.GetMeshSettings(ctx, &meshfedv1.GetMeshSettingsRequest{Read: &meshfedv1.ReadOptions{Consistent: true}})
					if err != nil {
						return err
					}
					s = cur
					if expected == 0 {
						expected = cur.GetMeta().GetVersion()
					}
					if f.Changed("default-action") {
						s.DefaultAuthorizationAction = meshfedv1.AuthorizationAction(actionNum)
					}
					if f.Changed("mtls-mode") {
						s.MtlsMode = meshfedv1.MTLSMode(mtlsNum)
					}
					if f.Changed("access-logs") {
						s.AccessLogs = accessLogs
					}
					if f.Changed("trace-sampling") {
						s.TraceSampling = sampling
					}
					if f.Changed("otlp-endpoint") {
						s.OtlpEndpoint = otlp
					}
					if f.Changed("region") || f.Changed("zone") {
						if s.Locality == nil {
							s.Locality = &meshfedv1.Locality{}
						}
						if f.Changed("region") {
							s.Locality.Region = region
						}
						if f.Changed("zone") {
							s.Locality.Zone = zone
						}
					}
				}
				out, err := c.Mesh.UpdateMeshSettings(ctx, &meshfedv1.UpdateMeshSettingsRequest{Settings: s, ExpectedVersion: expected})
				if err != nil {
					return err
				}
				return a.printMeshSettings(out)
			})(cmd, nil)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", `replace all settings from a YAML or JSON file ("-" for standard input)`)
	f.StringVar(&action, "default-action", "", "action when no policy allows a call: allow or deny")
	f.StringVar(&mtls, "mtls-mode", "", "what proxies' inbound listeners accept: strict (mutual TLS only) or permissive (also plain text)")
	f.BoolVar(&accessLogs, "access-logs", false, "proxies write JSON access logs")
	f.Float64Var(&sampling, "trace-sampling", 0, "share of requests traced (0-1)")
	f.StringVar(&otlp, "otlp-endpoint", "", "OTLP/gRPC endpoint proxies export traces to")
	f.StringVar(&region, "region", "", "this cluster's locality region")
	f.StringVar(&zone, "zone", "", "this cluster's locality zone")
	f.Uint64Var(&expected, "expected-version", 0, "apply only if the stored version still equals this")
	return cmd
}

// meshSettingFlags are the flags of "mesh set" that change one setting.
var meshSettingFlags = []string{"default-action", "mtls-mode", "access-logs", "trace-sampling", "otlp-endpoint", "region", "zone"}

func anyChanged(cmd *cobra.Command, names ...string) bool {
	for _, n := range names {
		if cmd.Flags().Changed(n) {
			return true
		}
	}
	return false
}

func (a *app) meshResetCommand() *cobra.Command {
	var expected uint64
	cmd := &cobra.Command{
		Use:     "reset",
		Short:   "Restore the default mesh settings",
		Example: "  meshfed mesh reset",
		Args:    exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			s, err := c.Mesh.ResetMeshSettings(ctx, &meshfedv1.ResetMeshSettingsRequest{ExpectedVersion: expected})
			if err != nil {
				return err
			}
			return a.printMeshSettings(s)
		}),
	}
	cmd.Flags().Uint64Var(&expected, "expected-version", 0, "reset only if the stored version still equals this")
	return cmd
}
