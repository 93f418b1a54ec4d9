package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/tcp"
)

// RebuildReport is what Rebuild measured; it is also written as JSON.
type RebuildReport struct {
	Dir          string  `json:"dir"`
	FS           string  `json:"fs"`
	SizeBytes    uint64  `json:"size_bytes"`
	FioEngine    string  `json:"fio_engine"`
	FioReadMBps  float64 `json:"fio_read_mbps"`
	FioWriteMBps float64 `json:"fio_write_mbps"`
	FioCopyMBps  float64 `json:"fio_copy_mbps"`
	// FioConcurrentCopyMBps: fio reading the written file while writing
	// another of the same size, at once (each job as above): the size over
	// the slower job's run time. What a copy that reads and writes at the
	// same time, as a rebuild does, can reach on this disk; informative,
	// the goal stays against FioCopyMBps.
	FioConcurrentCopyMBps float64 `json:"fio_concurrent_copy_mbps"`
	RebuildSeconds        float64 `json:"rebuild_seconds"`
	RebuildMBps           float64 `json:"rebuild_mbps"`
	RebuildCopiedBytes    uint64  `json:"rebuild_copied_bytes"`
	RebuildRatio          float64 `json:"rebuild_ratio"`
	// RebuildCPU is the CPU time (user+system) each process spent during
	// the full rebuild, in ns per byte of the volume: the source and target
	// replica processes, and this one (the engine).
	RebuildCPUSourceNsPerByte float64 `json:"rebuild_cpu_source_ns_per_byte"`
	RebuildCPUTargetNsPerByte float64 `json:"rebuild_cpu_target_ns_per_byte"`
	RebuildCPUEngineNsPerByte float64 `json:"rebuild_cpu_engine_ns_per_byte"`
	ChangedBlocks             uint64  `json:"changed_blocks"`
	CatchUpCopiedBytes        uint64  `json:"catchup_copied_bytes"`
	CatchUpFraction           float64 `json:"catchup_fraction"`
	CatchUpSeconds            float64 `json:"catchup_seconds"`
	RebuildRatioGoalMet       bool    `json:"rebuild_ratio_goal_met"`
	CatchUpGoalMet            bool    `json:"catchup_goal_met"`
}

// Table renders the report for a terminal.
func (r *RebuildReport) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rebuild benchmark on %s (%s), %s volume\n", r.Dir, r.FS, sizeString(r.SizeBytes))
	fmt.Fprintf(&b, "  fio (%s): sequential read %.0f MB/s, write %.0f MB/s -> copy %.0f MB/s (reference)\n",
		r.FioEngine, r.FioReadMBps, r.FioWriteMBps, r.FioCopyMBps)
	if r.FioConcurrentCopyMBps > 0 {
		fmt.Fprintf(&b, "  fio reading one file while writing another: copy %.0f MB/s (what a copy in flight reaches on this disk)\n",
			r.FioConcurrentCopyMBps)
	}
	fmt.Fprintf(&b, "  full rebuild over loopback TCP: %.1f s, %.0f MB/s, copied %s: %.2fx the reference (goal >= 0.8: %s)\n",
		r.RebuildSeconds, r.RebuildMBps, sizeString(r.RebuildCopiedBytes), r.RebuildRatio, metWord(r.RebuildRatioGoalMet))
	if r.FioConcurrentCopyMBps > 0 {
		fmt.Fprintf(&b, "  full rebuild against fio's concurrent copy: %.2fx\n", r.RebuildMBps/r.FioConcurrentCopyMBps)
	}
	fmt.Fprintf(&b, "  full rebuild CPU per byte: source %.2f ns, engine %.2f ns, target %.2f ns (total %.2f ns)\n",
		r.RebuildCPUSourceNsPerByte, r.RebuildCPUEngineNsPerByte, r.RebuildCPUTargetNsPerByte,
		r.RebuildCPUSourceNsPerByte+r.RebuildCPUEngineNsPerByte+r.RebuildCPUTargetNsPerByte)
	fmt.Fprintf(&b, "  catch-up after %d of %d blocks (10%%) changed: copied %d bytes = %.2f%% of the volume in %.1f s (goal <= 15%%: %s)\n",
		r.ChangedBlocks, r.SizeBytes/proto.BlockSize, r.CatchUpCopiedBytes, 100*r.CatchUpFraction, r.CatchUpSeconds, metWord(r.CatchUpGoalMet))
	return b.String()
}

