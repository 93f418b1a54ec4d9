package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/transports/control/controlpb"
)

func init() { subcommands = append(subcommands, newVolumeCmd) }

const volumeLong = `Inspect and manage the volume of a running engine (drover engine or drover
dev) through its control API.

write, read and flush move data through the engine. They are debug and test
tools (there is no frontend in them), handy to check a deployment end to end.`

const volumeExample = `  drover volume info
  drover volume info --control 10.0.0.5:7370 --tls-cert admin.crt --tls-key admin.key --tls-ca ca.crt
  drover volume info --control unix:/var/tmp/drover/control.sock
  drover volume expand --size 20GiB
  drover volume write --offset 1MiB --file data.bin
  drover volume read --offset 1MiB --length 4KiB --file out.bin
  drover volume read --offset 0 --length 1GiB --sha256`

func newVolumeCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "volume", Short: "Inspect and manage a running engine's volume", Long: volumeLong,
		Example: volumeExample, Args: cobra.NoArgs}
	cf.register(cmd)
	cmd.AddCommand(newVolumeInfoCmd(&cf), newVolumeExpandCmd(&cf), newVolumeWriteCmd(&cf),
		newVolumeReadCmd(&cf), newVolumeFlushCmd(&cf), newVolumeQoSCmd(&cf), newVolumeRekeyCmd())
	return cmd
}

func newVolumeInfoCmd(cf *clientFlags) *cobra.Command {
	var debug bool
	cmd := &cobra.Command{Use: "info", Short: "Show phase, size, snapshots, replicas and rebuild progress", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error {
				info, err := c.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
				if err != nil {
					return err
				}
				printVolumeInfo(cmd.OutOrStdout(), info)
				if debug {
					printTasks(cmd.OutOrStdout(), info.GetTasks())
				}
				return nil
			})
		}}
	cmd.Flags().BoolVar(&debug, "debug", false, "also list the engine's tasks (open, rebuild, membership change, admin queue) and the stage each is in")
	return cmd
}

// printTasks lists the engine's multi-step tasks, oldest first.
func printTasks(w io.Writer, tasks []*controlpb.EngineTask) {
	if len(tasks) == 0 {
		fmt.Fprintln(w, "tasks:      none")
		return
	}
	fmt.Fprintln(w, "tasks:")
	for _, t := range tasks {
		line := fmt.Sprintf("  %-10s %-13s", t.GetKind(), t.GetStage())
		if t.GetDetail() != "" {
			line += " " + t.GetDetail()
		}
		fmt.Fprintln(w, line)
	}
}

func printVolumeInfo(w io.Writer, info *controlpb.VolumeInfoResponse) {
	fmt.Fprintf(w, "volume:     %s\n", info.GetVolume())
	phase := info.GetPhase()
	if info.GetWhy() != "" {
		phase += " (" + info.GetWhy() + ")"
	}
	fmt.Fprintf(w, "phase:      %s\n", phase)
	fmt.Fprintf(w, "size:       %s (%d bytes)\n", formatSize(info.GetSizeBytes()), info.GetSizeBytes())
	fmt.Fprintf(w, "epoch:      %d\n", info.GetEpoch())
	fmt.Fprintf(w, "membership: gen %d\n", info.GetMembershipGen())
	fmt.Fprintf(w, "snapshots:  %d\n", len(info.GetChain()))
	fmt.Fprintln(w, "replicas:")
	printReplicas(w, info.GetReplicas())
	if rb := info.GetRebuild(); rb != nil {
		fmt.Fprintf(w, "rebuild:    %s from %s, %s, %d/%d blocks scanned, %d bytes copied\n",
			rb.GetTarget(), rb.GetSource(), rb.GetStage(), rb.GetBlocksScanned(), rb.GetBlocksTotal(), rb.GetBytesCopied())
	}
}

func printReplicas(w io.Writer, rs []*controlpb.ReplicaStatus) {
	for _, r := range rs {
		link := "connected"
		if !r.GetConnected() {
			link = "not connected"
		}
		line := fmt.Sprintf("  %-24s %-4s %-22s %s", r.GetId(), r.GetMode(), r.GetAddress(), link)
		if r.GetWhy() != "" {
			line += "  last error: " + r.GetWhy()
		}
		fmt.Fprintln(w, line)
	}
}

const volumeExpandLong = `Grow the volume to --size on every replica, online: IO goes on. NBD clients
see the new size when they connect again (NBD has no way to tell a connected
client); iSCSI initiators get a CAPACITY DATA HAS CHANGED unit attention on
their next command and read the new size with READ CAPACITY.

A smaller --size is refused unless --allow-shrink is given. A shrink needs the
volume detached (a frontend would see its device shrink under it: stop or
unmount its users first; --detach detaches the volume for the shrink and
attaches it again after), and is refused, changing nothing, when any layer
(the head or a snapshot) holds data at or beyond the new end: only space
nothing uses can go. Blocks beyond the end that hold only zeros are dropped.`

