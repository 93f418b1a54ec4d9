package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/transports/backuprun"
	"github.com/drover-io/drover/transports/control"
)

func init() { subcommands = append(subcommands, newDRCmd) }

const drLong = `Keep a disaster-recovery standby volume that follows another volume's backups.

A DR volume is an ordinary Drover volume (its engine's control API is given
with --control) that holds the newest backup of the volume it follows, in a
backup target. "dr create" records it in the target (dr/NAME) and applies the
newest backup; "dr sync" (or "dr create --follow", which keeps running) applies
each newer backup incrementally: only the chunks that differ from the backup it
holds are written. "dr activate" applies the newest backup and stops following:
from then on the volume is yours. Do not write to a standby before activating
it: the next sync would overwrite only the chunks that changed in the backups.`

const drExample = `  drover dr create dr-dev --volume dev --control 127.0.0.1:7371 --target /mnt/backups --follow
  drover dr status dr-dev --target /mnt/backups
  drover dr activate dr-dev --target /mnt/backups`

func newDRCmd() *cobra.Command {
	var tf targetFlags
	cmd := &cobra.Command{Use: "dr", Short: "Disaster-recovery standby volumes that follow backups", Long: drLong,
		Example: drExample, Args: cobra.NoArgs}
	tf.register(cmd)
	var tls tlsFlags
	tls.register(cmd.PersistentFlags(), "the standby's TCP control address")
	var volume, addr string
	var follow bool
	var interval time.Duration
	create := &cobra.Command{Use: "create NAME", Short: "Make the volume at --control a DR standby of --volume", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if volume == "" {
				return errors.New("--volume: name the volume whose backups the standby follows")
			}
			ctx, cancel, r, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			if addr, err = resolveControl(addr); err != nil {
				return err
			}
			if err := r.DRCreate(ctx, backuprun.DR{Name: args[0], Volume: volume, Standby: addr}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "DR volume %s follows %s's backups into the volume at %s\n", args[0], volume, addr)
			return drFollow(ctx, cmd, &tf, &tls, r, args[0], follow, interval)
		}}
	create.Flags().StringVar(&volume, "volume", "", "the volume whose backups it follows")
	create.Flags().StringVar(&addr, "control", "", "control API of the standby volume's engine: unix:PATH or HOST:PORT (default: $"+controlEnv+", else the one on this host)")
	create.Flags().BoolVar(&follow, "follow", false, "keep applying new backups until activated or stopped")
	create.Flags().DurationVar(&interval, "interval", 30*time.Second, "with --follow: how often to look for a new backup")
	syncCmd := &cobra.Command{Use: "sync NAME", Short: "Apply the newest backup to the standby", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, r, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			return drFollow(ctx, cmd, &tf, &tls, r, args[0], follow, interval)
		}}
	syncCmd.Flags().BoolVar(&follow, "follow", false, "keep applying new backups until activated or stopped")
	syncCmd.Flags().DurationVar(&interval, "interval", 30*time.Second, "with --follow: how often to look for a new backup")
	status := &cobra.Command{Use: "status NAME", Short: "Show which backup the standby holds and how far behind it is", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, r, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			d, err := r.DRGet(ctx, args[0])
			if err != nil {
				return err
			}
			refs, err := r.List(ctx, d.Volume)
			if err != nil {
				return err
			}
			behind, latest := 0, "-"
			for i, ref := range refs {
				if ref.ID == d.Applied {
					behind = len(refs) - 1 - i
				}
				latest = ref.ID
			}
			if d.Applied == "" {
				behind = len(refs)
			}
			state := "standby"
			if d.Activated {
				state = "activated"
			}
			applied := d.Applied
			if applied == "" {
				applied = "-"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "dr %s: %s, follows %s, standby at %s\napplied %s\nlatest  %s (%d backups behind)\n",
				d.Name, state, d.Volume, d.Standby, applied, latest, behind)
			return nil
		}}
	activate := &cobra.Command{Use: "activate NAME", Short: "Apply the newest backup and stop following: the volume is yours", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, r, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			d, err := r.DRGet(ctx, args[0])
			if err != nil {
				return err
			}
			ct := controlTarget{addr: d.Standby, tls: tls}
			cc, conn, err := ct.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			id, err := r.DRActivate(ctx, d.Name, control.BackupVolume{C: cc},
				backuprun.RestoreOptions{Parallel: tf.parallel, Progress: tf.progress(cmd, "activate")})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "DR volume %s activated at the volume at %s with backup %s/%s\n", d.Name, d.Standby, d.Volume, id)
			return nil
		}}
	cmd.AddCommand(create, syncCmd, status, activate)
	return cmd
}

// drFollow applies the newest backup once, or, with follow, every
// interval until the DR volume is activated or the command is stopped.
func drFollow(ctx context.Context, cmd *cobra.Command, tf *targetFlags, tls *tlsFlags, r *backuprun.Repo, name string, follow bool, interval time.Duration) error {
	d, err := r.DRGet(ctx, name)
	if err != nil {
		return err
	}
	ct := controlTarget{addr: d.Standby, tls: *tls}
	cc, conn, err := ct.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	held := d.Applied
	for {
		id, err := r.DRSync(ctx, name, control.BackupVolume{C: cc}, backuprun.RestoreOptions{Parallel: tf.parallel, Progress: tf.progress(cmd, "dr sync")})
		switch {
		case errors.Is(err, backuprun.ErrActivated) && follow:
			fmt.Fprintf(cmd.OutOrStdout(), "DR volume %s was activated; stopping\n", name)
			return nil
		case err != nil && !follow:
			return err
		case err != nil:
			fmt.Fprintf(cmd.ErrOrStderr(), "dr %s: %v (retrying in %s)\n", name, err, interval)
		case id != held:
			fmt.Fprintf(cmd.OutOrStdout(), "DR volume %s now holds backup %s/%s\n", name, d.Volume, id)
			held = id
		case !follow:
			fmt.Fprintf(cmd.OutOrStdout(), "DR volume %s is up to date (backup %s)\n", name, id)
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}
