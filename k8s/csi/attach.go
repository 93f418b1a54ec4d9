package csi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

// stageState is what NodeStageVolume did for a volume, written after
// each step so NodeUnstageVolume (in this process or a later one) undoes
// exactly that.
type stageState struct {
	VolumeID    string `json:"volumeID"`
	StagingPath string `json:"stagingPath"`
	Endpoint    string `json:"endpoint"`
	// FuseDir is where nbdfuse mounted the export; Image the file in it.
	FuseDir string `json:"fuseDir"`
	Image   string `json:"image"`
	// FuseMounted: nbdfuse was started and its mount is up.
	FuseMounted bool `json:"fuseMounted"`
	// Loop is the loop device attached to Image ("" before), and
	// LoopDevice/LoopInode/LoopFile the backing file's identity as the
	// kernel reports it for that loop device (LOOP_GET_STATUS64: device,
	// inode, and the name losetup gave, which holds the volume ID):
	// unstage detaches the device only while it still reports them,
	// which it can check even when the FUSE file is unreachable.
	Loop       string `json:"loop,omitempty"`
	LoopDevice uint64 `json:"loopDevice,omitempty"`
	LoopInode  uint64 `json:"loopInode,omitempty"`
	LoopFile   string `json:"loopFile,omitempty"`
	// Growable: Image is the engine's growable export (a ceiling size),
	// and the loop device is limited to the volume's size, SizeBytes;
	// NodeExpandVolume raises the limit.
	Growable  bool  `json:"growable,omitempty"`
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// Block: the volume is used as a raw block device (no filesystem).
	Block bool `json:"block"`
	// Readonly: published read-only: the loop device and the mount are
	// read-only and nothing is formatted or grown.
	Readonly bool `json:"readonly,omitempty"`
	// FsType is the filesystem on the device; Formatted says this
	// driver made it (mkfs ran because blkid found nothing).
	FsType    string `json:"fsType,omitempty"`
	Formatted bool   `json:"formatted,omitempty"`
	// Mounted: the filesystem is mounted on StagingPath.
	Mounted bool `json:"mounted"`
	// Published lists the target paths NodePublishVolume bind-mounted.
	Published []string `json:"published,omitempty"`
}

// imageURI is the export nbdfuse attaches: the growable one, or the
// exact one for a state written before it existed.
func (st *stageState) imageURI() string {
	if st.Growable {
		return st.Endpoint + v1alpha1.GrowableExportSuffix
	}
	return st.Endpoint
}

func (d *Driver) statePath(volumeID string) string {
	return filepath.Join(d.cfg.StateDir, volumeID+".json")
}

// loadState reads a volume's state file; nil when there is none.
func (d *Driver) loadState(volumeID string) (*stageState, error) {
	b, err := os.ReadFile(d.statePath(volumeID))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state of %s: %w", volumeID, err)
	}
	var st stageState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state of %s (%s): %w", volumeID, d.statePath(volumeID), err)
	}
	return &st, nil
}

// saveState writes st atomically (temporary file, fsync, rename).
func (d *Driver) saveState(st *stageState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	path := d.statePath(st.VolumeID)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write state of %s: %w", st.VolumeID, err)
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("write state of %s: %w", st.VolumeID, err)
	}
	return nil
}