func metWord(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// Rebuild runs the rebuild benchmark in dir (a scratch directory it fills
// with fio files and two replica directories): fio's reference copy rate,
// then a full rebuild and a catch-up between two replica processes started
// from exe ("exe replica ..."), reached over loopback TCP by an engine in
// this process. progress receives one line per step.
func Rebuild(ctx context.Context, progress io.Writer, exe, dir string, sizeBytes uint64) (*RebuildReport, error) {
	rep := &RebuildReport{Dir: dir, FS: FSType(dir), SizeBytes: sizeBytes}
	if err := fioReference(ctx, progress, dir, sizeBytes, rep); err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "fio: read %.0f MB/s, write %.0f MB/s\n", rep.FioReadMBps, rep.FioWriteMBps)

	src := &benchReplica{exe: exe, id: "r1", dir: filepath.Join(dir, "r1"), size: sizeBytes}
	dst := &benchReplica{exe: exe, id: "r2", dir: filepath.Join(dir, "r2"), size: sizeBytes}
	for _, r := range []*benchReplica{src, dst} {
		if err := r.start(ctx); err != nil {
			return nil, err
		}
		defer r.stop()
	}
	d, err := enginerun.New(enginerun.Config{Volume: "bench", Replicas: []enginerun.Replica{{ID: "r1", Addr: src.addr}},
		Dial: tcp.Dial, RebuildAfter: -1, ReplaceAfter: -1,
		Logger: slog.New(slog.NewTextHandler(progress, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return nil, err
	}
	defer d.Close()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := d.WaitServing(wctx); err != nil {
		return nil, err
	}
	vol := enginerun.NewVolume(d)
	fmt.Fprintf(progress, "filling %s through the engine\n", sizeString(sizeBytes))
	if err := benchFill(ctx, vol); err != nil {
		return nil, err
	}
	if err := dropCache(src.dir); err != nil {
		return nil, err
	}

	fmt.Fprintln(progress, "full rebuild of r2")
	pids := []int{src.cmd.Process.Pid, os.Getpid(), dst.cmd.Process.Pid}
	cpu0 := processesCPU(pids)
	t0 := time.Now()
	if err := d.AddReplica(ctx, enginerun.Replica{ID: "r2", Addr: dst.addr}); err != nil {
		return nil, fmt.Errorf("full rebuild: %w", err)
	}
	took := time.Since(t0)
	cpu1 := processesCPU(pids)
	perByte := func(i int) float64 { return float64(cpu1[i]-cpu0[i]) / float64(sizeBytes) }
	rep.RebuildCPUSourceNsPerByte, rep.RebuildCPUEngineNsPerByte, rep.RebuildCPUTargetNsPerByte = perByte(0), perByte(1), perByte(2)
	info, err := d.Info(ctx)
	if err != nil {
		return nil, err
	}
	rep.RebuildSeconds = took.Seconds()
	rep.RebuildMBps = float64(sizeBytes) / took.Seconds() / 1e6
	rep.RebuildCopiedBytes = info.LastRebuild.BytesCopied
	rep.RebuildRatio = rep.RebuildMBps / rep.FioCopyMBps
	rep.RebuildRatioGoalMet = rep.RebuildRatio >= 0.8
	fmt.Fprintf(progress, "full rebuild: %.1f s, %.0f MB/s (%.2fx)\n", rep.RebuildSeconds, rep.RebuildMBps, rep.RebuildRatio)

	// The rebuild snapshot is merged away on both replicas before r2 goes:
	// a replica that misses the merge no longer shares the layer.
	t0 = time.Now()
	if err := waitNoRebuildSnapshots(ctx, d); err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "rebuild snapshot merged away in %.1f s\n", time.Since(t0).Seconds())
	dst.stop()
	blocks := sizeBytes / proto.BlockSize
	rep.ChangedBlocks = blocks / 10
	fmt.Fprintf(progress, "rewriting %d random blocks while r2 is away\n", rep.ChangedBlocks)
	if err := rewriteBlocks(ctx, vol, blocks, rep.ChangedBlocks); err != nil {
		return nil, err
	}
	if err := dst.start(ctx); err != nil {
		return nil, err
	}
	t0 = time.Now()
	if err := d.AddReplica(ctx, enginerun.Replica{ID: "r2", Addr: dst.addr}); err != nil {
		return nil, fmt.Errorf("catch-up: %w", err)
	}
	rep.CatchUpSeconds = time.Since(t0).Seconds()
	if info, err = d.Info(ctx); err != nil {
		return nil, err
	}
	rep.CatchUpCopiedBytes = info.LastRebuild.BytesCopied
	rep.CatchUpFraction = float64(rep.CatchUpCopiedBytes) / float64(sizeBytes)
	rep.CatchUpGoalMet = rep.CatchUpFraction <= 0.15
	return rep, nil
}

// processesCPU returns each pid's CPU time so far (0 for one that is gone).
func processesCPU(pids []int) []time.Duration {
	out := make([]time.Duration, len(pids))
	for i, pid := range pids {
		out[i], _ = ProcessCPU(pid)
	}
	return out
}

// benchReplica is one `drover replica` process on a fixed port.
type benchReplica struct {
	exe, id, dir, addr string
	size               uint64
	cmd                *exec.Cmd
	done               chan struct{}
}

func (r *benchReplica) start(ctx context.Context) error {
	if r.addr == "" {
		l, err := netListenLoopback()
		if err != nil {
			return err
		}
		r.addr = l
	}
	r.cmd = exec.CommandContext(ctx, r.exe, "replica", "--dir", r.dir, "--listen", r.addr, "--id", r.id, "--size", fmt.Sprint(r.size))
	r.cmd.Stderr = io.Discard
	out, err := r.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("start replica %s: %w", r.id, err)
	}
	r.done = make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if !strings.Contains(line, "serving on") {
		r.stop()
		return fmt.Errorf("replica %s did not start: %q %v", r.id, line, err)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return nil
}

// stop ends the process with SIGTERM (it closes its store cleanly).
func (r *benchReplica) stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd = nil
}

// fioReference runs fio's sequential write then read of sizeBytes in dir.
func fioReference(ctx context.Context, progress io.Writer, dir string, sizeBytes uint64, rep *RebuildReport) error {
	path := filepath.Join(dir, "fio.dat")
	defer os.Remove(path)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	f.Close()
	engine := []string{"--ioengine=libaio", "--direct=1", "--iodepth=16"}
	rep.FioEngine = "libaio direct=1 qd16 bs=1M"
	if g, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0); err != nil {
		engine = []string{"--ioengine=psync"}
		rep.FioEngine = "psync bs=1M (no O_DIRECT here)"
	} else {
		g.Close()
	}
	fmt.Fprintf(progress, "fio: sequential write and read of %s (%s)\n", sizeString(sizeBytes), rep.FioEngine)
	run := func(rw string) (float64, error) {
		args := append([]string{"--output-format=json", "--name=seq" + rw, "--filename=" + path, "--rw=" + rw,
			"--bs=1M", fmt.Sprintf("--size=%d", sizeBytes), "--end_fsync=1"}, engine...)
		out, err := exec.CommandContext(ctx, "fio", args...).Output()
		if err != nil {
			return 0, fmt.Errorf("fio %s: %w", rw, err)
		}
		if i := strings.IndexByte(string(out), '{'); i > 0 {
			out = out[i:]
		}
		var doc struct {
			Jobs []struct {
				Read struct {
					BwBytes int64 `json:"bw_bytes"`
				} `json:"read"`
				Write struct {
					BwBytes int64 `json:"bw_bytes"`
				} `json:"write"`
			} `json:"jobs"`
		}
		if err := json.Unmarshal(out, &doc); err != nil || len(doc.Jobs) != 1 {
			return 0, fmt.Errorf("parse fio output: %v", err)
		}
		bw := doc.Jobs[0].Read.BwBytes
		if rw == "write" {
			bw = doc.Jobs[0].Write.BwBytes
		}
		return float64(bw) / 1e6, nil
	}
	var err2 error
	if rep.FioWriteMBps, err2 = run("write"); err2 != nil {
		return err2
	}
	if err := dropCache(path); err != nil {
		return err
	}
	if rep.FioReadMBps, err2 = run("read"); err2 != nil {
		return err2
	}
	rep.FioCopyMBps = 1 / (1/rep.FioReadMBps + 1/rep.FioWriteMBps)
	if err := dropCache(path); err != nil {
		return err
	}
	mbps, err := fioConcurrentCopy(ctx, path, sizeBytes, engine)
	if err != nil {
		return err
	}
	rep.FioConcurrentCopyMBps = mbps
	return nil
}

