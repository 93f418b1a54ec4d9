package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProcessDevWipedReplica is the operator's failure the simulator's
// wipe fault models: a replica's disk comes back empty (a replaced drive,
// a mount missing at boot) while drover dev is stopped. The volume must
// come back with every flushed write, the empty replica must be rebuilt
// rather than trusted, and that must hold whichever replica it was: dev-1
// (the first the open would take as its source) and then dev-2.
func TestProcessDevWipedReplica(t *testing.T) {
	needTools(t, "qemu-io")
	d := newDevServer(t, 64<<20, "64MiB")
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 4M", "-c", "write -P 0x5d 40M 3M", "-c", "flush", d.uri())
	for _, id := range []string{"dev-1", "dev-2"} {
		d.proc.stop()
		if err := os.RemoveAll(filepath.Join(d.dataDir, id)); err != nil {
			t.Fatal(err)
		}
		d.start()
		for i := 0; i < 3; i++ { // reads go round robin: every replica serves one
			sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0x3c 0 4M", "-c", "read -P 0x5d 40M 3M", "-c", "read -P 0 4M 36M", d.uri())
		}
		d.waitDevModes(fmt.Sprintf("%s rebuilt after its disk was wiped", id), "RW", "RW", "RW")
		// The operator sees why: a structured line for the open's
		// verdict and for the rebuild.
		for _, want := range []string{`event="stale replica at open" replica=` + id, `event="rebuild done" replica=` + id} {
			eventually(t, "drover dev logging "+want, func() (bool, string) {
				out := d.proc.output()
				return strings.Contains(out, want), out
			})
		}
		for i := 0; i < 3; i++ {
			sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0x3c 0 4M", "-c", "read -P 0x5d 40M 3M", d.uri())
		}
	}
	d.proc.stop()
}

// waitDevModes waits until drover dev serves and replica dev-i has mode
// want[i-1] ("" = any).
func (d *devServer) waitDevModes(what string, want ...string) {
	d.t.Helper()
	eventually(d.t, what, func() (bool, string) {
		phase, m, err := d.modes()
		if err != nil {
			return false, err.Error()
		}
		if phase != "serving" {
			return false, phase
		}
		for i, w := range want {
			if w != "" && m[fmt.Sprintf("dev-%d", i+1)] != w {
				return false, fmt.Sprint(m)
			}
		}
		return true, ""
	})
}
