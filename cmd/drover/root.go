package main

import "github.com/spf13/cobra"

// subcommands holds the constructors of drover's subcommands. Each
// subcommand lives in its own file and appends its constructor from an init
// function, so adding one never touches this file:
//
//	func init() { subcommands = append(subcommands, newDevCmd) }
//
// Cobra lists subcommands sorted by name, so init order does not matter.
var subcommands []func() *cobra.Command

const rootLong = `Drover is replicated block storage for Kubernetes and plain hosts.

Every volume is served by one engine that synchronously replicates each write
to N replicas on different nodes, with snapshots, rebuild and backups, in the
spirit of Longhorn. Its replication core is a deterministic state machine that
performs no IO itself, so the code that runs in production is the code tested
in a fault-injecting simulator with linearizability checks.

Start with "drover dev", which runs a whole volume (three replicas, one engine,
the control API) in one process. In production, run "drover replica" on each
replica node and "drover engine" next to the volume's user; manage either with
the volume, snapshot and replica subcommands. Every subcommand's --help has
examples.`

// newRootCmd builds the drover root command with every registered subcommand
// attached. It builds a fresh tree on each call, so tests can run it in
// isolation.
func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:          "drover",
		Short:        "Replicated block storage with a deterministic, simulator-tested core",
		Long:         rootLong,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		// Without a Run function cobra ignores Args; bare "drover" prints help.
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	for _, newCmd := range subcommands {
		root.AddCommand(newCmd())
	}
	return root
}
