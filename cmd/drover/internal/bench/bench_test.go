package bench

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/transports/testenv"
)

// replicaEnv, set in a child's environment, makes the test binary serve
// one replica (ServeReplica) instead of running tests, so the TCP target
// can be smoke-tested without the drover binary.
const replicaEnv = "DROVER_BENCH_TEST_REPLICA"

func TestMain(m *testing.M) {
	if os.Getenv(replicaEnv) == "1" {
		if err := ServeReplica(context.Background(), os.Args[1:], os.Stdin, os.Stdout); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestRunSmoke checks the plumbing, not the numbers: one short workload
// against the reference, both in-process Drover volumes and the TCP one,
// a table with ratios and goals, and JSON that round-trips.
func TestRunSmoke(t *testing.T) {
	testenv.NeedTools(t, "fio", "nbdkit")
	if testing.Short() {
		t.Skip("short mode")
	}
	t.Setenv(replicaEnv, "") // children get it through ReplicaCommand's env below
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var progress strings.Builder
	cfg := Config{
		Dir: t.TempDir(), SizeBytes: 16 << 20, Runtime: time.Second,
		Workloads:      []Workload{{"randwrite-4k-qd32", "randwrite", 4096, 32}},
		Targets:        []string{TargetRaw, TargetDrover1, TargetDrover3, TargetDrover3Crypt, TargetDrover3TCP, TargetDrover3TLS},
		ReplicaCommand: []string{"env", replicaEnv + "=1", exe},
		Progress:       &progress,
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	table := rep.Table()
	t.Log("\n" + table)
	for _, name := range []string{TargetRaw, Reference, TargetDrover1, TargetDrover3, TargetDrover3Crypt, TargetDrover3TCP, TargetDrover3TLS} {
		r, ok := rep.find(name, "randwrite-4k-qd32")
		if !ok || r.IOPS <= 0 {
			t.Errorf("%s: no result in %+v", name, rep.Results)
		}
		if ok && name != Reference && r.IOPSRatio <= 0 {
			t.Errorf("%s: no ratio vs the reference: %+v", name, r)
		}
	}
	if got := strings.Count(progress.String(), "\n"); got != 7 {
		t.Errorf("want 7 progress lines, got %d:\n%s", got, progress.String())
	}
	if len(rep.Goals) != 6 { // 1r vs reference, 3r and 3r-tcp vs 1r, 3r-crypt vs 3r, 3r-tls IOPS and CPU vs 3r-tcp
		t.Errorf("goals: %+v", rep.Goals)
	}
	out, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(out, &back); err != nil || len(back.Results) != len(rep.Results) {
		t.Fatalf("JSON round trip: %v", err)
	}
}

// TestSecurityGoalsAlone: the encryption and TLS goals are checked when
// only their targets and baselines ran (no drover-1r).
func TestSecurityGoalsAlone(t *testing.T) {
	w := Workload{"randwrite-4k-qd32", "randwrite", 4096, 32}
	r := &Report{Workloads: []Workload{w}}
	for name, iops := range map[string]float64{TargetDrover3: 100, TargetDrover3Crypt: 90, TargetDrover3TCP: 100, TargetDrover3TLS: 80} {
		r.Results = append(r.Results, Result{Target: name, Workload: w.Name, IOPS: iops, ServerCPUus: iops / 10})
	}
	goals := r.checkGoals()
	if len(goals) != 3 {
		t.Fatalf("goals: %+v", goals)
	}
	for _, g := range goals {
		if want := !strings.Contains(g.Name, TargetDrover3TLS+" randwrite-4k-qd32 IOPS"); g.Met != want {
			t.Errorf("%s: met %v, want %v (%+v)", g.Name, g.Met, want, g)
		}
	}
}
