package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/k8s/csi"
)

func init() { subcommands = append(subcommands, newNBDRelayCmd, newCSIExecCmd) }

const nbdRelayLong = `Serve an NBD export on standard input (a socket: nbdfuse --command, or
any client that runs its server as a subprocess) by relaying every request
to the export at URI. When the connection to URI is lost, the relay dials
it again and sends the requests the old connection took with it once more,
so its client sees its IO pause rather than fail: the CSI node service runs
it under each staged volume's nbdfuse, and an agent restart (the volume's
engine back on the same address) pauses the workload's IO. Requests fail
with EIO once the connection has been gone for --reconnect-timeout. It
exits when its client disconnects.`

func newNBDRelayCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{Use: "nbd-relay URI", Short: "Relay NBD on stdin to an export, reconnecting when it goes away",
		Long: nbdRelayLong, Args: cobra.ExactArgs(1),
		Example: `  nbdfuse /mnt/vol/disk --command drover nbd-relay nbd://10.0.0.5:40123/vol~growable`,
		RunE: func(cmd *cobra.Command, args []string) error {
			nc, err := net.FileConn(os.Stdin)
			if err != nil {
				return fmt.Errorf("nbd-relay: standard input is not a socket (run it as nbdfuse --command does): %w", err)
			}
			defer nc.Close()
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			r, err := nbd.NewRedialer(ctx, nbd.RedialConfig{URI: args[0], ReconnectTimeout: timeout, Logger: log})
			cancel()
			if err != nil {
				return fmt.Errorf("nbd-relay: %w", err)
			}
			defer r.Close()
			srv, err := nbd.NewServer(nbd.Config{Exports: []nbd.Export{{Name: "", Device: r}}, Logger: log, MaxConnections: 1})
			if err != nil {
				return fmt.Errorf("nbd-relay: %w", err)
			}
			if err := srv.ServeConn(nc); err != nil {
				return fmt.Errorf("nbd-relay: %w", err)
			}
			return nil
		}}
	cmd.Flags().DurationVar(&timeout, "reconnect-timeout", nbd.DefaultReconnectTimeout, "how long requests wait for a lost connection to come back before they fail with EIO")
	return cmd
}

// newCSIExecCmd is what the CSI node service runs under nsenter (in the
// host's mount and cgroup namespaces) to start a volume's nbdfuse where
// a restart of its container does not reach it.
func newCSIExecCmd() *cobra.Command {
	var cgroup string
	cmd := &cobra.Command{Use: "csi-exec --cgroup NAME -- COMMAND [ARGS...]", Hidden: true,
		Short: "Join cgroup NAME in every hierarchy, then exec COMMAND (started by drover csi --host-attach)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := csi.JoinCgroup(cgroup); err != nil {
				return err
			}
			path, err := exec.LookPath(args[0])
			if err != nil {
				return fmt.Errorf("csi-exec: %w", err)
			}
			return fmt.Errorf("csi-exec %s: %w", path, syscall.Exec(path, args, os.Environ()))
		}}
	cmd.Flags().StringVar(&cgroup, "cgroup", csi.AttachCgroup, "the cgroup to join under the root of every hierarchy")
	return cmd
}
