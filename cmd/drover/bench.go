package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/cmd/drover/internal/bench"
)

func init() { subcommands = append(subcommands, newBenchCmd) }

const benchLong = `Measure Drover's data path with fio against reference servers, in one run on
one directory: fio on the raw file (libaio with O_DIRECT where the filesystem
allows it, else psync), nbdkit's file plugin (the reference of every ratio),
qemu-nbd, Drover's NBD server over a plain file (the frontend alone), and
Drover volumes with 1 and 3 replicas on filestore in this process, served over
NBD on a unix socket. drover-1r-tcp and drover-3r-tcp run their replicas as
separate processes (this binary, hidden "bench replica" subcommand) reached
over TCP loopback; drover-3r-tls is drover-3r-tcp with mutual TLS on every
replica link (a CA and certificates made for the run). The cpu column is the CPU time (user+system) the serving
processes spent per IO: unlike IOPS it stays meaningful on a busy machine.

Workloads: 4 KiB random read and write at queue depth 1 and 32, 1 MiB
sequential write. The table shows IOPS, MB/s, p50/p99 latency (submission to completion) and
each one's ratio to nbdkit-file, then the performance goals and whether they
are met. Needs fio; targets whose server (nbdkit, qemu-nbd) is missing are
skipped.

The directory defaults to a temporary one under the current directory (so its
filesystem is measured); --tmpfs uses /dev/shm, the software's ceiling.`

const benchExample = `  drover bench --tmpfs
  drover bench --dir /var/lib/drover --runtime 10s --json bench.json
  drover bench --tmpfs --targets drover-1r --workloads randwrite-4k-qd32 --runtime 20s --cpuprofile cpu.pprof`

type benchOpts struct {
	dir, jsonPath, cpuProfile string
	tmpfs                     bool
	runtime                   time.Duration
	size                      sizeFlag
	targets, workloads        []string
}

func newBenchCmd() *cobra.Command {
	o := benchOpts{size: sizeFlag{bytes: 256 << 20}}
	cmd := &cobra.Command{Use: "bench", Short: "Benchmark Drover over NBD against nbdkit, qemu-nbd and the raw file (fio)",
		Long: benchLong, Example: benchExample, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBench(cmd, o) }}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", "", "directory to benchmark on (default: a temporary directory under the current one)")
	f.BoolVar(&o.tmpfs, "tmpfs", false, "benchmark on /dev/shm (tmpfs) instead of --dir")
	f.DurationVar(&o.runtime, "runtime", 5*time.Second, "fio runtime per cell")
	f.Var(&o.size, "size", "backing file and volume size (default 256MiB)")
	f.StringVar(&o.jsonPath, "json", "", "also write the report as JSON to this file")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (the in-process Drover targets) to this file")
	f.StringSliceVar(&o.targets, "targets", nil, "targets to measure (default all: "+strings.Join(bench.AllTargets, ",")+")")
	f.StringSliceVar(&o.workloads, "workloads", nil, "workloads to run (default all: "+workloadNames()+")")
	cmd.AddCommand(newBenchReplicaCmd(), newBenchRebuildCmd())
	return cmd
}

func workloadNames() string {
	var names []string
	for _, w := range bench.DefaultWorkloads {
		names = append(names, w.Name)
	}
	return strings.Join(names, ",")
}

func runBench(cmd *cobra.Command, o benchOpts) error {
	dir := o.dir
	switch {
	case o.tmpfs && o.dir != "":
		return fmt.Errorf("--tmpfs and --dir exclude each other")
	case o.tmpfs:
		dir = "/dev/shm"
	case dir == "":
		dir = "."
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary for replica processes: %w", err)
	}
	cfg := bench.Config{Dir: dir, SizeBytes: o.size.bytes, Runtime: o.runtime, Targets: o.targets,
		ReplicaCommand: []string{exe, "bench", "replica"}, Progress: cmd.ErrOrStderr(),
		Logger: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))}
	for _, name := range o.workloads {
		i := slices.IndexFunc(bench.DefaultWorkloads, func(w bench.Workload) bool { return w.Name == name })
		if i < 0 {
			return fmt.Errorf("unknown workload %q (known: %s)", name, workloadNames())
		}
		cfg.Workloads = append(cfg.Workloads, bench.DefaultWorkloads[i])
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := bench.Run(cmd.Context(), cfg)
	if err != nil {
		return err
	}
	fmt.Fprint(cmd.OutOrStdout(), rep.Table())
	if o.jsonPath != "" {
		out, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.jsonPath, append(out, '\n'), 0o644); err != nil {
			return fmt.Errorf("write --json: %w", err)
		}
	}
	return nil
}

// newBenchReplicaCmd is the replica process of the drover-3r-tcp target;
// drover bench starts it, and it stops when its stdin closes.
func newBenchReplicaCmd() *cobra.Command {
	return &cobra.Command{Use: "replica", Hidden: true, DisableFlagParsing: true,
		Short: "Serve one benchmark replica over TCP loopback (started by drover bench)",
		RunE: func(cmd *cobra.Command, args []string) error {
			return bench.ServeReplica(cmd.Context(), args, os.Stdin, cmd.OutOrStdout())
		}}
}
