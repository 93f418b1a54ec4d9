package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/transports/control/controlpb"
)

// TestProcessExpandUnderLoad grows a drover dev volume twice through the
// CLI while a goroutine writes without pause (no write fails, all read
// back), then checks that a new NBD connection (nbdinfo) and a new iSCSI
// session (iscsi-readcapacity16) see the new size and that the new space
// holds data. Then shrink: refused while attached, refused without
// --allow-shrink, refused over data beyond the new end, allowed detached
// over unused space, with the data below the end intact.
func TestProcessExpandUnderLoad(t *testing.T) {
	needTools(t, "nbdinfo", "iscsi-readcapacity16")
	const mib = 1 << 20
	dataDir := t.TempDir()
	sock := filepath.Join(dataDir, "nbd.sock")
	portal := freeAddr(t)
	c := newVolumeClient(t, freeAddr(t), 16*mib)
	dev := start(t, "dev", nil, "dev", "--data-dir", dataDir, "--size", "16MiB", "--control", c.ctlAddr,
		"--frontend", "nbd,iscsi", "--nbd-listen", "unix:"+sock, "--iscsi-listen", portal)
	c.waitModes("drover dev serving", "", "", "")
	cli := func(args ...string) (string, error) {
		out, err := exec.Command(droverBin, append(args, "--control", c.ctlAddr)...).CombinedOutput()
		return string(out), err
	}
	nbdSize := func() string {
		return strings.TrimSpace(sh(t, "nbdinfo", "--size", "nbd+unix:///dev?socket="+sock))
	}
	iscsiSize := func() string {
		return strings.TrimSpace(sh(t, "iscsi-readcapacity16", "-s", "iscsi://"+portal+"/iqn.2026-11.io.drover:dev/0"))
	}
	eventually(t, "frontends listening", func() (bool, string) {
		if _, err := os.Stat(sock); err != nil {
			return false, err.Error()
		}
		conn, err := net.Dial("tcp", portal)
		if err != nil {
			return false, err.Error()
		}
		conn.Close()
		return true, ""
	})
	if got := nbdSize(); got != fmt.Sprint(16*mib) {
		t.Fatalf("nbdinfo before expand: %s", got)
	}
	l := newLoad(c, 11)
	l.during(func() {
		for _, size := range []string{"24MiB", "32MiB"} {
			if out, err := cli("volume", "expand", "--size", size); err != nil {
				t.Errorf("expand to %s under load: %v\n%s", size, err, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	l.flush()
	l.verify("after expanding under load")
	if got := nbdSize(); got != fmt.Sprint(32*mib) {
		t.Errorf("a new NBD connection sees %s bytes, want %d", got, 32*mib)
	}
	if got := iscsiSize(); got != fmt.Sprint(32*mib) {
		t.Errorf("a new iSCSI session reads capacity %s bytes, want %d", got, 32*mib)
	}
	tail := bytes.Repeat([]byte{0xd7}, 4096)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.client.Write(ctx, &controlpb.WriteRequest{Offset: 24 * mib, Data: tail}); err != nil {
		t.Fatalf("write in the new space: %v", err)
	}

	refusals := []struct {
		args []string
		want string
	}{
		{[]string{"volume", "expand", "--size", "20MiB"}, "expand never shrinks"},
		{[]string{"volume", "expand", "--size", "28MiB", "--allow-shrink"}, "shrink needs the volume detached"},
		{[]string{"volume", "expand", "--size", "24MiB", "--allow-shrink", "--detach"}, "holds data at byte 25165824"},
	}
	for _, r := range refusals {
		out, err := cli(r.args...)
		if err == nil || !strings.Contains(out, r.want) {
			t.Errorf("drover %s: %v %q, want an error saying %q", strings.Join(r.args, " "), err, out, r.want)
		}
	}
	if out, err := cli("volume", "expand", "--size", "28MiB", "--allow-shrink", "--detach"); err != nil {
		t.Fatalf("shrink over unused space: %v\n%s", err, out)
	}
	if got := nbdSize(); got != fmt.Sprint(28*mib) {
		t.Errorf("after the shrink a new NBD connection sees %s bytes, want %d", got, 28*mib)
	}
	l.verify("after the shrink")
	rep, err := c.client.Read(ctx, &controlpb.ReadRequest{Offset: 24 * mib, Length: 4096})
	if err != nil || !bytes.Equal(rep.GetData(), tail) {
		t.Fatalf("block at 24 MiB after the shrink: %v", err)
	}
	l.write() // the volume is attached again
	dev.stop()
}
