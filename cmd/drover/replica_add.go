package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/transports/control/controlpb"
)

const replicaAddLong = `Add a replica to the volume under a new ID and rebuild it in: the engine
fences it, records it WO (it gets every write from then on), snapshots the
volume, and copies every layer block by block, only what the new replica
lacks or holds with another checksum. Adding a replica that was in the volume
before (or restarting one) copies only what changed while it was away.

Without --wait the command returns once the rebuild has started; drover
replica ls and drover volume info show its progress. With --wait it draws a
progress bar (bytes done/total, rate, ETA) until the replica is RW; there is
no time limit unless --timeout is given. An interrupted rebuild (the engine
or the new replica killed) continues where it stopped on the next attempt.

--replaces removes a replica once the new one is RW (replacing a failed or
retired replica by command). --rate caps this rebuild's copying.`

func newReplicaAddCmd(cf *clientFlags) *cobra.Command {
	var id, replaces string
	var rate sizeFlag
	var wait bool
	cmd := &cobra.Command{Use: "add ADDR", Short: "Add a replica and rebuild it into the volume",
		Long: replicaAddLong, Args: cobra.ExactArgs(1),
		Example: `  drover replica add 10.0.0.8:7400 --id s1 --replaces r3 --wait
  drover replica add 10.0.0.8:7400 --rate 100MiB`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, conn, err := cf.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx := cmd.Context()
			if cmd.Flags().Changed("timeout") || !wait {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, cf.timeout)
				defer cancel()
			}
			req := &controlpb.ReplicaAddRequest{Id: id, Address: args[0], RateBytesPerSec: rate.bytes,
				Replaces: replaces, Background: !wait}
			if req.Id == "" {
				req.Id = args[0]
			}
			if err := checkNotMember(ctx, c, req.Id, args[0]); err != nil {
				return err
			}
			if !wait {
				if _, err := c.ReplicaAdd(ctx, req); err != nil {
					return fmt.Errorf("engine at %s: %w", cf.addr, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "rebuild of %s started (drover replica ls shows its progress)\n", req.Id)
				return nil
			}
			return addAndWait(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), c, req)
		}}
	cmd.Flags().StringVar(&id, "id", "", "name of the replica in the volume (default: its address)")
	cmd.Flags().StringVar(&replaces, "replaces", "", "replica to remove once the new one is RW")
	cmd.Flags().Var(&rate, "rate", "cap on this rebuild's copying, bytes per second (e.g. 50MiB)")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for the rebuild, showing a progress bar")
	return cmd
}

// addAndWait runs the add and draws the rebuild's progress on errw
// until it returns.
func addAndWait(ctx context.Context, out, errw io.Writer, c controlpb.ControlClient, req *controlpb.ReplicaAddRequest) error {
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := c.ReplicaAdd(ctx, req)
		done <- err
	}()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	drawn := false
	for {
		select {
		case err := <-done:
			if drawn {
				fmt.Fprintln(errw)
			}
			if err != nil {
				return fmt.Errorf("add replica %s: %w", req.Id, err)
			}
			summary := fmt.Sprintf("replica %s is RW", req.Id)
			if info, ierr := c.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{}); ierr == nil {
				if lr := info.GetLastRebuild(); lr != nil && lr.GetTarget() == req.Id {
					summary += fmt.Sprintf(": %s compared, %s copied in %s", formatSize(lr.GetBytesTotal()),
						formatSize(lr.GetBytesCopied()), time.Duration(lr.GetElapsedMs())*time.Millisecond)
				}
			}
			fmt.Fprintf(out, "%s (%s in all)\n", summary, time.Since(start).Round(time.Millisecond))
			return nil
		case <-tick.C:
			info, err := c.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
			if err != nil {
				continue
			}
			if rb := info.GetRebuild(); rb != nil && rb.GetTarget() == req.Id {
				fmt.Fprintf(errw, "\r%s", progressLine(rb, 30))
				drawn = true
			}
		}
	}
}

// progressLine draws a rebuild's progress as a bar of width cells with
// bytes done/total, bytes copied, rate and ETA.
func progressLine(rb *controlpb.RebuildProgress, width int) string {
	frac := 0.0
	if rb.GetBytesTotal() > 0 {
		frac = float64(rb.GetBytesDone()) / float64(rb.GetBytesTotal())
	}
	filled := min(width, int(frac*float64(width)))
	bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
	eta := "?"
	if rb.GetEtaMs() > 0 || frac >= 1 {
		eta = (time.Duration(rb.GetEtaMs()) * time.Millisecond).Round(time.Second).String()
	}
	line := fmt.Sprintf("[%s] %3.0f%% %s/%s, %s copied, %.1f MB/s, ETA %s (%s)", bar, 100*frac,
		formatSize(rb.GetBytesDone()), formatSize(rb.GetBytesTotal()), formatSize(rb.GetBytesCopied()),
		rb.GetRateBytesPerSec()/1e6, eta, rb.GetStage())
	if lim := rb.GetLimitBytesPerSec(); lim > 0 {
		line += fmt.Sprintf(", limit %s/s", formatSize(lim))
	}
	return line + "   "
}

// printRebuild prints the rebuild in progress, if any, and the last one.
func printRebuild(w io.Writer, info *controlpb.VolumeInfoResponse) {
	if rb := info.GetRebuild(); rb != nil {
		fmt.Fprintf(w, "rebuilding %s from %s: %s\n", rb.GetTarget(), rb.GetSource(), progressLine(rb, 20))
	}
	if lr := info.GetLastRebuild(); lr != nil {
		fmt.Fprintf(w, "last rebuild: %s from %s %s: %s compared, %s copied in %s\n", lr.GetTarget(), lr.GetSource(),
			lr.GetStage(), formatSize(lr.GetBytesDone()), formatSize(lr.GetBytesCopied()), time.Duration(lr.GetElapsedMs())*time.Millisecond)
	}
	if len(info.GetSpares()) > 0 {
		fmt.Fprintf(w, "spares: %s\n", strings.Join(info.GetSpares(), ", "))
	}
	if len(info.GetRemoved()) > 0 {
		fmt.Fprintf(w, "removed: %s\n", strings.Join(info.GetRemoved(), ", "))
	}
}

// checkNotMember refuses an address that names, in another spelling
// (localhost:7400 for 127.0.0.1:7400), a replica already in the volume
// under another ID; the engine itself refuses the same spelling.
func checkNotMember(ctx context.Context, c controlpb.ControlClient, id, addr string) error {
	want, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil // not a TCP address (or not resolvable): the engine decides
	}
	info, err := c.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
	if err != nil {
		return nil // the add itself reports an engine that does not answer
	}
	for _, r := range info.GetReplicas() {
		if r.GetId() == id {
			continue
		}
		if a, err := net.ResolveTCPAddr("tcp", r.GetAddress()); err == nil && a.String() == want.String() {
			return fmt.Errorf("add replica %s: %s is replica %s's address already (one replica cannot be two members; remove %s first to add it under another ID)",
				id, addr, r.GetId(), r.GetId())
		}
	}
	return nil
}
