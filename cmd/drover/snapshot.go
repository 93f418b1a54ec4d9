package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/drover-io/drover/transports/control/controlpb"
)

func init() { subcommands = append(subcommands, newSnapshotCmd) }

const snapshotLong = `Create, list, delete, revert to and clone snapshots of a running engine's
volume.

A snapshot holds new IO, lets IO in flight drain, and freezes every replica's
head at the same point: it is crash-consistent. Its creation time and labels
are kept in every replica's metadata.

Delete (rm) merges a snapshot into its child online: the engine merges the
volume window by window (64 MiB), each window holding only writes to its
own range, then drops the snapshot. A crash at any point leaves a valid
chain and the same data; run rm again to finish.

Revert discards everything newer than the snapshot. The rule: the volume
must be detached (no frontend IO is served; requests fail rather than being
acknowledged and lost). Nothing should have the volume mounted or open, since
the data changes under it. Without --detach, revert of an attached volume is
refused; with it, drover detaches, reverts and attaches again.

Clone copies a snapshot's content into the directories of a new volume's
replicas (see drover snapshot clone --help).`

const snapshotExample = `  drover snapshot create before-upgrade --label app=db --label reason=upgrade
  drover snapshot ls
  drover snapshot rm before-upgrade
  drover snapshot revert before-upgrade --detach
  drover snapshot clone before-upgrade --dir /var/lib/drover/clone-1,/var/lib/drover/clone-2`

func newSnapshotCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "snapshot", Short: "Create, list, delete, revert and clone snapshots", Long: snapshotLong,
		Example: snapshotExample, Args: cobra.NoArgs}
	cf.register(cmd)
	named := func(use, short string, call func(context.Context, controlpb.ControlClient, string) error) *cobra.Command {
		return &cobra.Command{Use: use + " NAME", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error { return call(ctx, c, args[0]) })
			}}
	}
	var labels []string
	create := named("create", "Take a snapshot", func(ctx context.Context, c controlpb.ControlClient, name string) error {
		m, err := parseLabels(labels)
		if err != nil {
			return err
		}
		_, err = c.SnapshotCreate(ctx, &controlpb.SnapshotRequest{Name: name, Labels: m})
		return err
	})
	create.Flags().StringArrayVar(&labels, "label", nil, "label KEY=VALUE (repeatable)")
	rm := named("rm", "Delete a snapshot (merge it into its child, online)", func(ctx context.Context, c controlpb.ControlClient, name string) error {
		_, err := c.SnapshotDelete(ctx, &controlpb.SnapshotRequest{Name: name})
		return err
	})
	var detach bool
	revert := named("revert", "Revert the volume to a snapshot (the volume must be detached)", func(ctx context.Context, c controlpb.ControlClient, name string) error {
		return revertTo(ctx, c, name, detach)
	})
	revert.Long = `Revert the volume to a snapshot: every layer newer than it, and the head, are
discarded (that is what a revert means; nothing else is lost).

The volume must be detached: the engine refuses a revert while frontend IO is
allowed, since whatever uses the volume would see its data change under it.
Unmount or stop the users first. --detach detaches the volume for the revert
(frontend requests then fail with an IO error: none is acknowledged and then
lost; writes acknowledged before the detach are discarded with the rest of
the head) and attaches it again after it, even when the revert fails.`
	revert.Flags().BoolVar(&detach, "detach", false, "detach the volume for the revert and attach it again after")
	ls := &cobra.Command{Use: "ls", Short: "List snapshots as a tree, oldest first, with sizes", Args: cobra.NoArgs,
		Long: `List the snapshot chain as a tree, oldest first, the live head last. SIZE is
the data held by that layer only (layers share no blocks); RECLAIM is the part
of it its child has overwritten, which deleting the snapshot frees (the rest
moves into the child).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error {
				rep, err := c.SnapshotList(ctx, &controlpb.Empty{})
				if err != nil {
					return err
				}
				printSnapshotTree(cmd.OutOrStdout(), rep.GetSnapshots())
				return nil
			})
		}}
	cmd.AddCommand(create, ls, rm, revert, newSnapshotCloneCmd(&cf))
	return cmd
}

// parseLabels turns KEY=VALUE flags into a map; keys must be unique.
func parseLabels(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, f := range flags {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want KEY=VALUE", f)
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("label %q given twice", k)
		}
		m[k] = v
	}
	return m, nil
}

// revertTo reverts to name. Without detach, an attached volume is refused
// by the engine (its error says so); with it, the volume is detached for
// the revert and attached again afterwards whatever happened.
func revertTo(ctx context.Context, c controlpb.ControlClient, name string, detach bool) error {
	if !detach {
		_, err := c.SnapshotRevert(ctx, &controlpb.SnapshotRequest{Name: name})
		if status.Code(err) == codes.FailedPrecondition {
			return fmt.Errorf("%w (stop whatever uses the volume, then run with --detach or detach it first)", err)
		}
		return err
	}
	if _, err := c.Detach(ctx, &controlpb.Empty{}); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	_, err := c.SnapshotRevert(ctx, &controlpb.SnapshotRequest{Name: name})
	if _, aerr := c.Attach(ctx, &controlpb.Empty{}); err == nil && aerr != nil {
		err = fmt.Errorf("attach after revert: %w", aerr)
	}
	return err
}

// printSnapshotTree prints the chain oldest first, each layer a child of
// the one before, the head last.
func printSnapshotTree(w io.Writer, layers []*controlpb.SnapshotInfo) {
	fmt.Fprintf(w, "%-40s %-20s %10s %10s  %s\n", "NAME", "CREATED", "SIZE", "RECLAIM", "LABELS")
	for i, l := range layers {
		name := l.GetName()
		if name == "" {
			name = "(head)"
		}
		if i > 0 {
			name = strings.Repeat("  ", i-1) + "└─ " + name
		}
		created, reclaim := "-", "-"
		if ns := l.GetCreatedUnixNano(); ns != 0 {
			created = time.Unix(0, ns).UTC().Format("2006-01-02 15:04:05")
		}
		if l.GetName() != "" {
			reclaim = humanBytes(l.GetReclaimBytes())
		}
		keys := make([]string, 0, len(l.GetLabels()))
		for k := range l.GetLabels() {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var labels []string
		for _, k := range keys {
			labels = append(labels, k+"="+l.GetLabels()[k])
		}
		fmt.Fprintf(w, "%-40s %-20s %10s %10s  %s\n", name, created, humanBytes(l.GetSizeBytes()), reclaim, strings.Join(labels, ","))
	}
}