func newVolumeExpandCmd(cf *clientFlags) *cobra.Command {
	var size sizeFlag
	var allowShrink, detach bool
	cmd := &cobra.Command{Use: "expand --size SIZE", Short: "Grow the volume online (shrink only detached, with --allow-shrink)", Args: cobra.NoArgs,
		Long:    volumeExpandLong,
		Example: "  drover volume expand --size 20GiB\n  drover volume expand --size 1GiB --allow-shrink --detach",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error {
				if !detach {
					_, err := c.Expand(ctx, &controlpb.ExpandRequest{SizeBytes: size.bytes, AllowShrink: allowShrink})
					return err
				}
				if _, err := c.Detach(ctx, &controlpb.Empty{}); err != nil {
					return fmt.Errorf("detach: %w", err)
				}
				_, err := c.Expand(ctx, &controlpb.ExpandRequest{SizeBytes: size.bytes, AllowShrink: allowShrink})
				if _, aerr := c.Attach(ctx, &controlpb.Empty{}); err == nil && aerr != nil {
					err = fmt.Errorf("attach after resize: %w", aerr)
				}
				return err
			})
		}}
	cmd.Flags().Var(&size, "size", "new volume size (e.g. 2GiB; a multiple of 4096)")
	cmd.Flags().BoolVar(&allowShrink, "allow-shrink", false, "allow a smaller size (the volume must be detached; refused if data lies beyond the new end)")
	cmd.Flags().BoolVar(&detach, "detach", false, "detach the volume for the resize and attach it again after")
	_ = cmd.MarkFlagRequired("size")
	return cmd
}

// ioChunkBytes is how much one debug read or write call moves.
const ioChunkBytes = 1 << 20

func newVolumeWriteCmd(cf *clientFlags) *cobra.Command {
	var off sizeFlag
	var file string
	var fua, noFlush bool
	cmd := &cobra.Command{Use: "write --offset OFF --file F", Short: "Write a file's bytes into the volume (debug/test tool)",
		Long: `Write the bytes of a file (or standard input with --file -) into the volume at
--offset, in 1 MiB requests through the engine, then flush (unless
--no-flush). Offset and length must be multiples of 512.`, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in, err := openInput(cmd, file)
			if err != nil {
				return err
			}
			defer in.Close()
			return cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error {
				return writeStream(ctx, c, in, off.bytes, fua, !noFlush)
			})
		}}
	cmd.Flags().Var(&off, "offset", "volume byte offset (e.g. 0, 1MiB)")
	cmd.Flags().StringVar(&file, "file", "", "file to write, - for standard input")
	cmd.Flags().BoolVar(&fua, "fua", false, "make each request durable before it is acknowledged")
	cmd.Flags().BoolVar(&noFlush, "no-flush", false, "do not flush at the end")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func openInput(cmd *cobra.Command, file string) (io.ReadCloser, error) {
	if file == "-" {
		return io.NopCloser(cmd.InOrStdin()), nil
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("open input: %w", err)
	}
	return f, nil
}

func writeStream(ctx context.Context, c controlpb.ControlClient, in io.Reader, off uint64, fua, flush bool) error {
	buf := make([]byte, ioChunkBytes)
	for {
		n, err := io.ReadFull(in, buf)
		if n > 0 {
			if _, werr := c.Write(ctx, &controlpb.WriteRequest{Offset: off, Data: buf[:n], Fua: fua}); werr != nil {
				return fmt.Errorf("write [%d, +%d): %w", off, n, werr)
			}
			off += uint64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read input: %w", err)
		}
	}
	if flush {
		if _, err := c.Flush(ctx, &controlpb.Empty{}); err != nil {
			return fmt.Errorf("flush: %w", err)
		}
	}
	return nil
}

