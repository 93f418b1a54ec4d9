package iscsi_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/frontends/iscsi"
	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/replicadir"
	"github.com/drover-io/drover/transports/replicarun"
)

// droverVolume runs a Drover volume of n replicas on filestore directories
// under a temporary directory, in this process on in-process links (as
// drover dev does), with every block written once so reads hit data.
func droverVolume(t *testing.T, n int, sizeBytes uint64) device.Device {
	t.Helper()
	base := t.TempDir()
	runners := map[string]*replicarun.Runner{}
	cfg := enginerun.Config{Volume: "iscsi-test",
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("r%d", i)
		dir := filepath.Join(base, id)
		rd, err := replicadir.Open(replicadir.Config{Dir: dir, ID: proto.ReplicaID(id), CreateSizeBytes: sizeBytes})
		if err != nil {
			t.Fatal(err)
		}
		r := rd.Runner
		t.Cleanup(func() { rd.Close() })
		runners[id] = r
		cfg.Replicas = append(cfg.Replicas, enginerun.Replica{ID: proto.ReplicaID(id), Addr: id})
	}
	cfg.Dial = replicarun.LocalDialer(runners)
	d, err := enginerun.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: the engine closes before its replicas.
	t.Cleanup(func() { d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitServing(ctx); err != nil {
		t.Fatalf("volume never served: %v", err)
	}
	vol := enginerun.NewVolume(d)
	if err := fillDevice(ctx, vol); err != nil {
		t.Fatalf("fill volume: %v", err)
	}
	return vol
}

// fillDevice writes every block of dev once (1 MiB writes, 4 at a time)
// and flushes.
func fillDevice(ctx context.Context, dev device.Device) error {
	return device.Fill(ctx, dev, 1<<20, 4, device.Pattern)
}

// perfResult is what one iscsi-perf run printed.
type perfResult struct {
	secondIOPS []int // "iops current" of each progress line
	maxGap     int   // most seconds between two progress lines
	avgIOPS    int   // the last "iops average"
	out        string
}

// iscsi-perf prints a progress line from a completion callback once a
// second has passed since the last one, stamped with the runtime left;
// a stall shows as a jump in that countdown (there are no lines while no
// request completes).
var perfLineRE = regexp.MustCompile(`(\d+):(\d\d):(\d\d) - lba \d+, iops current (\d+) \([^)]*\), iops average (\d+)`)

// maxPerfGap is the longest jump in iscsi-perf's countdown that is not a
// stall: lines come at least a second apart and drift, so 2 s shows up
// without any pause; 3 s means more than a second without a completion.
const maxPerfGap = 2

// runPerf runs iscsi-perf for d at queue depth 32 with 4 KiB requests on
// a 512-byte LUN (-b 8), random when random is set. iscsi-perf runs until
// -t seconds have passed, then waits for its outstanding requests: a
// target that stalls keeps it from exiting, so the run is killed (and
// fails) 30 s after it should have ended.
func runPerf(url string, d time.Duration, random bool) (perfResult, error) {
	secs := max(1, int(d/time.Second))
	args := []string{"-m", "32", "-b", "8", "-t", strconv.Itoa(secs)}
	if random {
		args = append(args, "-r")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "iscsi-perf", append(args, url)...)
	outb, err := cmd.CombinedOutput()
	res := perfResult{out: string(outb)}
	left := secs
	for _, m := range perfLineRE.FindAllStringSubmatch(res.out, -1) {
		h, _ := strconv.Atoi(m[1])
		mi, _ := strconv.Atoi(m[2])
		sec, _ := strconv.Atoi(m[3])
		cur, _ := strconv.Atoi(m[4])
		avg, _ := strconv.Atoi(m[5])
		now := h*3600 + mi*60 + sec
		res.maxGap = max(res.maxGap, left-now)
		left = now
		res.secondIOPS = append(res.secondIOPS, cur)
		res.avgIOPS = avg
	}
	res.maxGap = max(res.maxGap, left) // the last line to the end
	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("iscsi-perf %v did not finish within %d s of its runtime (stalled)", args, 30)
	case err != nil:
		return res, fmt.Errorf("iscsi-perf %v: %w", args, err)
	case !strings.Contains(res.out, "finished."):
		return res, fmt.Errorf("iscsi-perf %v did not print finished.", args)
	case res.maxGap > maxPerfGap:
		return res, fmt.Errorf("iscsi-perf %v: %d s between two progress lines (a stall)", args, res.maxGap)
	}
	return res, nil
}

// soakDuration is DROVER_ISCSI_SOAK (a Go duration; make iscsi-soak sets
// 60s), 5 s by default.
func soakDuration(t *testing.T) time.Duration {
	s := os.Getenv("DROVER_ISCSI_SOAK")
	if s == "" {
		return 5 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second {
		t.Fatalf("DROVER_ISCSI_SOAK=%q: want a duration of at least 1s", s)
	}
	return d
}

// TestSoakThreeReplicas: two iscsi-perf sessions at queue depth 32 (one
// sequential, one random, 4 KiB reads) on a 3-replica Drover volume for
// DROVER_ISCSI_SOAK (5 s in make test, 60 s in make iscsi-soak), while a
// third goroutine writes and flushes through the same volume. No session
// goes more than a second or so without a completion, and both finish.
func TestSoakThreeReplicas(t *testing.T) {
	needTool(t, "iscsi-perf")
	d := soakDuration(t)
	vol := droverVolume(t, 3, 64<<20)
	addr := startServer(t, iscsi.TargetConfig{Volume: "soak", LUNs: []device.Device{vol}})
	url := fmt.Sprintf("iscsi://%s/%s/0", addr, iscsi.IQN("soak"))

	// Writes through the engine beside the reads, so the reads share the
	// replicas with a write stream (iscsi-perf only reads).
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var writes int
	var werr error
	wg.Go(func() {
		buf := make([]byte, 64<<10)
		for i := 0; ctx.Err() == nil; i++ {
			off := uint64(i*len(buf)) % vol.SizeBytes()
			if err := vol.WriteAt(ctx, buf, off, i%16 == 0); err != nil {
				if ctx.Err() == nil {
					werr = err
				}
				return
			}
			writes++
		}
	})
	var results [2]perfResult
	var errs [2]error
	var pw sync.WaitGroup
	for i, random := range []bool{false, true} {
		pw.Go(func() { results[i], errs[i] = runPerf(url, d, random) })
	}
	pw.Wait()
	stop()
	wg.Wait()
	for i, name := range []string{"sequential", "random"} {
		if errs[i] != nil {
			t.Errorf("%s: %v\n%s", name, errs[i], results[i].out)
			continue
		}
		t.Logf("%s: %d progress lines in %v, iops average %d, slowest interval %d iops, longest gap %d s", name,
			len(results[i].secondIOPS), d, results[i].avgIOPS, minOf(results[i].secondIOPS), results[i].maxGap)
	}
	if werr != nil {
		t.Errorf("writer: %v", werr)
	}
	t.Logf("writer: %d 64 KiB writes beside the reads", writes)
}

func minOf(xs []int) int {
	m := 0
	for i, x := range xs {
		if i == 0 || x < m {
			m = x
		}
	}
	return m
}

// TestPerfCompare runs iscsi-perf (4 KiB reads at queue depth 32,
// sequential and random) against Drover with 1 and 3 replicas, Drover's
// target over a plain file (the frontend alone) and tgtd serving a file of
// the same size, in one run, and prints IOPS and
// each one's ratio to tgtd. It runs only with DROVER_ISCSI_PERF=1 (make
// iscsi-perf-compare), as root, with tgt installed; DROVER_ISCSI_PERF_TIME
// sets each run's length (default 10s).
func TestPerfCompare(t *testing.T) {
	if os.Getenv("DROVER_ISCSI_PERF") != "1" {
		t.Skip("set DROVER_ISCSI_PERF=1 (make iscsi-perf-compare)")
	}
	needTool(t, "iscsi-perf")
	needTool(t, "tgtd")
	d := 10 * time.Second
	if s := os.Getenv("DROVER_ISCSI_PERF_TIME"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			t.Fatal(err)
		}
	}
	// As the drover binary runs (cmd/drover sets GOGC=400 unless set).
	if os.Getenv("GOGC") == "" {
		defer debug.SetGCPercent(debug.SetGCPercent(400))
	}
	const size = 64 << 20
	type target struct{ name, url string }
	tgtURL, tgtFile := startTgtdFile(t)
	tgtDev, err := device.OpenFile(tgtFile, device.FileConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := fillDevice(context.Background(), tgtDev); err != nil {
		t.Fatal(err)
	}
	tgtDev.Close()
	targets := []target{{"tgtd", tgtURL}}
	// Drover's iSCSI target over a plain file: the frontend alone.
	fileDev, err := device.OpenFile(filepath.Join(t.TempDir(), "lun"), device.FileConfig{SizeBytes: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fileDev.Close() })
	if err := fillDevice(context.Background(), fileDev); err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, iscsi.TargetConfig{Volume: "drover-file", LUNs: []device.Device{fileDev}})
	targets = append(targets, target{"drover-file", fmt.Sprintf("iscsi://%s/%s/0", addr, iscsi.IQN("drover-file"))})
	for _, n := range []int{1, 3} {
		name := fmt.Sprintf("drover-%dr", n)
		addr := startServer(t, iscsi.TargetConfig{Volume: name, LUNs: []device.Device{droverVolume(t, n, size)}})
		targets = append(targets, target{name, fmt.Sprintf("iscsi://%s/%s/0", addr, iscsi.IQN(name))})
	}
	iops := map[string]map[bool]int{}
	for _, random := range []bool{false, true} {
		for _, tg := range targets {
			res, err := runPerf(tg.url, d, random)
			if err != nil {
				t.Fatalf("%s: %v\n%s", tg.name, err, res.out)
			}
			if iops[tg.name] == nil {
				iops[tg.name] = map[bool]int{}
			}
			iops[tg.name][random] = res.avgIOPS
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "iscsi-perf -m 32 -b 8 (4 KiB reads, queue depth 32), %v per cell, 64 MiB LUN\n", d)
	fmt.Fprintf(&b, "%-11s %12s %8s %12s %8s\n", "target", "seq IOPS", "vs tgtd", "rand IOPS", "vs tgtd")
	for _, tg := range targets {
		fmt.Fprintf(&b, "%-11s %12d %7.2fx %12d %7.2fx\n", tg.name,
			iops[tg.name][false], float64(iops[tg.name][false])/float64(iops["tgtd"][false]),
			iops[tg.name][true], float64(iops[tg.name][true])/float64(iops["tgtd"][true]))
	}
	goal := float64(iops["drover-1r"][true]) / float64(iops["tgtd"][true])
	fmt.Fprintf(&b, "goal drover-1r >= 1.00x tgtd (random): %.2fx, %s\n", goal, map[bool]string{true: "met", false: "NOT met"}[goal >= 1])
	t.Log("\n" + b.String())
	_, _ = io.WriteString(os.Stdout, b.String())
}
