package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/cmd/drover/internal/bench"
)

const benchRebuildLong = `Measure rebuilds on one disk, against fio on the same disk in the same run:

 1. fio writes a file of --size sequentially (1 MiB, O_DIRECT where the
    filesystem allows it, fsync at the end), then reads it back: the
    reference is the rate at which the disk copies that much data,
    1 / (1/read + 1/write). Then fio reads that file while it writes
    another, both at once: the size over the slower job's time is what a
    copy in flight (reading and writing together, as a rebuild does)
    reaches on this disk, reported beside the goal.
 2. A volume of --size with one replica process (drover replica, TCP on
    loopback) is filled and flushed, the source's files are dropped from the
    page cache, and a second, empty replica process is added: the full
    rebuild's rate (size / time, ending with the target's fsync) as a ratio of
    the reference (goal >= 0.8).
 3. The new replica is stopped, 10% of the volume's 4 KiB blocks (random,
    distinct) are rewritten, it is restarted and rebuilt again: the bytes the
    catch-up copied, as a share of the volume (goal <= 15%).`

func newBenchRebuildCmd() *cobra.Command {
	var dir, jsonPath string
	size := sizeFlag{bytes: 2 << 30}
	cmd := &cobra.Command{Use: "rebuild", Short: "Benchmark a full rebuild and a catch-up over loopback TCP against fio on the same disk",
		Long: benchRebuildLong, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				dir = "."
			}
			work, err := os.MkdirTemp(dir, "drover-bench-rebuild-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(work)
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			rep, err := bench.Rebuild(cmd.Context(), cmd.ErrOrStderr(), exe, work, size.bytes)
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), rep.Table())
			if jsonPath != "" {
				out, _ := json.MarshalIndent(rep, "", "  ")
				return os.WriteFile(jsonPath, append(out, '\n'), 0o644)
			}
			return nil
		}}
	cmd.Flags().StringVar(&dir, "dir", "", "directory (disk) to benchmark on (default: the current one)")
	cmd.Flags().Var(&size, "size", "volume and fio file size")
	cmd.Flags().StringVar(&jsonPath, "json", "", "also write the report as JSON to this file")
	return cmd
}
