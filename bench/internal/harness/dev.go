package harness

import (
	"context"
	"os"
	"path/filepath"
	"time"
)

// StartMeshfedDev starts one `meshfed server --dev` with its data dir under
// dir and free loopback ports, and waits until it has a leader (itself).
// Cluster "dev", trust domain as the server reports it (dev.mesh). On
// error the server is stopped.
func StartMeshfedDev(ctx context.Context, ps *Procs, bin, dir string) (*MeshfedCluster, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s, err := NewMeshfedServer("dev", filepath.Join(dir, "dev"))
	if err != nil {
		return nil, err
	}
	c := &MeshfedCluster{Bin: bin, Servers: []*MeshfedServer{s}}
	args := append([]string{"server", "--dev"}, s.AddrArgs()...)
	if s.P, err = ps.Start("meshfed dev", filepath.Join(dir, "dev.log"), nil, bin, args...); err != nil {
		return nil, err
	}
	if c.Token, c.CAPEM, err = s.WaitCredentials(ctx); err == nil {
		err = WaitFor(ctx, "the dev server to lead", 60*time.Second, c.Procs(), func(ctx context.Context) error {
			_, err := c.Leader(ctx)
			return err
		})
	}
	if err != nil {
		ps.Stop(s.P)
		return nil, err
	}
	return c, nil
}
