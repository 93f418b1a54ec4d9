package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/transports/control/controlpb"
)

func init() { subcommands = append(subcommands, newSnapshotCmd) }

const snapshotLong = `Create, list, delete and revert to snapshots of a running engine's volume.

A snapshot holds new IO, lets IO in flight drain, and freezes every replica's
head at the same point: it is crash-consistent. Delete merges a snapshot into
its child. Revert discards everything newer than the snapshot, with the volume
detached meanwhile (see drover snapshot revert --help).`

const snapshotExample = `  drover snapshot create before-upgrade
  drover snapshot ls
  drover snapshot rm before-upgrade
  drover snapshot revert before-upgrade --control 127.0.0.1:7370`

func newSnapshotCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "snapshot", Short: "Create, list, delete and revert snapshots", Long: snapshotLong,
		Example: snapshotExample, Args: cobra.NoArgs}
	cf.register(cmd)
	named := func(use, short string, call func(context.Context, controlpb.ControlClient, string) error) *cobra.Command {
		return &cobra.Command{Use: use + " NAME", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error { return call(ctx, c, args[0]) })
			}}
	}
	create := named("create", "Take a snapshot", func(ctx context.Context, c controlpb.ControlClient, name string) error {
		_, err := c.SnapshotCreate(ctx, &controlpb.SnapshotRequest{Name: name})
		return err
	})
	rm := named("rm", "Delete a snapshot (merge it into its child)", func(ctx context.Context, c controlpb.ControlClient, name string) error {
		_, err := c.SnapshotDelete(ctx, &controlpb.SnapshotRequest{Name: name})
		return err
	})
	revert := named("revert", "Revert the volume to a snapshot (detaches it for the revert)", func(ctx context.Context, c controlpb.ControlClient, name string) error {
		if _, err := c.Detach(ctx, &controlpb.Empty{}); err != nil {
			return fmt.Errorf("detach: %w", err)
		}
		_, err := c.SnapshotRevert(ctx, &controlpb.SnapshotRequest{Name: name})
		if _, aerr := c.Attach(ctx, &controlpb.Empty{}); err == nil && aerr != nil {
			err = fmt.Errorf("attach after revert: %w", aerr)
		}
		return err
	})
	revert.Long = `Revert the volume to a snapshot: every layer newer than it, and the head, are
discarded. The volume is detached for the revert (frontend IO fails meanwhile)
and attached again after it. Stop or unmount whatever uses the volume first.`
	ls := &cobra.Command{Use: "ls", Short: "List snapshots, oldest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error {
				rep, err := c.SnapshotList(ctx, &controlpb.Empty{})
				if err != nil {
					return err
				}
				for _, n := range rep.GetNames() {
					fmt.Fprintln(cmd.OutOrStdout(), n)
				}
				return nil
			})
		}}
	cmd.AddCommand(create, ls, rm, revert)
	return cmd
}