func newVolumeReadCmd(cf *clientFlags) *cobra.Command {
	var off, length sizeFlag
	var file string
	var sum bool
	cmd := &cobra.Command{Use: "read --offset OFF --length LEN", Short: "Read volume bytes to a file or stdout (debug/test tool)",
		Long: `Read --length bytes at --offset through the engine, in 1 MiB requests, and write
them to --file (default standard output), or print only their SHA-256 with
--sha256.`, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out io.Writer = cmd.OutOrStdout()
			h := sha256.New()
			if sum {
				out = h
			} else if file != "" && file != "-" {
				f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600) // the volume's data: owner only
				if err != nil {
					return fmt.Errorf("create output: %w", err)
				}
				defer f.Close()
				out = f
			}
			err := cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error {
				return readStream(ctx, c, out, off.bytes, length.bytes)
			})
			if err == nil && sum {
				fmt.Fprintln(cmd.OutOrStdout(), hex.EncodeToString(h.Sum(nil)))
			}
			return err
		}}
	cmd.Flags().Var(&off, "offset", "volume byte offset")
	cmd.Flags().Var(&length, "length", "bytes to read")
	cmd.Flags().StringVar(&file, "file", "", "output file (default standard output)")
	cmd.Flags().BoolVar(&sum, "sha256", false, "print the SHA-256 of the bytes instead of the bytes")
	_ = cmd.MarkFlagRequired("length")
	return cmd
}

func readStream(ctx context.Context, c controlpb.ControlClient, out io.Writer, off, length uint64) error {
	for length > 0 {
		n := min(length, ioChunkBytes)
		rep, err := c.Read(ctx, &controlpb.ReadRequest{Offset: off, Length: n})
		if err != nil {
			return fmt.Errorf("read [%d, +%d): %w", off, n, err)
		}
		if _, err := out.Write(rep.GetData()); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		off, length = off+n, length-n
	}
	return nil
}

func newVolumeFlushCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{Use: "flush", Short: "Make every acknowledged write durable on every replica", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error {
				_, err := c.Flush(ctx, &controlpb.Empty{})
				return err
			})
		}}
}

const volumeQoSLong = `Show or set the volume's IO limits, enforced at its frontends (NBD,
iSCSI) in the engine process: at most --max-iops reads, writes, trims and
write-zeroes a second, and at most --max-bandwidth bytes read and written a
second (0 removes a limit). The limits change at once, for IOs already
waiting too, with no restart and no reconnect. Without flags it prints the
limits and what the limiter did under them: IOs and bytes admitted, how many
waited, and the most admitted in one 100 ms refill period.`

func newVolumeQoSCmd(cf *clientFlags) *cobra.Command {
	var iops uint64
	var bw sizeFlag
	cmd := &cobra.Command{Use: "qos [--max-iops N] [--max-bandwidth SIZE]", Short: "Show or set the volume's IOPS and bandwidth limits (QoS)",
		Long: volumeQoSLong, Args: cobra.NoArgs,
		Example: "  drover volume qos --max-iops 500 --max-bandwidth 50MiB\n  drover volume qos --max-iops 0 --max-bandwidth 0\n  drover volume qos",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error {
				var st *controlpb.QoSResponse
				var err error
				if cmd.Flags().Changed("max-iops") || cmd.Flags().Changed("max-bandwidth") {
					cur, gerr := c.GetQoS(ctx, &controlpb.Empty{})
					if gerr != nil {
						return gerr
					}
					req := &controlpb.QoSRequest{MaxIops: cur.GetMaxIops(), MaxBandwidthBytes: cur.GetMaxBandwidthBytes()}
					if cmd.Flags().Changed("max-iops") {
						req.MaxIops = iops
					}
					if cmd.Flags().Changed("max-bandwidth") {
						req.MaxBandwidthBytes = bw.bytes
					}
					st, err = c.SetQoS(ctx, req)
				} else {
					st, err = c.GetQoS(ctx, &controlpb.Empty{})
				}
				if err != nil {
					return err
				}
				printQoS(cmd.OutOrStdout(), st)
				return nil
			})
		}}
	cmd.Flags().Uint64Var(&iops, "max-iops", 0, "IOs a second (0: no limit)")
	cmd.Flags().Var(&bw, "max-bandwidth", "bytes a second, e.g. 50MiB (0: no limit)")
	return cmd
}

func printQoS(w io.Writer, st *controlpb.QoSResponse) {
	limit := func(n uint64, unit string) string {
		if n == 0 {
			return "none"
		}
		return fmt.Sprintf("%d %s", n, unit)
	}
	fmt.Fprintf(w, "max IOPS:       %s\n", limit(st.GetMaxIops(), "IOs/s"))
	fmt.Fprintf(w, "max bandwidth:  %s\n", limit(st.GetMaxBandwidthBytes(), "bytes/s"))
	fmt.Fprintf(w, "since set:      %d IOs (%d bytes) admitted, %d waited, %d refills; at most %d IOs and %d bytes in one refill (buckets %d IOs, %d bytes)\n",
		st.GetAdmitted(), st.GetAdmittedBytes(), st.GetDelayed(), st.GetRefills(), st.GetMaxIosPerRefill(), st.GetMaxBytesPerRefill(),
		st.GetIosPerRefill(), st.GetBytesPerRefill())
}
