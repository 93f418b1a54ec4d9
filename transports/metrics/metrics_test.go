package metrics

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/replicadir"
	"github.com/drover-io/drover/transports/replicarun"
)

// newVolume runs a volume on two filestore replicas over in-process
// links, as drover dev does.
func newVolume(t *testing.T) (*enginerun.Volume, map[string]*replicarun.Runner, []string) {
	t.Helper()
	runners := map[string]*replicarun.Runner{}
	cfg := enginerun.Config{Volume: "vol", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var dirs []string
	for i := 1; i <= 2; i++ {
		id := fmt.Sprintf("r%d", i)
		dir := t.TempDir()
		rd, err := replicadir.Open(replicadir.Config{Dir: dir, ID: proto.ReplicaID(id), CreateSizeBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		r := rd.Runner
		t.Cleanup(func() { _ = rd.Close() })
		runners[id] = r
		dirs = append(dirs, dir)
		cfg.Replicas = append(cfg.Replicas, enginerun.Replica{ID: proto.ReplicaID(id), Addr: id})
	}
	cfg.Dial = replicarun.LocalDialer(runners)
	d, err := enginerun.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	return enginerun.NewVolume(d), runners, dirs
}

// TestVolumeMetrics scrapes a serving volume after some IO: the output
// passes client_golang's linter (promtool's rules), and the values are
// what the test did.
func TestVolumeMetrics(t *testing.T) {
	v, runners, dirs := newVolume(t)
	ctx := context.Background()
	for i := range 5 {
		if err := v.WriteAt(ctx, make([]byte, 4096), uint64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	fe := &Frontends{}
	fe.Add("nbd", func() int { return 2 })
	jobs := &Jobs{}
	jobs.Start("backup", "", time.Unix(100, 0))
	jobs.End("vol/b1", nil, time.Unix(200, 0))
	jobs.Start("restore", "vol/b1", time.Unix(300, 0))
	jobs.Progress(3, 8, 3<<20)
	c := NewVolume(v, "vol", fe, jobs)
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", err, problems)
	}
	want := `
# HELP drover_volume_robustness Volume robustness as Longhorn counts it: 0 unknown (opening), 1 healthy (every replica RW), 2 degraded (serving without every replica RW), 3 faulted (not serving: faulted or fenced).
# TYPE drover_volume_robustness gauge
drover_volume_robustness{volume="vol"} 1
# HELP drover_volume_write_ops_total Frontend write requests completed (failed ones included).
# TYPE drover_volume_write_ops_total counter
drover_volume_write_ops_total{volume="vol"} 5
# HELP drover_volume_write_bytes_total Bytes of frontend write requests completed.
# TYPE drover_volume_write_bytes_total counter
drover_volume_write_bytes_total{volume="vol"} 20480
# HELP drover_volume_actual_size_bytes Bytes of data one replica stores for the volume: every layer's (snapshots and head) data blocks.
# TYPE drover_volume_actual_size_bytes gauge
drover_volume_actual_size_bytes{volume="vol"} 20480
# HELP drover_volume_frontend_connections Host connections the volume's frontend serves now.
# TYPE drover_volume_frontend_connections gauge
drover_volume_frontend_connections{frontend="nbd",volume="vol"} 2
# HELP drover_backup_last_success_timestamp_seconds When the last job of the kind succeeded (Unix time; absent if none has since the process started).
# TYPE drover_backup_last_success_timestamp_seconds gauge
drover_backup_last_success_timestamp_seconds{kind="backup",volume="vol"} 200
# HELP drover_backup_progress_chunks Chunks the running job has done.
# TYPE drover_backup_progress_chunks gauge
drover_backup_progress_chunks{kind="restore",volume="vol"} 3
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "drover_volume_robustness", "drover_volume_write_ops_total",
		"drover_volume_write_bytes_total", "drover_volume_actual_size_bytes", "drover_volume_frontend_connections",
		"drover_backup_last_success_timestamp_seconds", "drover_backup_progress_chunks"); err != nil {
		t.Fatal(err)
	}
	if err := v.Driver().RemoveReplica(ctx, "r2"); err != nil {
		t.Fatal(err)
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(`
# HELP drover_volume_robustness Volume robustness as Longhorn counts it: 0 unknown (opening), 1 healthy (every replica RW), 2 degraded (serving without every replica RW), 3 faulted (not serving: faulted or fenced).
# TYPE drover_volume_robustness gauge
drover_volume_robustness{volume="vol"} 1
`), "drover_volume_robustness"); err != nil {
		t.Fatal(err)
	}

	rc := NewReplica(runners["r1"], dirs[0], func() int { return 1 })
	if problems, err := testutil.CollectAndLint(rc); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", err, problems)
	}
	reg, err := NewRegistry(c, rc)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "drover_replica_size_bytes", "drover_replica_actual_size_bytes"); err != nil || n != 2 {
		t.Fatalf("replica metrics: %d series, %v", n, err)
	}
	var _ prometheus.Collector = c
}

// infoCollector collects what Volume makes of one fixed Info.
type infoCollector struct {
	c    *Volume
	info enginerun.Info
}

func (x infoCollector) Describe(ch chan<- *prometheus.Desc) { x.c.Describe(ch) }
func (x infoCollector) Collect(ch chan<- prometheus.Metric) { x.c.collectInfo(ch, x.info) }

// TestRebuildMetrics: a rebuild in progress is exported as its target's
// gauges in bytes and bytes per second (ticks converted with the tick
// length), which pass the linter. (The browser test watches the same
// numbers, enginerun.Stats, move during a real rebuild.)
func TestRebuildMetrics(t *testing.T) {
	info := enginerun.Info{Tick: 10 * time.Millisecond, VolumeInfo: engine.VolumeInfo{Volume: "vol", Phase: engine.PhaseServing,
		Replicas: []engine.ReplicaInfo{{ID: "r1", Mode: engine.ModeRW}, {ID: "r2", Mode: engine.ModeWO}},
		Rebuild: &engine.RebuildProgress{Target: "r2", Source: "r1", Stage: "copy", BlocksTotal: 512, BlocksDone: 128,
			BytesCopied: 100 * 4096, ElapsedTicks: 100}}}
	c := infoCollector{NewVolume(nil, "vol", nil, nil), info}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", err, problems)
	}
	want := `
# HELP drover_replica_rebuild_done_bytes Bytes of the rebuild in progress into the replica compared and brought up to date (every layer counts the volume's size once).
# TYPE drover_replica_rebuild_done_bytes gauge
drover_replica_rebuild_done_bytes{replica="r2",volume="vol"} 524288
# HELP drover_replica_rebuild_total_bytes Bytes the rebuild in progress into the replica compares in all.
# TYPE drover_replica_rebuild_total_bytes gauge
drover_replica_rebuild_total_bytes{replica="r2",volume="vol"} 2.097152e+06
# HELP drover_replica_rebuild_copied_bytes Bytes the rebuild in progress actually copied to the replica (blocks it lacked or held with another checksum).
# TYPE drover_replica_rebuild_copied_bytes gauge
drover_replica_rebuild_copied_bytes{replica="r2",volume="vol"} 409600
# HELP drover_replica_rebuild_rate_bytes_per_second Average pace of the rebuild in progress into the replica.
# TYPE drover_replica_rebuild_rate_bytes_per_second gauge
drover_replica_rebuild_rate_bytes_per_second{replica="r2",volume="vol"} 524288
# HELP drover_volume_robustness Volume robustness as Longhorn counts it: 0 unknown (opening), 1 healthy (every replica RW), 2 degraded (serving without every replica RW), 3 faulted (not serving: faulted or fenced).
# TYPE drover_volume_robustness gauge
drover_volume_robustness{volume="vol"} 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "drover_replica_rebuild_done_bytes", "drover_replica_rebuild_total_bytes",
		"drover_replica_rebuild_copied_bytes", "drover_replica_rebuild_rate_bytes_per_second", "drover_volume_robustness"); err != nil {
		t.Fatal(err)
	}
}
