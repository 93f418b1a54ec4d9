// Package bench measures Drover's data path against reference NBD
// servers with fio, in one run on one directory: fio on the raw file,
// nbdkit's file plugin (the reference every ratio is against), qemu-nbd,
// Drover's NBD server over a plain file (the frontend's cost alone), and
// Drover volumes with one and three replicas on filestore — replicas in
// the engine's process on in-process links, and optionally three replica
// processes over TCP loopback. It is the harness behind `drover bench`
// and `make bench`; tests run it only as a short smoke test.
package bench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Target names, in the order Run measures them.
const (
	// TargetRaw is fio on the backing file itself (libaio with O_DIRECT
	// where the filesystem allows it, else psync).
	TargetRaw = "raw-file"
	// Reference is the target every ratio is taken against.
	Reference = "nbdkit-file"
	// TargetQemu is qemu-nbd serving the backing file.
	TargetQemu = "qemu-nbd"
	// TargetDroverFile is Drover's NBD server over a device.File: the
	// frontend alone, no engine and no replica.
	TargetDroverFile = "drover-nbd-file"
	// TargetDrover1 is a Drover volume with one replica on filestore, in
	// the engine's process on an in-process link.
	TargetDrover1 = "drover-1r"
	// TargetDrover3 is the same with three replicas.
	TargetDrover3 = "drover-3r"
	// TargetDrover1TCP has one replica process reached over TCP
	// loopback; it runs only when Config.ReplicaCommand is set.
	TargetDrover1TCP = "drover-1r-tcp"
	// TargetDrover3TCP has three replica processes reached over TCP
	// loopback; it runs only when Config.ReplicaCommand is set.
	TargetDrover3TCP = "drover-3r-tcp"
	// TargetDrover3TLS is TargetDrover3TCP with mutual TLS on every
	// replica link (a CA and certificates made for the run).
	TargetDrover3TLS = "drover-3r-tls"
	// TargetDrover3Crypt is TargetDrover3 encrypted at rest
	// (device.Encrypted, AES-256-XTS).
	TargetDrover3Crypt = "drover-3r-crypt"
)

// AllTargets lists every target in measuring order.
var AllTargets = []string{TargetRaw, Reference, TargetQemu, TargetDroverFile, TargetDrover1, TargetDrover3, TargetDrover3Crypt, TargetDrover1TCP, TargetDrover3TCP, TargetDrover3TLS}

// Workload is one fio job shape.
type Workload struct {
	Name       string `json:"name"`
	RW         string `json:"rw"` // fio rw=
	BlockBytes int    `json:"block_bytes"`
	QueueDepth int    `json:"queue_depth"`
}

// DefaultWorkloads are 4 KiB random reads and writes at queue depth 1 and
// 32, and 1 MiB sequential writes.
var DefaultWorkloads = []Workload{
	{"randread-4k-qd1", "randread", 4096, 1},
	{"randread-4k-qd32", "randread", 4096, 32},
	{"randwrite-4k-qd1", "randwrite", 4096, 1},
	{"randwrite-4k-qd32", "randwrite", 4096, 32},
	{"write-1m-qd4", "write", 1 << 20, 4},
}

