// Package nbdbench measures NBD servers with fio's nbd engine in one run
// on one backing file: nbdkit's file plugin (the reference every ratio is
// against), qemu-nbd, and Drover's NBD server over a device.File. It is
// the harness behind `make bench` (and `drover bench`); tests never run it.
package nbdbench

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/drover-io/drover/frontends/device"
	"github.com/drover-io/drover/frontends/nbd"
)

// Reference is the target every ratio is taken against.
const Reference = "nbdkit-file"

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
	// Dir holds the backing file: a tmpfs directory measures the
	// software's ceiling, a disk directory the disk-backed case.
	Dir string
	// SizeBytes is the backing file size (default 256 MiB).
	SizeBytes uint64
	// Runtime is each fio run's duration (default 5s).
	Runtime time.Duration
	// Workloads default to DefaultWorkloads.
	Workloads []Workload
	// Logger reports progress (default slog.Default()).
	Logger *slog.Logger
}

// Result is one target under one workload.
type Result struct {
	Target    string  `json:"target"`
	Workload  string  `json:"workload"`
	IOPS      float64 `json:"iops"`
	MBps      float64 `json:"mb_per_sec"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	IOPSRatio float64 `json:"iops_ratio_vs_reference"`
	P50Ratio  float64 `json:"p50_ratio_vs_reference"`
}

// Report is a whole run.
type Report struct {
	Dir       string     `json:"dir"`
	SizeBytes uint64     `json:"size_bytes"`
	Runtime   string     `json:"runtime"`
	Reference string     `json:"reference"`
	Workloads []Workload `json:"workloads"`
	Results   []Result   `json:"results"`
}

// target is a server under test: start serves the backing file and
// returns its URI and a stop function.
type target struct {
	name  string
	start func(ctx context.Context, path, sock string) (uri string, stop func(), err error)
}

// Run measures every target under every workload and fills in ratios.
// Targets whose server binary is missing are skipped with a log line.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.SizeBytes == 0 {
		cfg.SizeBytes = 256 << 20
	}
	if cfg.Runtime <= 0 {
		cfg.Runtime = 5 * time.Second
	}
	if cfg.Workloads == nil {
		cfg.Workloads = DefaultWorkloads
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if _, err := exec.LookPath("fio"); err != nil {
		return nil, fmt.Errorf("nbdbench: fio is required: %w", err)
	}
	dir, err := os.MkdirTemp(cfg.Dir, "nbdbench")
	if err != nil {
		return nil, fmt.Errorf("nbdbench: %w", err)
	}
	defer os.RemoveAll(dir)
	path, sock := filepath.Join(dir, "backing.img"), filepath.Join(dir, "sock")
	if err := fillRandom(path, cfg.SizeBytes); err != nil {
		return nil, fmt.Errorf("nbdbench: fill backing file: %w", err)
	}
	rep := &Report{Dir: cfg.Dir, SizeBytes: cfg.SizeBytes, Runtime: cfg.Runtime.String(),
		Reference: Reference, Workloads: cfg.Workloads}
	for _, tg := range targets() {
		results, err := measure(ctx, cfg, tg, path, sock)
		if errors.Is(err, exec.ErrNotFound) {
			cfg.Logger.Warn("nbdbench: skipping target", "target", tg.name, "err", err)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("nbdbench: %s: %w", tg.name, err)
		}
		rep.Results = append(rep.Results, results...)
	}
	rep.ratios()
	return rep, nil
}

func measure(ctx context.Context, cfg Config, tg target, path, sock string) ([]Result, error) {
	uri, stop, err := tg.start(ctx, path, sock)
	if err != nil {
		return nil, err
	}
	defer stop()
	var results []Result
	for _, w := range cfg.Workloads {
		cfg.Logger.Info("nbdbench: fio", "target", tg.name, "workload", w.Name)
		r, err := fio(ctx, uri, w, cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w.Name, err)
		}
		r.Target, r.Workload = tg.name, w.Name
		results = append(results, r)
	}
	return results, nil
}

func targets() []target {
	return []target{
		{Reference, func(ctx context.Context, path, sock string) (string, func(), error) {
			return startProcess(ctx, sock, "nbdkit", "--foreground", "--exit-with-parent", "-U", sock, "file", "file="+path)
		}},
		{"qemu-nbd", func(ctx context.Context, path, sock string) (string, func(), error) {
			return startProcess(ctx, sock, "qemu-nbd", "--persistent", "--shared=8", "-f", "raw", "-k", sock, path)
		}},
		{"drover-nbd-file", startDrover},
	}
}

// startProcess runs a server binary and waits for its unix socket.
func startProcess(ctx context.Context, sock, name string, args ...string) (string, func(), error) {
	if _, err := exec.LookPath(name); err != nil {
		return "", nil, fmt.Errorf("%s: %w", name, exec.ErrNotFound)
	}
	os.Remove(sock)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start %s: %w", name, err)
	}
	stop := func() {
		cmd.Process.Kill()
		cmd.Wait()
		os.Remove(sock)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return nbd.UnixURI(sock, ""), stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("%s did not listen on %s within 30s", name, sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startDrover(_ context.Context, path, sock string) (string, func(), error) {
	d, err := device.OpenFile(path, device.FileConfig{})
	if err != nil {
		return "", nil, err
	}
	srv, err := nbd.NewServer(nbd.Config{Exports: []nbd.Export{{Name: "", Device: d}},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		d.Close()
		return "", nil, err
	}
	os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		d.Close()
		return "", nil, fmt.Errorf("listen: %w", err)
	}
	go srv.Serve(l)
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		d.Close()
	}
	return nbd.UnixURI(sock, ""), stop, nil
}

// fio runs one workload and parses its JSON output.
func fio(ctx context.Context, uri string, w Workload, cfg Config) (Result, error) {
	out, err := exec.CommandContext(ctx, "fio", "--output-format=json", "--name="+w.Name,
		"--ioengine=nbd", "--uri="+uri, "--rw="+w.RW, fmt.Sprintf("--bs=%d", w.BlockBytes),
		fmt.Sprintf("--iodepth=%d", w.QueueDepth), fmt.Sprintf("--size=%d", cfg.SizeBytes),
		"--time_based", fmt.Sprintf("--runtime=%dms", cfg.Runtime.Milliseconds()),
		"--randrepeat=0", "--norandommap").Output()
	if err != nil {
		return Result{}, fmt.Errorf("fio: %w", err)
	}
	// fio may print notes before the JSON document.
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	var doc struct {
		Jobs []struct {
			Read  fioStats `json:"read"`
			Write fioStats `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &doc); err != nil || len(doc.Jobs) != 1 {
		return Result{}, fmt.Errorf("parse fio output (%v): %.200s", err, out)
	}
	st := doc.Jobs[0].Read
	if strings.Contains(w.RW, "write") {
		st = doc.Jobs[0].Write
	}
	return Result{IOPS: st.IOPS, MBps: float64(st.BwBytes) / 1e6,
		P50us: st.Clat.Percentile["50.000000"] / 1e3, P99us: st.Clat.Percentile["99.000000"] / 1e3}, nil
}

type fioStats struct {
	IOPS    float64 `json:"iops"`
	BwBytes int64   `json:"bw_bytes"`
	Clat    struct {
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
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
		if b, ok := ref[x.Workload]; ok && b.IOPS > 0 && b.P50us > 0 {
			x.IOPSRatio, x.P50Ratio = x.IOPS/b.IOPS, x.P50us/b.P50us
		}
	}
}

// Table renders the report for a terminal.
func (r *Report) Table() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "backing file in %s, %d MiB, %s per run; ratios vs %s\n",
		r.Dir, r.SizeBytes>>20, r.Runtime, r.Reference)
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\ttarget\tIOPS\tMB/s\tp50 µs\tp99 µs\tIOPS ratio\tp50 ratio\t")
	for _, w := range r.Workloads {
		for _, x := range r.Results {
			if x.Workload == w.Name {
				fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.1f\t%.1f\t%.1f\t%.2f×\t%.2f×\t\n",
					x.Workload, x.Target, x.IOPS, x.MBps, x.P50us, x.P99us, x.IOPSRatio, x.P50Ratio)
			}
		}
	}
	tw.Flush()
	return sb.String()
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
