package csi

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// AttachCgroup is the cgroup (under the root of every hierarchy) that a
// HostAttach driver's nbdfuse and NBD relay processes run in.
const AttachCgroup = "drover-attachments"

// relayCommand is the command nbdfuse runs (--command) to reach the
// engine: `drover nbd-relay`, which reconnects when the engine goes away
// and comes back on the same address (an agent restart), so the
// volume's IO pauses instead of failing.
func (d *Driver) relayCommand(st *stageState) ([]string, error) {
	bin, err := d.relayBinary()
	if err != nil {
		return nil, err
	}
	return []string{bin, "nbd-relay", "--reconnect-timeout", d.cfg.ReconnectTimeout.String(), st.imageURI()}, nil
}

// relayBinary is the drover executable the relay runs from: this
// process's own, or, with HostAttach, a copy of it in StateDir/bin named
// by its content hash (the host's mount namespace, where the relay
// runs, does not see the container's image).
func (d *Driver) relayBinary() (string, error) {
	d.binOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			d.binErr = fmt.Errorf("relay binary: %w", err)
			return
		}
		if !d.cfg.HostAttach {
			d.bin = self
			return
		}
		d.bin, d.binErr = copyByHash(self, filepath.Join(d.cfg.StateDir, "bin"))
	})
	return d.bin, d.binErr
}

// copyByHash copies the file src into dir as drover-HASH (unless it is
// there already) and removes older copies there (a running process
// keeps its unlinked executable).
func copyByHash(src, dir string) (string, error) {
	f, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("relay binary: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("relay binary: hash %s: %w", src, err)
	}
	name := "drover-" + hex.EncodeToString(h.Sum(nil))[:16]
	dst := filepath.Join(dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("relay binary: %w", err)
	}
	if _, err := os.Stat(dst); err != nil {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return "", fmt.Errorf("relay binary: %w", err)
		}
		tmp, err := os.CreateTemp(dir, ".tmp-")
		if err != nil {
			return "", fmt.Errorf("relay binary: %w", err)
		}
		_, err = io.Copy(tmp, f)
		if err == nil {
			err = tmp.Chmod(0o755)
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), dst)
		}
		if err != nil {
			_ = os.Remove(tmp.Name())
			return "", fmt.Errorf("relay binary: copy %s to %s: %w", src, dst, err)
		}
	}
	old, _ := filepath.Glob(filepath.Join(dir, "drover-*"))
	for _, p := range old {
		if p != dst {
			_ = os.Remove(p)
		}
	}
	return dst, nil
}

// hostPID is a process in the host's mount and cgroup namespaces: this
// process's parent, which in a container sharing the host's PID
// namespace (hostPID), and drover csi being the container's entrypoint,
// is the container runtime's shim. (PID 1's namespaces would do too, but
// some hosts refuse to open them even to root.) Without hostPID the
// parent is outside the PID namespace and reads as 0.
func hostPID() (int, error) {
	ppid := os.Getppid()
	if ppid <= 0 {
		return 0, fmt.Errorf("host attach: no parent process in this PID namespace (%d): the node service's Pod needs hostPID", ppid)
	}
	return ppid, nil
}

// JoinCgroup moves the calling process into the cgroup name, made under
// the root of every cgroup hierarchy (v1 controllers and v2) mounted in
// this mount namespace. The process then belongs to no Pod's cgroup, so
// neither the container runtime's kill of a stopped container's
// processes nor the kubelet's of a deleted Pod's reaches it. Run it in
// the host's mount and cgroup namespaces (`drover csi-exec` does, under
// nsenter).
func JoinCgroup(name string) error {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return fmt.Errorf("cgroup name %q: want one path element", name)
	}
	roots, err := cgroupRoots()
	if err != nil {
		return err
	}
	if len(roots) == 0 {
		return errors.New("join cgroup: no cgroup filesystem is mounted here")
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	for _, root := range roots {
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("join cgroup: %w", err)
		}
		// A new cpuset (v1) has no CPUs or memory nodes, and a process
		// cannot join it until it has: take the parent's.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			cur, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil || strings.TrimSpace(string(cur)) != "" {
				continue
			}
			parent, err := os.ReadFile(filepath.Join(root, f))
			if err != nil {
				return fmt.Errorf("join cgroup: %w", err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), parent, 0o644); err != nil {
				return fmt.Errorf("join cgroup: %s: %w", filepath.Join(dir, f), err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0o644); err != nil {
			return fmt.Errorf("join cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// cgroupRoots lists a mount point of each cgroup hierarchy (cgroup and
// cgroup2 filesystems) mounted at its root in this mount namespace; a
// bind mount of a hierarchy's subtree (a container's view) is skipped.
func cgroupRoots() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return parseCgroupRoots(string(b)), nil
}

// parseCgroupRoots reads mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT
// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS.
func parseCgroupRoots(mountinfo string) []string {
	var out []string
	seen := map[string]bool{} // by device: one mount per hierarchy
	for _, line := range strings.Split(mountinfo, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 7 || fields[3] != "/" {
			continue
		}
		for i := 6; i+1 < len(fields); i++ {
			if fields[i] != "-" {
				continue
			}
			if t := fields[i+1]; (t == "cgroup" || t == "cgroup2") && !seen[fields[2]] {
				seen[fields[2]] = true
				out = append(out, unescapeMount(fields[4]))
			}
			break
		}
	}
	return out
}
