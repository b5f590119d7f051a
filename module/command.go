package caddyzmq

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// zmqSubcommands builds the subcommands of `caddy zmq`. Each concern
// (status, keys, ...) adds its own constructor from an init function in its
// own file, so that `caddy zmq` is registered exactly once.
var zmqSubcommands []func() *cobra.Command

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "zmq",
		Usage: "<subcommand> [flags]",
		Short: "Inspects and manages the zmq handler's pools and keys",
		Long: `
Commands for the zmq HTTP handler (http.handlers.zmq): run
'caddy zmq <subcommand> --help' for each one.`,
		CobraFunc: func(cmd *cobra.Command) {
			for _, sub := range zmqSubcommands {
				cmd.AddCommand(sub())
			}
		},
	})
}
