package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/drover-io/drover/frontends/nbd"
)

// fio runs one workload with target arguments args (engine and what to
// open) and parses its JSON output.
func fio(ctx context.Context, args []string, w Workload, cfg *Config) (Result, error) {
	args = append([]string{"--output-format=json", "--name=" + w.Name,
		"--rw=" + w.RW, fmt.Sprintf("--bs=%d", w.BlockBytes),
		fmt.Sprintf("--iodepth=%d", w.QueueDepth), fmt.Sprintf("--size=%d", cfg.SizeBytes),
		"--time_based", fmt.Sprintf("--runtime=%dms", cfg.Runtime.Milliseconds()),
		"--randrepeat=0", "--norandommap", "--lat_percentiles=1"}, args...)
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, "fio", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Result{}, fmt.Errorf("fio %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	// fio may print notes before the JSON document.
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	var doc struct {
		Jobs []struct {
			Error int      `json:"error"`
			Read  fioStats `json:"read"`
			Write fioStats `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &doc); err != nil || len(doc.Jobs) != 1 {
		return Result{}, fmt.Errorf("parse fio output (%v): %.200s", err, out)
	}
	if doc.Jobs[0].Error != 0 {
		return Result{}, fmt.Errorf("fio job failed with error %d: %s", doc.Jobs[0].Error, strings.TrimSpace(stderr.String()))
	}
	st := doc.Jobs[0].Read
	if strings.Contains(w.RW, "write") {
		st = doc.Jobs[0].Write
	}
	if st.IOPS == 0 {
		return Result{}, fmt.Errorf("fio did no IO: %s", strings.TrimSpace(stderr.String()))
	}
	return Result{IOPS: st.IOPS, MBps: float64(st.BwBytes) / 1e6, Seconds: float64(st.RuntimeMs) / 1e3,
		P50us: st.Lat.Percentile["50.000000"] / 1e3, P99us: st.Lat.Percentile["99.000000"] / 1e3}, nil
}

type fioStats struct {
	IOPS    float64 `json:"iops"`
	BwBytes int64   `json:"bw_bytes"`
	// RuntimeMs is how long the job ran.
	RuntimeMs int64 `json:"runtime"`
	// Lat is the total latency, submission to completion. fio's default
	// (completion latency, clat) leaves out the submission, and fio's nbd
	// engine submits by writing the request, so a server that answers
	// before the write call returns shows a clat of a few microseconds
	// (nbdkit's 4 KiB random write at qd1: clat p50 2.6 µs while it did
	// 65k IOPS, 15 µs each).
	Lat struct {
		Percentile map[string]float64 `json:"percentile"`
	} `json:"lat_ns"`
}

// Raw-file fio engines.
const (
	rawLibaioDirect = "libaio direct=1"
	rawPsync        = "psync (no O_DIRECT here; queue depth ignored)"
)

// rawEngine picks libaio with O_DIRECT when the filesystem under path
// supports it (tmpfs does not), else psync.
func rawEngine(path string) string {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		return rawPsync
	}
	f.Close()
	return rawLibaioDirect
}

func rawFioArgs(path, engine string) []string {
	if engine == rawLibaioDirect {
		return []string{"--filename=" + path, "--ioengine=libaio", "--direct=1"}
	}
	return []string{"--filename=" + path, "--ioengine=psync"}
}

// FSType names the file system dir is on (tmpfs, ext4, xfs, btrfs,
// overlayfs, or its magic number).
func FSType(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "unknown"
	}
	switch st.Type {
	case 0x01021994:
		return "tmpfs"
	case 0xef53:
		return "ext4"
	case 0x58465342:
		return "xfs"
	case 0x9123683e:
		return "btrfs"
	case 0x794c7630:
		return "overlayfs"
	}
	return fmt.Sprintf("0x%x", st.Type)
}

// startProcess runs a server binary and waits for its unix socket to
// accept connections, or, when readyFile is set, for the server to
// create that file.
func (e *benchEnv) startProcess(ctx context.Context, sock, readyFile, name string, args ...string) (string, func(), error) {
	if _, err := exec.LookPath(name); err != nil {
		return "", nil, fmt.Errorf("%s: %w", name, exec.ErrNotFound)
	}
	os.Remove(sock)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start %s: %w", name, err)
	}
	e.pids = append(e.pids, cmd.Process.Pid)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
		os.Remove(sock)
	}
	if err := waitReady(sock, readyFile, exited); err != nil {
		stop()
		return "", nil, fmt.Errorf("%s: %w", name, err)
	}
	return nbd.UnixURI(sock, ""), stop, nil
}

// waitReady waits up to 30s for a unix socket to accept (or readyFile
// to exist), or for the server to exit (exited yields its status; it is
// put back for stop).
func waitReady(sock, readyFile string, exited chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if readyFile != "" {
			if st, err := os.Stat(readyFile); err == nil && st.Size() > 0 {
				return nil
			}
		} else if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("exited before listening: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			return errors.New("did not listen within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