func (d *Driver) removeState(volumeID string) error {
	if err := os.Remove(d.statePath(volumeID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove state of %s: %w", volumeID, err)
	}
	return nil
}

// run runs a host tool and returns its output; a failure carries the
// command and what it printed.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// mountPoints returns the mount points of this mount namespace, with
// the source of each (mountinfo's fields 5 and 10, unescaped).
func mountPoints() (map[string]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		out[unescapeMount(fields[4])] = unescapeMount(fields[sep+2])
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isMounted(path string) (bool, error) {
	mps, err := mountPoints()
	if err != nil {
		return false, err
	}
	_, ok := mps[filepath.Clean(path)]
	return ok, nil
}

// startNbdfuse exposes the engine's export as the file image (in dir)
// with nbdfuse, which reaches the engine through `drover nbd-relay`
// (nbdfuse --command: NBD on its stdin), so the file survives the
// engine going away and coming back on the same address. nbdfuse runs
// in a session of its own, so it outlives the driver; with HostAttach
// it starts in the host's mount namespace and the cgroup AttachCgroup
// (nsenter into hostPID's, then drover csi-exec), so it also outlives
// the driver's container. It waits for the mount.
func (d *Driver) startNbdfuse(ctx context.Context, st *stageState) error {
	if err := os.MkdirAll(st.FuseDir, 0o700); err != nil {
		return fmt.Errorf("nbdfuse dir: %w", err)
	}
	if up, err := isMounted(st.FuseDir); err != nil {
		return err
	} else if up {
		if _, err := os.Stat(st.Image); err == nil {
			return nil // a run before this one's nbdfuse is still serving
		}
		// A dead FUSE mount (its server gone): clear it.
		if _, err := run(ctx, "fusermount3", "-u", "-z", st.FuseDir); err != nil {
			return fmt.Errorf("clear a dead nbdfuse mount: %w", err)
		}
	}
	relay, err := d.relayCommand(st)
	if err != nil {
		return err
	}
	pidfile := st.FuseDir + ".pid"
	_ = os.Remove(pidfile)
	logf, err := os.OpenFile(st.FuseDir+".log", os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("nbdfuse log: %w", err)
	}
	defer logf.Close()
	args := append([]string{"-P", pidfile, st.Image, "--command"}, relay...)
	cmd := exec.Command("nbdfuse", args...)
	if d.cfg.HostAttach {
		host, err := hostPID()
		if err != nil {
			return err
		}
		cmd = exec.Command("nsenter", append([]string{"--target", strconv.Itoa(host), "--mount", "--cgroup", "--",
			relay[0], "csi-exec", "--cgroup", AttachCgroup, "--", "nbdfuse"}, args...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start nbdfuse: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it whenever it ends
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		if _, err := os.Stat(pidfile); err == nil {
			return nil
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(st.FuseDir + ".log")
			return fmt.Errorf("nbdfuse %s exited before mounting (%v): %s", st.Endpoint, err, lastLines(string(b), 5))
		case <-deadline.C:
			_ = cmd.Process.Kill()
			return fmt.Errorf("nbdfuse %s did not mount within 30s", st.Endpoint)
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// loopID is a loop device's backing file as LOOP_GET_STATUS64 reports
// it: device, inode, and the (at most 63-byte) name it was attached by.
type loopID struct {
	dev, ino uint64
	name     string
}

// loopBacking reads a loop device's loopID. It does not touch the
// backing file, so it answers also when the file's FUSE server is gone.
func loopBacking(loop string) (loopID, error) {
	f, err := os.Open(loop)
	if err != nil {
		return loopID{}, fmt.Errorf("loop device %s: %w", loop, err)
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		return loopID{}, fmt.Errorf("loop device %s: LOOP_GET_STATUS64: %w", loop, err)
	}
	name := info.File_name[:]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return loopID{dev: info.Device, ino: info.Inode, name: string(name)}, nil
}

// ownsLoop says whether st's loop device is still the one it attached:
// its backing file is the one recorded at stage (after a reboot the
// name may be another volume's, or free; the recorded name, which holds
// the volume ID, keeps a reused device number from passing for ours). A
// state from before the identity was recorded falls back to comparing
// with the image.
func ownsLoop(ctx context.Context, st *stageState) bool {
	if st.Loop == "" {
		return false
	}
	if st.LoopInode != 0 {
		id, err := loopBacking(st.Loop)
		return err == nil && id == loopID{dev: st.LoopDevice, ino: st.LoopInode, name: st.LoopFile}
	}
	loop, err := loopFor(ctx, st.Image)
	return err == nil && loop == st.Loop
}

// loopFor returns the loop device backed by image ("" when none).
func loopFor(ctx context.Context, image string) (string, error) {
	out, err := run(ctx, "losetup", "--noheadings", "--output", "NAME", "--associated", image)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(strings.SplitN(out, "\n", 2)[0]), nil
}

// probeFS says what blkid finds on dev: a filesystem type, "partition
// table X", or "" for nothing (a blank device).
func probeFS(ctx context.Context, dev string) (string, error) {
	cmd := exec.CommandContext(ctx, "blkid", "-p", "-o", "export", dev)
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 {
		return "", nil // blkid: nothing found
	}
	if err != nil {
		return "", fmt.Errorf("blkid %s: %w", dev, err)
	}
	vals := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vals[k] = v
		}
	}
	switch {
	case vals["TYPE"] != "":
		return vals["TYPE"], nil
	case vals["PTTYPE"] != "":
		return "partition table " + vals["PTTYPE"], nil
	}
	return "", nil
}

// deviceSize is a block device's size in bytes.
func deviceSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	defer f.Close()
	n, err := f.Seek(0, 2)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	return n, nil
}

// exportSize asks the NBD server the export's size now (a new
// connection sees a grown volume).
func exportSize(ctx context.Context, uri string) (int64, error) {
	out, err := run(ctx, "nbdinfo", "--size", uri)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("nbdinfo --size %s: %q: %w", uri, out, err)
	}
	return n, nil
}

// setLoopSize sets a loop device's size limit (LOOP_SET_STATUS64), then
// has the kernel take the new size (LOOP_SET_CAPACITY): the device grows
// while mounted.
func setLoopSize(loop string, sizeBytes int64) error {
	f, err := os.OpenFile(loop, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("grow %s: %w", loop, err)
	}
	defer f.Close()
	fd := int(f.Fd())
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return fmt.Errorf("grow %s: LOOP_GET_STATUS64: %w", loop, err)
	}
	info.Sizelimit = uint64(sizeBytes)
	if err := unix.IoctlLoopSetStatus64(fd, info); err != nil {
		return fmt.Errorf("grow %s to %d bytes: LOOP_SET_STATUS64: %w", loop, sizeBytes, err)
	}
	if err := unix.IoctlSetInt(fd, unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("grow %s: LOOP_SET_CAPACITY: %w", loop, err)
	}
	return nil
}
