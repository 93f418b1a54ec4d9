package bench

import (
	"fmt"
	"strings"
	"text/tabwriter"
)

// Goal is one of the performance goals, checked on a report.
type Goal struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	// Want is the bound; AtMost says whether Value must be ≤ Want (else ≥).
	Want   float64 `json:"want"`
	AtMost bool    `json:"at_most"`
	Met    bool    `json:"met"`
}

func (r *Report) ratios() {
	ref := map[string]Result{}
	for _, x := range r.Results {
		if x.Target == r.Reference {
			ref[x.Workload] = x
		}
	}
	for i := range r.Results {
		x := &r.Results[i]
		b, ok := ref[x.Workload]
		if !ok {
			continue
		}
		x.IOPSRatio, x.MBpsRatio = ratio(x.IOPS, b.IOPS), ratio(x.MBps, b.MBps)
		x.P50Ratio, x.P99Ratio = ratio(x.P50us, b.P50us), ratio(x.P99us, b.P99us)
	}
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

func (r *Report) find(target, workload string) (Result, bool) {
	for _, x := range r.Results {
		if x.Target == target && x.Workload == workload {
			return x, true
		}
	}
	return Result{}, false
}

// checkGoals evaluates the goals whose cells were measured: Drover with
// one replica at ≥1.0× the reference's IOPS at qd32 and ≤1.2× its p50
// latency at qd1; three replicas at ≥0.5× one replica's random-write
// IOPS and ≥1.0× its random-read IOPS; three replicas over mutual TLS at
// ≥0.85× the IOPS and ≤1.2× the CPU per IO of plain TCP at qd32;
// three replicas encrypted at rest at ≥0.8× the unencrypted IOPS at qd32.
func (r *Report) checkGoals() []Goal {
	var goals []Goal
	add := func(name string, value, want float64, atMost bool) {
		met := value >= want
		if atMost {
			met = value <= want
		}
		goals = append(goals, Goal{Name: name, Value: value, Want: want, AtMost: atMost, Met: met})
	}
	for _, w := range r.Workloads {
		one, ok1 := r.find(TargetDrover1, w.Name)
		if !strings.HasPrefix(w.RW, "rand") || w.BlockBytes != 4096 || !ok1 {
			continue
		}
		if ref, ok := r.find(r.Reference, w.Name); ok {
			switch w.QueueDepth {
			case 32:
				add(fmt.Sprintf("%s %s IOPS vs %s", TargetDrover1, w.Name, r.Reference), ratio(one.IOPS, ref.IOPS), 1.0, false)
			case 1:
				add(fmt.Sprintf("%s %s p50 vs %s", TargetDrover1, w.Name, r.Reference), ratio(one.P50us, ref.P50us), 1.2, true)
			}
		}
		for _, pair := range [][2]string{{TargetDrover3, TargetDrover1}, {TargetDrover3TCP, TargetDrover1TCP}} {
			three, base := pair[0], pair[1]
			x, ok := r.find(three, w.Name)
			b, okb := r.find(base, w.Name)
			if !okb {
				b, base = one, TargetDrover1
			}
			if !ok {
				continue
			}
			want := 0.5
			if w.RW == "randread" {
				want = 1.0
			}
			add(fmt.Sprintf("%s %s IOPS vs %s", three, w.Name, base), ratio(x.IOPS, b.IOPS), want, false)
		}
	}
	for _, w := range r.Workloads {
		if !strings.HasPrefix(w.RW, "rand") || w.BlockBytes != 4096 {
			continue
		}
		// Encryption at rest: at most 20% fewer IOPS than unencrypted at
		// queue depth 32.
		if x, ok := r.find(TargetDrover3Crypt, w.Name); ok && w.QueueDepth == 32 {
			if b, ok := r.find(TargetDrover3, w.Name); ok {
				add(fmt.Sprintf("%s %s IOPS vs %s", TargetDrover3Crypt, w.Name, TargetDrover3), ratio(x.IOPS, b.IOPS), 0.8, false)
			}
		}
		// Mutual TLS on the replica links: at most 15% fewer IOPS and
		// 1.2× the CPU per IO of plain TCP at queue depth 32.
		if x, ok := r.find(TargetDrover3TLS, w.Name); ok && w.QueueDepth == 32 {
			if b, ok := r.find(TargetDrover3TCP, w.Name); ok {
				add(fmt.Sprintf("%s %s IOPS vs %s", TargetDrover3TLS, w.Name, TargetDrover3TCP), ratio(x.IOPS, b.IOPS), 0.85, false)
				if x.ServerCPUus > 0 && b.ServerCPUus > 0 {
					add(fmt.Sprintf("%s %s cpu/IO vs %s", TargetDrover3TLS, w.Name, TargetDrover3TCP), ratio(x.ServerCPUus, b.ServerCPUus), 1.2, true)
				}
			}
		}
	}
	return goals
}

// Table renders the report for a terminal: one row per target and
// workload, then the goals.
func (r *Report) Table() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "bench: %s (%s), %d MiB, %s per cell, %d CPUs; raw-file: %s; ratios vs %s\n",
		r.Dir, r.FSType, r.SizeBytes>>20, r.Runtime, r.CPUs, r.RawEngine, r.Reference)
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\ttarget\tIOPS\tMB/s\tp50 µs\tp99 µs\tcpu µs/IO\tIOPS×\tMB/s×\tp50×\tp99×\t")
	for _, w := range r.Workloads {
		for _, x := range r.Results {
			if x.Workload == w.Name {
				fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.1f\t%.1f\t%.1f\t%s\t%s\t%s\t%s\t%s\t\n",
					x.Workload, x.Target, x.IOPS, x.MBps, x.P50us, x.P99us, cpuPerIO(x.ServerCPUus),
					times(x.IOPSRatio), times(x.MBpsRatio), times(x.P50Ratio), times(x.P99Ratio))
			}
		}
	}
	tw.Flush()
	if len(r.Goals) > 0 {
		sb.WriteString("goals:\n")
		for _, g := range r.Goals {
			op, verdict := "≥", "met"
			if g.AtMost {
				op = "≤"
			}
			if !g.Met {
				verdict = "MISSED"
			}
			fmt.Fprintf(&sb, "  %-52s %5.2f× (want %s %g×) %s\n", g.Name, g.Value, op, g.Want, verdict)
		}
	}
	return sb.String()
}

func cpuPerIO(us float64) string {
	if us == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", us)
}

func times(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", x)
}
