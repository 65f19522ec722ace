// Command meshfed is the meshfed control plane server and the operator CLI,
// in one binary. The command tree lives in internal/cli.
package main

import (
	"os"

	"github.com/meshfed/meshfed/internal/cli"
)

func main() {
	os.Exit(cli.Execute(cli.NewRootCommand(os.Stdout, os.Stderr)))
}
