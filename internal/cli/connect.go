package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/meshfed/meshfed/internal/client"
)

const (
	envAddr   = client.EnvAddr
	envToken  = client.EnvToken
	envCAFile = client.EnvCAFile
)

// clientConfig resolves the connection settings: a flag wins over its
// environment variable.
func (a *app) clientConfig() client.Config {
	cfg := client.Config{Addr: a.addr, Token: a.token, CAFile: a.caFile}
	if cfg.Addr == "" {
		cfg.Addr = a.getenv(envAddr)
	}
	if cfg.Token == "" {
		cfg.Token = a.getenv(envToken)
	}
	if cfg.CAFile == "" {
		cfg.CAFile = a.getenv(envCAFile)
	}
	return cfg
}

// connect opens a client with the global flags. A missing address or CA
// bundle is a usage error; an unreadable CA file is an ordinary one.
func (a *app) connect() (*client.Client, error) {
	return a.connectWith(a.clientConfig())
}

func (a *app) connectWith(cfg client.Config) (*client.Client, error) {
	if cfg.Addr == "" {
		return nil, usageErrorf("no server address: set --addr or %s", envAddr)
	}
	if cfg.CAFile == "" && len(cfg.CAPEM) == 0 {
		return nil, usageErrorf("no CA bundle: set --ca-file or %s (a bootstrapped server writes it to <data-dir>/ca.pem)", envCAFile)
	}
	return client.New(cfg, a.dialOptions...)
}

// withClient wraps a RunE body that needs an API connection.
func (a *app) withClient(fn func(ctx context.Context, c *client.Client, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := a.connect()
		if err != nil {
			return err
		}
		defer c.Close()
		return fn(cmd.Context(), c, args)
	}
}

// signalContext returns a context cancelled by SIGINT or SIGTERM. After the
// first signal the handler is removed, so a second Ctrl-C kills the process
// the usual way.
func (a *app) signalContext(parent context.Context) (context.Context, context.CancelFunc) {
	if !a.notifySignals {
		return context.WithCancel(parent)
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}