// Config configures Run.
type Config struct {
	// Dir is where the backing file and the replicas live: a tmpfs
	// directory measures the software's ceiling, a disk directory the
	// disk-backed case. Run works in a fresh directory under it.
	Dir string
	// SizeBytes is the size of the backing file and of the Drover
	// volumes (default 256 MiB).
	SizeBytes uint64
	// Runtime is each fio run's duration (default 5s).
	Runtime time.Duration
	// Workloads default to DefaultWorkloads.
	Workloads []Workload
	// Targets names the targets to measure (default all of AllTargets).
	// The reference is always measured when any NBD target is, since
	// every ratio needs it.
	Targets []string
	// ReplicaCommand is the command line (program and leading arguments)
	// that runs one replica process for TargetDrover3TCP: ServeReplica's
	// flags are appended (see ReplicaArgs). Empty: that target is skipped.
	ReplicaCommand []string
	// Progress receives one line per measured cell (default os.Stderr).
	Progress io.Writer
	// Logger reports skipped targets and server warnings (default
	// slog.Default()).
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.SizeBytes == 0 {
		c.SizeBytes = 256 << 20
	}
	if c.Runtime <= 0 {
		c.Runtime = 5 * time.Second
	}
	if c.Workloads == nil {
		c.Workloads = DefaultWorkloads
	}
	if c.Targets == nil {
		c.Targets = AllTargets
	}
	if c.Progress == nil {
		c.Progress = os.Stderr
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Result is one target under one workload.
type Result struct {
	Target   string  `json:"target"`
	Workload string  `json:"workload"`
	IOPS     float64 `json:"iops"`
	MBps     float64 `json:"mb_per_sec"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
	// ServerCPUus is the CPU time (user+system) the serving processes
	// spent per IO: robust when the machine is shared, unlike IOPS.
	// Zero for the raw file (fio itself does the IO).
	ServerCPUus float64 `json:"server_cpu_us_per_io"`
	// Seconds is how long fio ran.
	Seconds   float64 `json:"seconds"`
	IOPSRatio float64 `json:"iops_ratio_vs_reference"`
	MBpsRatio float64 `json:"mb_per_sec_ratio_vs_reference"`
	P50Ratio  float64 `json:"p50_ratio_vs_reference"`
	P99Ratio  float64 `json:"p99_ratio_vs_reference"`
}

// Report is a whole run.
type Report struct {
	Dir       string     `json:"dir"`
	FSType    string     `json:"fs_type"`
	RawEngine string     `json:"raw_engine"`
	CPUs      int        `json:"cpus"`
	SizeBytes uint64     `json:"size_bytes"`
	Runtime   string     `json:"runtime"`
	Reference string     `json:"reference"`
	Workloads []Workload `json:"workloads"`
	Results   []Result   `json:"results"`
	Goals     []Goal     `json:"goals"`
}

// Run measures every target under every workload, fills in the ratios
// and checks the goals. Targets whose server binary is missing are
// skipped with a log line.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.setDefaults()
	if _, err := exec.LookPath("fio"); err != nil {
		return nil, fmt.Errorf("bench: fio is required: %w", err)
	}
	for _, name := range cfg.Targets {
		if !slices.Contains(AllTargets, name) {
			return nil, fmt.Errorf("bench: unknown target %q (known: %s)", name, strings.Join(AllTargets, ", "))
		}
	}
	dir, err := os.MkdirTemp(cfg.Dir, "drover-bench-")
	if err == nil {
		dir, err = filepath.Abs(dir) // qemu-nbd wants an absolute socket path
	}
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "backing.img")
	if err := fillRandom(path, cfg.SizeBytes); err != nil {
		return nil, fmt.Errorf("bench: fill backing file: %w", err)
	}
	rep := &Report{Dir: filepath.Dir(dir), FSType: FSType(dir), RawEngine: rawEngine(path), CPUs: runtime.NumCPU(),
		SizeBytes: cfg.SizeBytes, Runtime: cfg.Runtime.String(), Reference: Reference, Workloads: cfg.Workloads}
	env := &benchEnv{cfg: &cfg, dir: dir, path: path, sock: filepath.Join(dir, "nbd.sock"), rawEngine: rep.RawEngine}
	targets := env.targets()
	cells, cell := len(targets)*len(cfg.Workloads), 0
	for _, tg := range targets {
		results, err := env.measure(ctx, tg, rep, &cell, cells)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, errSkip) {
			cfg.Logger.Warn("bench: skipping target", "target", tg.name, "err", err)
			cell += len(cfg.Workloads)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("bench: %s: %w", tg.name, err)
		}
		rep.Results = append(rep.Results, results...)
	}
	rep.ratios()
	rep.Goals = rep.checkGoals()
	return rep, nil
}

// errSkip marks a target that cannot run here (and is not an error).
var errSkip = errors.New("target not available")

// benchEnv is what the targets of one run share.
type benchEnv struct {
	cfg       *Config
	dir       string // the run's own directory
	path      string // the backing file
	sock      string // the NBD unix socket
	rawEngine string
	// pids are the processes serving the current target (whose CPU time
	// is measured); start functions set them.
	pids []int
}

// target is a thing under test. Either uri serves the backing file
// (or a volume) over NBD and returns its URI and a stop function, or
// fioArgs (for the raw file) are the fio arguments naming the file.
type target struct {
	name    string
	start   func(ctx context.Context) (uri string, stop func(), err error)
	fioArgs []string
}

func (e *benchEnv) targets() []target {
	want := func(name string) bool { return slices.Contains(e.cfg.Targets, name) }
	var out []target
	for _, name := range AllTargets {
		if !want(name) && !(name == Reference && len(e.cfg.Targets) > 0 && !onlyRaw(e.cfg.Targets)) {
			continue
		}
		tg := target{name: name}
		switch name {
		case TargetRaw:
			tg.fioArgs = rawFioArgs(e.path, e.rawEngine)
		case Reference:
			tg.start = func(ctx context.Context) (string, func(), error) {
				// nbdkit writes its pid file once it accepts connections; a
				// probing connection would make it log a broken handshake.
				pid := filepath.Join(e.dir, "nbdkit.pid")
				os.Remove(pid)
				return e.startProcess(ctx, e.sock, pid, "nbdkit", "--foreground", "--exit-with-parent", "-P", pid, "-U", e.sock, "file", "file="+e.path)
			}
		case TargetQemu:
			tg.start = func(ctx context.Context) (string, func(), error) {
				pid := filepath.Join(e.dir, "qemu-nbd.pid")
				os.Remove(pid)
				return e.startProcess(ctx, e.sock, pid, "qemu-nbd", "--persistent", "--shared=8", "-f", "raw", "--cache=writeback",
					"--pid-file="+pid, "-k", e.sock, e.path)
			}
		case TargetDroverFile:
			tg.start = e.startDroverFile
		case TargetDrover1:
			tg.start = func(ctx context.Context) (string, func(), error) { return e.startDroverLocal(ctx, 1) }
		case TargetDrover3:
			tg.start = func(ctx context.Context) (string, func(), error) { return e.startDroverLocal(ctx, 3) }
		case TargetDrover1TCP:
			tg.start = func(ctx context.Context) (string, func(), error) { return e.startDroverTCP(ctx, 1) }
		case TargetDrover3TCP:
			tg.start = func(ctx context.Context) (string, func(), error) { return e.startDroverTCP(ctx, 3) }
		case TargetDrover3Crypt:
			tg.start = func(ctx context.Context) (string, func(), error) { return e.startDroverLocalCrypt(ctx, 3, true) }
		case TargetDrover3TLS:
			tg.start = func(ctx context.Context) (string, func(), error) { return e.startDroverTLS(ctx, 3) }
		}
		out = append(out, tg)
	}
	return out
}

// onlyRaw reports whether names asks for the raw file alone, which needs
// no reference server.
func onlyRaw(names []string) bool {
	for _, n := range names {
		if n != TargetRaw {
			return false
		}
	}
	return true
}

// measure runs every workload against one target, printing a progress
// line per cell.
func (e *benchEnv) measure(ctx context.Context, tg target, rep *Report, cell *int, cells int) ([]Result, error) {
	fioArgs := tg.fioArgs
	e.pids = nil
	if tg.start != nil {
		uri, stop, err := tg.start(ctx)
		if err != nil {
			return nil, err
		}
		defer stop()
		fioArgs = []string{"--ioengine=nbd", "--uri=" + uri}
	}
	var results []Result
	for _, w := range e.cfg.Workloads {
		*cell++
		cpu0 := serversCPU(e.pids)
		r, err := fio(ctx, fioArgs, w, e.cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w.Name, err)
		}
		if ios := r.IOPS * r.Seconds; len(e.pids) > 0 && ios > 0 {
			r.ServerCPUus = float64((serversCPU(e.pids) - cpu0).Microseconds()) / ios
		}
		r.Target, r.Workload = tg.name, w.Name
		results = append(results, r)
		fmt.Fprintf(e.cfg.Progress, "bench [%d/%d] %-16s %-18s %s\n", *cell, cells, tg.name, w.Name, progressLine(r, rep))
	}
	return results, nil
}

// progressLine sums one cell up, with its ratio to the reference when
// the reference has run already.
func progressLine(r Result, rep *Report) string {
	s := fmt.Sprintf("%8.0f IOPS %8.1f MB/s  p50 %7.1f µs  p99 %8.1f µs  cpu %5.1f µs/IO", r.IOPS, r.MBps, r.P50us, r.P99us, r.ServerCPUus)
	for _, x := range rep.Results {
		if x.Target == rep.Reference && x.Workload == r.Workload && x.IOPS > 0 && x.P50us > 0 {
			s += fmt.Sprintf("  (%.2f× IOPS, %.2f× p50 vs %s)", r.IOPS/x.IOPS, r.P50us/x.P50us, rep.Reference)
		}
	}
	return s
}

func fillRandom(path string, sizeBytes uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, int64(sizeBytes)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
