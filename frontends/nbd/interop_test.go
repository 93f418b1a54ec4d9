package nbd_test

// Interop tests: real NBD clients (libnbd's nbdinfo, nbdcopy and nbdfuse,
// qemu-io, qemu-img, fio) against the server over a device.File. Each
// test skips, saying why, only when its client is not installed.

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/testenv"
)

func TestNbdinfoShowsSizeFlagsAndBlockSizes(t *testing.T) {
	need(t, "nbdinfo")
	d, _ := fileDevice(t, 64<<20)
	s := serve(t,
		nbd.Export{Name: "vol", Description: "test volume", Device: d},
		nbd.Export{Name: "ro", Device: d, ReadOnly: true})
	type export struct {
		Name         string `json:"export-name"`
		Description  string `json:"description"`
		SizeBytes    uint64 `json:"export-size"`
		ReadOnly     bool   `json:"is_read_only"`
		CanFlush     bool   `json:"can_flush"`
		CanFUA       bool   `json:"can_fua"`
		CanTrim      bool   `json:"can_trim"`
		CanZero      bool   `json:"can_zero"`
		CanMultiConn bool   `json:"can_multi_conn"`
		MinBytes     uint32 `json:"block_size_minimum"`
		PrefBytes    uint32 `json:"block_size_preferred"`
		MaxBytes     uint32 `json:"block_size_maximum"`
	}
	var info struct {
		Protocol string   `json:"protocol"`
		Exports  []export `json:"exports"`
	}
	for _, uri := range []string{s.unixURI("vol"), s.tcpURI("vol")} {
		out := run(t, "nbdinfo", "--json", uri)
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("nbdinfo --json %s: %v\n%s", uri, err, out)
		}
		want := export{Name: "vol", Description: "test volume", SizeBytes: 64 << 20,
			CanFlush: true, CanFUA: true, CanTrim: true, CanZero: true, CanMultiConn: true,
			MinBytes: 512, PrefBytes: 4096, MaxBytes: 32 << 20}
		if info.Protocol != "newstyle-fixed" || len(info.Exports) != 1 || info.Exports[0] != want {
			t.Fatalf("nbdinfo %s:\n got %s %+v\nwant newstyle-fixed %+v", uri, info.Protocol, info.Exports, want)
		}
	}
	out := run(t, "nbdinfo", "--list", "--json", s.tcpURI(""))
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --list: %v\n%s", err, out)
	}
	if len(info.Exports) != 2 || info.Exports[0].Name != "vol" || info.Exports[1].Name != "ro" ||
		!info.Exports[1].ReadOnly || info.Exports[1].CanTrim {
		t.Fatalf("nbdinfo --list: %+v", info.Exports)
	}
	if out, err := exec.Command("nbdinfo", s.unixURI("missing")).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "missing") {
		t.Fatalf("nbdinfo on an unknown export: %v\n%s", err, out)
	}
}

// TestQemuIOPatternsAtOddOffsets writes and reads back patterns at
// offsets aligned to 512 but not to 4096, with FUA, write-zeroes (with
// and without holes allowed), discard and flush.
func TestQemuIOPatternsAtOddOffsets(t *testing.T) {
	need(t, "qemu-io")
	d, _ := fileDevice(t, 16<<20)
	s := serve(t, nbd.Export{Name: "vol", Device: d})
	cmds := []string{
		"write -P 0xa5 512 3584",
		"write -P 0x5a 7680 9216",
		"write -f -P 0x3c 1049088 1536", // FUA
		"write -P 0x77 2097152 65536",
		"write -z 2098176 1024",    // WRITE_ZEROES with NO_HOLE
		"write -z -u 2101248 4096", // WRITE_ZEROES, holes allowed
		"discard 2113536 8192",     // TRIM
		"flush",
		"read -P 0 0 512",
		"read -P 0xa5 512 3584",
		"read -P 0 4096 3584",
		"read -P 0x5a 7680 9216",
		"read -P 0x3c 1049088 1536",
		"read -P 0x77 2097152 1024",
		"read -P 0 2098176 1024",
		"read -P 0x77 2099200 2048",
		"read -P 0 2101248 4096",
		"read -P 0x77 2105344 8192",
		"read -P 0x77 2121728 40960",
	}
	for _, uri := range []string{s.unixURI("vol"), s.tcpURI("vol")} {
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		out := run(t, "qemu-io", append(args, uri)...)
		if strings.Contains(out, "failed") || strings.Contains(out, "error") {
			t.Fatalf("qemu-io on %s:\n%s", uri, out)
		}
	}
	// After a discard the device reads zeros whatever the client cached.
	out := run(t, "qemu-io", "-f", "raw", "-c", "read -P 0 2113536 8192", s.unixURI("vol"))
	if strings.Contains(out, "failed") {
		t.Fatalf("discarded range after reconnect:\n%s", out)
	}
}

