package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/testenv"
)

// needQemuISCSI stops the test (see testenv) when qemu has no iSCSI block
// driver (Debian ships it in qemu-block-extra, which .ci/run installs).
func needQemuISCSI(t *testing.T) {
	t.Helper()
	out, _ := exec.Command("qemu-io", "-f", "raw", "-c", "quit", "iscsi://127.0.0.1:1/iqn.invalid:x/0").CombinedOutput()
	if strings.Contains(string(out), "Unknown protocol") || strings.Contains(string(out), "not found") {
		testenv.Unavailable(t, "qemu has no iSCSI driver (apt-get install qemu-block-extra): %s", out)
	}
}

// field returns the value of the first "name:value" line of out.
func field(t *testing.T, out, name string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `:\s*(.*?)\s*$`).FindStringSubmatch(out)
	if m == nil {
		t.Errorf("no %q in:\n%s", name, out)
		return ""
	}
	return m[1]
}

// TestProcessDevISCSIAndNBD: `drover dev --frontend nbd,iscsi` serves one
// volume over both protocols. libiscsi's iscsi-inq and
// iscsi-readcapacity16 read the right identity, limits and size; data
// written through iSCSI (qemu-img, qemu-io: WRITE, WRITE SAME, UNMAP)
// reads back through NBD (nbdcopy, qemu-io), and data written through NBD
// reads back through iSCSI.
func TestProcessDevISCSIAndNBD(t *testing.T) {
	needTools(t, "iscsi-inq", "iscsi-readcapacity16", "nbdcopy", "qemu-io", "qemu-img")
	needQemuISCSI(t)
	const sizeBytes = 32 << 20
	ctl, portal, dir, metricsAddr := freeAddr(t), freeAddr(t), t.TempDir(), freeAddr(t)
	sock := filepath.Join(dir, "nbd.sock")
	c := newVolumeClient(t, ctl, sizeBytes)
	p := start(t, "dev", nil, "dev", "--data-dir", filepath.Join(dir, "data"), "--size", "32MiB", "--control", ctl,
		"--frontend", "nbd,iscsi", "--nbd-listen", "unix:"+sock, "--iscsi-listen", portal, "--metrics-listen", metricsAddr)
	c.waitModes("drover dev serving", "", "", "")
	nbdURI := nbd.UnixURI(sock, "dev")
	iscsiURL := "iscsi://" + portal + "/iqn.2026-11.io.drover:dev/0"
	eventually(t, "drover dev printing both frontends", func() (bool, string) {
		out := p.output()
		return strings.Contains(out, "NBD export: "+nbdURI) &&
			strings.Contains(out, "iSCSI target iqn.2026-11.io.drover:dev on portal "+portal), out
	})

	// Identity and limits.
	inq := sh(t, "iscsi-inq", iscsiURL)
	for name, want := range map[string]string{"Peripheral Device Type": "DIRECT_ACCESS", "Vendor": "DROVER",
		"Product": "VOLUME", "CmdQue": "1"} {
		if got := field(t, inq, name); got != want {
			t.Errorf("iscsi-inq %s = %q, want %q", name, got, want)
		}
	}
	serial := field(t, sh(t, "iscsi-inq", "-e", "1", "-c", "128", iscsiURL), "Unit Serial Number")
	if ids := sh(t, "iscsi-inq", "-e", "1", "-c", "131", iscsiURL); serial == "[]" || !strings.Contains(ids, strings.Trim(serial, "[]")) {
		t.Errorf("device identification page lacks the unit serial number %s:\n%s", serial, ids)
	}
	limits := sh(t, "iscsi-inq", "-e", "1", "-c", "176", iscsiURL)
	if got := field(t, limits, "optimal transfer length granularity"); got != "8" {
		t.Errorf("block limits: optimal transfer length granularity %q, want 8 (4 KiB on 512-byte blocks)", got)
	}
	prov := sh(t, "iscsi-inq", "-e", "1", "-c", "178", iscsiURL)
	for name, want := range map[string]string{"lbpu": "1", "lbpws": "1", "lbpws10": "1", "provisioning type": "2"} {
		if got := field(t, prov, name); got != want {
			t.Errorf("logical block provisioning %s = %q, want %q", name, got, want)
		}
	}
	rc := sh(t, "iscsi-readcapacity16", iscsiURL)
	for name, want := range map[string]string{"RETURNED LOGICAL BLOCK ADDRESS": "65535",
		"LOGICAL BLOCK LENGTH IN BYTES": "512", "Total size": "33554432"} {
		if got := field(t, rc, name); got != want {
			t.Errorf("iscsi-readcapacity16 %s = %q, want %q", name, got, want)
		}
	}
	if !strings.Contains(rc, "LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:3") || !strings.Contains(rc, "LBPME:1") {
		t.Errorf("iscsi-readcapacity16: want 4 KiB physical blocks and LBPME:1:\n%s", rc)
	}

	tmp := t.TempDir()
	randomFile := func(name string) (string, []byte) {
		b := make([]byte, sizeBytes)
		_, _ = rand.Read(b)
		path := filepath.Join(tmp, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path, b
	}
	readBack := func(name string, args ...string) []byte {
		path := filepath.Join(tmp, name)
		// qemu's iSCSI driver prints (and ignores) commands that fail,
		// e.g. GET LBA STATUS; none may fail.
		if out := sh(t, args[0], append(args[1:], path)...); strings.Contains(out, "failed") {
			t.Errorf("%v: %s", args, out)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	qemu := func(name string, args ...string) {
		t.Helper()
		if out := sh(t, name, args...); strings.Contains(out, "failed") {
			t.Errorf("%s %v: %s", name, args, out)
		}
	}

	// NBD -> iSCSI, the whole volume.
	a, aData := randomFile("a")
	sh(t, "nbdcopy", a, nbdURI)
	if got := readBack("a-back", "qemu-img", "convert", "-f", "raw", "-O", "raw", iscsiURL); !bytes.Equal(got, aData) {
		t.Errorf("the volume read through iSCSI differs from what nbdcopy wrote through NBD")
	}
	// iSCSI -> NBD, the whole volume.
	b, bData := randomFile("b")
	qemu("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", b, iscsiURL)
	if got := readBack("b-back", "nbdcopy", nbdURI); !bytes.Equal(got, bData) {
		t.Errorf("the volume read through NBD differs from what qemu-img wrote through iSCSI")
	}
	// Unaligned writes, zeroes (WRITE SAME) and discards (UNMAP) through
	// iSCSI, read through NBD, and the same the other way round.
	qemu("qemu-io", "-f", "raw", "-c", "write -P 0xa5 1000 7777", "-c", "write -z 1048576 65536",
		"-c", "discard 2097152 1048576", "-c", "flush", iscsiURL)
	qemu("qemu-io", "-f", "raw", "-c", "read -P 0xa5 1000 7777", "-c", "read -P 0 1048576 65536",
		"-c", "read -P 0 2097152 1048576", nbdURI)
	qemu("qemu-io", "-f", "raw", "-c", "write -P 0x3c 4194303 12289", "-c", "write -z 5242880 4096",
		"-c", "discard 6291456 1048576", "-c", "flush", nbdURI)
	qemu("qemu-io", "-f", "raw", "-c", "read -P 0x3c 4194303 12289", "-c", "read -P 0 5242880 4096",
		"-c", "read -P 0 6291456 1048576", iscsiURL)
	// What neither touched is still b.
	got := readBack("c-back", "nbdcopy", nbdURI)
	for _, r := range [][2]int{{0, 1000}, {8777, 1048576}, {1048576 + 65536, 2097152}, {3145728, 4194303},
		{4194303 + 12289, 5242880}, {5242880 + 4096, 6291456}, {7340032, sizeBytes}} {
		if !bytes.Equal(got[r[0]:r[1]], bData[r[0]:r[1]]) {
			t.Errorf("bytes %d..%d changed though no write covered them", r[0], r[1])
		}
	}
	// The metrics count connections per frontend: one open to the portal.
	conn, err := net.Dial("tcp", portal)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "an iSCSI connection in the metrics", func() (bool, string) {
		n, _ := fetchMetrics(t, metricsAddr).value("drover_volume_frontend_connections", "volume=dev", "frontend=iscsi")
		return n == 1, fmt.Sprint(n)
	})
	conn.Close()
	p.stop()
}