// fioConcurrentCopy runs fio reading path (sizeBytes, written already)
// while it writes a second file of that size, and returns the size over
// the slower job's run time, in MB/s.
func fioConcurrentCopy(ctx context.Context, path string, sizeBytes uint64, engine []string) (float64, error) {
	dst := path + ".copy"
	defer os.Remove(dst)
	args := append([]string{"--output-format=json", "--bs=1M", fmt.Sprintf("--size=%d", sizeBytes), "--end_fsync=1"}, engine...)
	args = append(args, "--name=copyread", "--filename="+path, "--rw=read",
		"--name=copywrite", "--filename="+dst, "--rw=write")
	out, err := exec.CommandContext(ctx, "fio", args...).Output()
	if err != nil {
		return 0, fmt.Errorf("fio concurrent copy: %w", err)
	}
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	var doc struct {
		Jobs []struct {
			RuntimeMs int64 `json:"job_runtime"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &doc); err != nil || len(doc.Jobs) != 2 {
		return 0, fmt.Errorf("parse fio concurrent copy output: %v (%d jobs)", err, len(doc.Jobs))
	}
	slowest := max(doc.Jobs[0].RuntimeMs, doc.Jobs[1].RuntimeMs)
	if slowest <= 0 {
		return 0, fmt.Errorf("fio concurrent copy: no run time reported")
	}
	return float64(sizeBytes) / (float64(slowest) / 1e3) / 1e6, nil
}

// dropCache evicts path's files (a file, or every file under a
// directory) from the page cache, so reads come from the disk.
func dropCache(path string) error {
	return filepath.WalkDir(path, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	})
}

// benchFill writes the whole volume (1 MiB writes, 8 at a time) and flushes.
func benchFill(ctx context.Context, vol *enginerun.Volume) error {
	return device.Fill(ctx, vol, 1<<20, 8, device.Noise)
}

// rewriteBlocks writes n distinct random 4 KiB blocks (16 at a time) and
// flushes.
func rewriteBlocks(ctx context.Context, vol *enginerun.Volume, blocks, n uint64) error {
	rng := rand.New(rand.NewPCG(42, 42))
	perm := rng.Perm(int(blocks))[:n]
	const writers = 16
	errc := make(chan error, writers)
	for w := range writers {
		go func() {
			buf := make([]byte, proto.BlockSize)
			for i := w; i < len(perm); i += writers {
				for j := range buf {
					buf[j] = byte(i + j*7)
				}
				if err := vol.WriteAt(ctx, buf, uint64(perm[i])*proto.BlockSize, false); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	var err error
	for range writers {
		err = errors.Join(err, <-errc)
	}
	if err != nil {
		return err
	}
	return vol.Flush(ctx)
}

// waitNoRebuildSnapshots waits until the engine's chain holds no rebuild
// snapshot (the engine merges it away once every replica is RW). It gives
// up with the engine's state when the engine stops serving or a replica
// leaves RW (then nothing will merge it), or after mergeWait.
func waitNoRebuildSnapshots(ctx context.Context, d *enginerun.Driver) error {
	const mergeWait = 10 * time.Minute
	deadline := time.Now().Add(mergeWait)
	for {
		info, err := d.Info(ctx)
		if err != nil {
			return err
		}
		var left []string
		for _, n := range info.Chain {
			if strings.HasPrefix(n, "rebuild-") {
				left = append(left, n)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if why := mergeStuck(info.VolumeInfo); why != "" || time.Now().After(deadline) {
			if why == "" {
				why = fmt.Sprintf("still there after %v", mergeWait)
			}
			return fmt.Errorf("rebuild snapshot %s not merged away: %s (phase %s %s, replicas %v)",
				strings.Join(left, ","), why, info.Phase, info.Why, info.Replicas)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// mergeStuck says why no merge of a rebuild snapshot can come, or "".
func mergeStuck(info engine.VolumeInfo) string {
	if info.Phase != engine.PhaseServing {
		return "the engine is not serving"
	}
	for _, r := range info.Replicas {
		if r.Mode != engine.ModeRW {
			return fmt.Sprintf("replica %s is %v: %s", r.ID, r.Mode, r.Why)
		}
	}
	return ""
}

// netListenLoopback returns a free loopback TCP address.
func netListenLoopback() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// sizeString formats n in the largest binary unit that divides it.
func sizeString(n uint64) string {
	for _, u := range []struct {
		s string
		b uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.b && n%u.b == 0 {
			return fmt.Sprintf("%d%s", n/u.b, u.s)
		}
	}
	return fmt.Sprintf("%dB", n)
}