// TestQemuImgConvertRoundTrip converts a qcow2 image into the export and
// back and compares contents.
func TestQemuImgConvertRoundTrip(t *testing.T) {
	need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src.qcow2"), filepath.Join(dir, "back.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", src, "64M")
	run(t, "qemu-io", "-f", "qcow2",
		"-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 5M 3M", "-c", "write -P 0x33 63M 512k",
		"-c", "write -P 0x44 20971008 4096", src)
	d, _ := fileDevice(t, 64<<20)
	s := serve(t, nbd.Export{Name: "vol", Device: d})
	run(t, "qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", src, s.unixURI("vol"))
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", s.tcpURI("vol"), back)
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", src, back)
	srcRaw, backRaw := filepath.Join(dir, "src.raw"), filepath.Join(dir, "back.raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, srcRaw)
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", back, backRaw)
	if a, b := sha256File(t, srcRaw), sha256File(t, backRaw); a != b {
		t.Fatalf("sha256 of source %s != round trip %s", a, b)
	}
}

// TestNbdcopy256MiB copies 256 MiB of random data in and out.
func TestNbdcopy256MiB(t *testing.T) {
	need(t, "nbdcopy")
	const sizeBytes = 256 << 20
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.raw"), filepath.Join(dir, "out.raw")
	writeRandomFile(t, in, sizeBytes, 1)
	d, _ := fileDevice(t, sizeBytes)
	s := serve(t, nbd.Export{Name: "vol", Device: d})
	run(t, "nbdcopy", in, s.unixURI("vol"))
	run(t, "nbdcopy", s.tcpURI("vol"), out)
	if a, b := sha256File(t, in), sha256File(t, out); a != b {
		t.Fatalf("sha256 in %s != out %s", a, b)
	}
}

// TestFioVerify runs fio's nbd engine with crc32c verification: two jobs
// (two connections) on disjoint halves, random writes at depth 16, then
// a verifying read pass.
func TestFioVerify(t *testing.T) {
	need(t, "fio")
	if out, _ := exec.Command("fio", "--enghelp=nbd").CombinedOutput(); !bytes.Contains(out, []byte("uri")) {
		testenv.Unavailable(t, "this fio has no nbd engine")
	}
	d, _ := fileDevice(t, 64<<20)
	s := serve(t, nbd.Export{Name: "vol", Device: d})
	for _, uri := range []string{s.unixURI("vol"), s.tcpURI("vol")} {
		out := run(t, "fio", "--name=verify", "--ioengine=nbd", "--uri="+uri,
			"--rw=randwrite", "--bsrange=512-64k", "--bs_unaligned=0", "--iodepth=16",
			"--numjobs=2", "--size=32M", "--offset_increment=32M",
			"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--group_reporting")
		// fio exits non-zero on a verify failure (run fails the test);
		// the output check catches a fio that does not.
		if strings.Contains(out, "verify: bad") || !strings.Contains(out, "err= 0") {
			t.Fatalf("fio on %s:\n%s", uri, out)
		}
	}
}

func writeRandomFile(t *testing.T, path string, sizeBytes int, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	if _, err := io.CopyN(f, rng, int64(sizeBytes)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
