package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/sim"
)

func init() { subcommands = append(subcommands, newSimCmd) }

func newSimCmd() *cobra.Command {
	var (
		seed     uint64
		seeds    string
		profile  string
		ops      int
		jobs     int
		traceDir string
		verbose  bool
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run the deterministic simulator: the real core under injected faults, every history checked",
		Long: `sim runs Drover's replication core (engine and replicas, the same code as in
production) in a discrete-event simulator: a virtual clock, simulated disks
and network, one seeded PRNG. The same seed always replays the same run.

Faults come from a profile: ` + strings.Join(sim.Profiles, ", ") + `.
"swarm" (the default) draws every fault knob from the seed, so seeds
explore different fault mixes. After the fault phase everything heals and
the volume must converge. Checkers: per-block linearizability (porcupine;
a failure writes its HTML visualization to --trace-dir), durability of
flushed writes across crashes, replica convergence, liveness, and the
integrity of every block a client reads.

Examples:
  drover sim --seed 42
  drover sim --seed 42 --faults crash --ops 5000
  drover sim --seeds 1..1000 -j 2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			base := sim.Options{Profile: profile, Ops: ops, TraceDir: traceDir}
			if seeds == "" {
				return simOne(cmd, seed, base, verbose)
			}
			from, to, err := parseSeedRange(seeds)
			if err != nil {
				return err
			}
			return simMany(cmd, from, to, jobs, base)
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&seed, "seed", 1, "seed of the run")
	f.StringVar(&seeds, "seeds", "", "run a range of seeds, A..B (inclusive)")
	f.StringVar(&profile, "faults", "swarm", "fault profile: "+strings.Join(sim.Profiles, ", "))
	f.IntVar(&ops, "ops", 2000, "client operations per run")
	f.IntVarP(&jobs, "jobs", "j", runtime.GOMAXPROCS(0), "runs in parallel (each run is single-threaded)")
	f.StringVar(&traceDir, "trace-dir", "sim-failures", "where failed linearizability checks write their visualization")
	f.BoolVarP(&verbose, "verbose", "v", false, "print the fault knobs and counters of the run")
	return cmd
}

func parseSeedRange(s string) (uint64, uint64, error) {
	a, b, ok := strings.Cut(s, "..")
	if !ok {
		return 0, 0, fmt.Errorf("--seeds %q: want A..B", s)
	}
	from, err1 := strconv.ParseUint(a, 10, 64)
	to, err2 := strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil || to < from {
		return 0, 0, fmt.Errorf("--seeds %q: want A..B with A <= B", s)
	}
	return from, to, nil
}

func simOne(cmd *cobra.Command, seed uint64, base sim.Options, verbose bool) error {
	out := cmd.OutOrStdout()
	base.Seed = seed
	start := time.Now()
	r := sim.Run(base)
	wall := time.Since(start)
	fmt.Fprintln(out, r.Describe())
	if verbose {
		fmt.Fprintf(out, "knobs: %s\n", r.Knobs)
	}
	fmt.Fprintf(out, "%.0f block ops/s, %.1f virtual seconds per real second (%s wall)\n",
		float64(r.BlockOps)/wall.Seconds(), float64(r.VirtualUs)/1e6/wall.Seconds(), wall.Round(time.Millisecond))
	if r.OK() {
		return nil
	}
	for _, f := range r.Failures {
		fmt.Fprintf(out, "  %s\n", f)
	}
	if r.VisualPath != "" {
		fmt.Fprintf(out, "  linearizability visualization: %s\n", r.VisualPath)
	}
	return fmt.Errorf("seed %d failed", seed)
}

func simMany(cmd *cobra.Command, from, to uint64, jobs int, base sim.Options) error {
	out := cmd.OutOrStdout()
	start := time.Now()
	total := to - from + 1
	var done, blockOps uint64
	var failed []*sim.Result
	sim.RunSeeds(from, to+1, jobs, base, func(r *sim.Result) {
		done++
		blockOps += r.BlockOps
		if !r.OK() {
			failed = append(failed, r)
			// Named at once: a long campaign stopped early still tells
			// which seeds to look at.
			fmt.Fprintf(os.Stderr, "\rseed %d failed: %s\n", r.Seed, r.Failures[0])
		}
		if done%50 == 0 || done == total {
			fmt.Fprintf(os.Stderr, "\r%d/%d seeds, %d failed", done, total, len(failed))
		}
	})
	fmt.Fprintln(os.Stderr)
	wall := time.Since(start)
	fmt.Fprintf(out, "%d seeds in %s: %d failed; %.0f block ops/s in all (%d jobs)\n",
		total, wall.Round(time.Millisecond), len(failed), float64(blockOps)/wall.Seconds(), jobs)
	for _, r := range failed {
		fmt.Fprintf(out, "FAIL %s\n  %s\n  reproduce: drover sim --seed %d --faults %s --ops %d\n",
			r.Describe(), strings.Join(r.Failures, "\n  "), r.Seed, r.Profile, base.Ops)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d seeds failed", len(failed), total)
	}
	return nil
}
