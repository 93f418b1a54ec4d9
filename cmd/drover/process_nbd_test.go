package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/testenv"
)

// needTools stops the test when a real client is missing (see testenv;
// .ci/run installs them all).
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	testenv.NeedTools(t, tools...)
}

// sh runs a command to completion and fails the test with its output if
// it fails.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// devServer is a `drover dev` process serving NBD on a unix socket in its
// data dir, restartable on the same dir.
type devServer struct {
	*volumeClient
	dataDir, sizeArg string
	proc             *proc
}

func newDevServer(t *testing.T, sizeBytes uint64, sizeArg string) *devServer {
	d := &devServer{volumeClient: &volumeClient{t: t, ctlAddr: freeAddr(t), size: sizeBytes},
		dataDir: t.TempDir(), sizeArg: sizeArg}
	client, conn, err := control.Dial(d.ctlAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d.client = client
	d.start()
	return d
}

func (d *devServer) socket() string { return filepath.Join(d.dataDir, "nbd.sock") }

// uri is the export's URI, as drover dev prints it.
func (d *devServer) uri() string { return nbd.UnixURI(d.socket(), "dev") }

// start runs drover dev (the default frontend, NBD) and waits until it
// serves and prints the export's URI and how to attach it.
func (d *devServer) start() {
	d.t.Helper()
	d.proc = start(d.t, "dev", nil, "dev", "--data-dir", d.dataDir, "--size", d.sizeArg,
		"--control", d.ctlAddr, "--nbd-listen", "unix:"+d.socket())
	d.waitModes("drover dev serving", "", "", "")
	eventually(d.t, "drover dev printing its NBD export", func() (bool, string) {
		out := d.proc.output()
		return strings.Contains(out, "NBD export: "+d.uri()) && strings.Contains(out, "nbdfuse") &&
			strings.Contains(out, "stop with"), out
	})
}

// TestProcessDevNBDKill9: real NBD clients write to `drover dev` (nbdcopy
// random data in, qemu-io a pattern at an unaligned offset, both flushed);
// after kill -9 and a restart on the same data dir, nbdcopy reads back
// the same SHA-256 and qemu-io finds its pattern.
func TestProcessDevNBDKill9(t *testing.T) {
	needTools(t, "nbdcopy", "qemu-io")
	const sizeBytes = 32 << 20
	d := newDevServer(t, sizeBytes, "32MiB")
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	want := make([]byte, sizeBytes)
	if _, err := rand.Read(want); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in, want, 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, "nbdcopy", "--flush", in, d.uri())
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0xa5 1536 9216", "-c", "flush", d.uri())
	copy(want[1536:1536+9216], bytes.Repeat([]byte{0xa5}, 9216))

	d.proc.kill()
	d.start()
	sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0xa5 1536 9216", d.uri())
	sh(t, "nbdcopy", d.uri(), out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if sha(got) != sha(want) {
		t.Fatalf("after kill -9 and restart the volume reads back sha256 %s, want %s", sha(got), sha(want))
	}
	d.proc.stop()
}

// TestProcessDevExt4Kill9 puts ext4 on `drover dev` through nbdfuse and a
// loop device, writes files, unmounts, kills drover dev with SIGKILL,
// restarts it, and requires fsck.ext4 -f to be clean and the files intact.
func TestProcessDevExt4Kill9(t *testing.T) {
	needTools(t, "nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount")
	testenv.NeedRoot(t, "losetup and mount")
	testenv.NeedFUSE(t)
	d := newDevServer(t, 128<<20, "128MiB")
	dir := t.TempDir()
	fsDir := filepath.Join(dir, "fs")
	if err := os.Mkdir(fsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for i, sizeBytes := range []int{1, 4095, 4096, 1 << 20, 3<<20 + 17, 8 << 20} {
		p := make([]byte, sizeBytes)
		_, _ = rand.Read(p)
		files[string(rune('a'+i))] = p
	}

	attach := func(round int) (loop string, detach func()) {
		fuseDir := filepath.Join(dir, "fuse"+string(rune('0'+round)))
		if err := os.Mkdir(fuseDir, 0o755); err != nil {
			t.Fatal(err)
		}
		image, unmount := nbdfuse(t, fuseDir, d.uri())
		out, err := exec.Command("losetup", "--find", "--show", image).CombinedOutput()
		if err != nil {
			unmount()
			testenv.Unavailable(t, "no loop device available (%v: %s)", err, out)
		}
		loop = strings.TrimSpace(string(out))
		detach = func() {
			exec.Command("losetup", "-d", loop).Run()
			unmount()
		}
		t.Cleanup(detach)
		return loop, detach
	}

	loop, detach := attach(1)
	sh(t, "mkfs.ext4", "-q", "-F", loop)
	sh(t, "mount", "-t", "ext4", loop, fsDir)
	t.Cleanup(func() { exec.Command("umount", fsDir).Run() })
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(fsDir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sh(t, "umount", fsDir)
	detach()
	d.proc.kill()

	d.start()
	loop, _ = attach(2)
	sh(t, "fsck.ext4", "-f", "-n", loop)
	sh(t, "mount", "-t", "ext4", loop, fsDir)
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(fsDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes read back differ from the %d written", name, len(got), len(want))
		}
	}
	sh(t, "umount", fsDir)
}

// nbdfuse runs nbdfuse on uri under dir and returns the file it exposes
// and a function that unmounts it (also run at cleanup).
func nbdfuse(t *testing.T, dir, uri string) (string, func()) {
	t.Helper()
	pidfile := filepath.Join(t.TempDir(), "pid")
	cmd := exec.Command("nbdfuse", "-P", pidfile, filepath.Join(dir, "disk"), uri)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	done := false
	unmount := func() {
		if done {
			return
		}
		done = true
		exec.Command("fusermount3", "-u", dir).Run()
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	t.Cleanup(unmount)
	deadline := time.After(30 * time.Second)
	for {
		if _, err := os.Stat(pidfile); err == nil { // written once mounted
			return filepath.Join(dir, "disk"), unmount
		}
		select {
		case <-exited:
			testenv.Unavailable(t, "nbdfuse exited before mounting (%v: %s)", waitErr, stderr.String())
		case <-deadline:
			t.Fatalf("nbdfuse did not mount within 30s: %s", stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestProcessFioKillReplica runs fio's nbd engine with crc32c verification
// against a `drover engine` over three `drover replica` processes and
// kills one replica with SIGKILL while fio writes: fio sees no error and
// no verify failure, the volume keeps serving with the replica ERR, and
// after a restart the replica is rebuilt; the three replicas then hold
// the same content as the volume.
func TestProcessFioKillReplica(t *testing.T) {
	needTools(t, "fio", "nbdcopy")
	if out, _ := exec.Command("fio", "--enghelp=nbd").CombinedOutput(); !bytes.Contains(out, []byte("uri")) {
		testenv.Unavailable(t, "this fio has no nbd engine")
	}
	const sizeBytes = 128 << 20
	c := newCluster(t, sizeBytes, []string{freeAddr(t), freeAddr(t), freeAddr(t)}, make([][]string, 3))
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	c.startEngine("--frontend", "nbd", "--nbd-listen", "unix:"+sock)
	uri := nbd.UnixURI(sock, "test")

	fio := exec.Command("fio", "--name=verify", "--ioengine=nbd", "--uri="+uri,
		"--rw=randwrite", "--bsrange=4k-64k", "--iodepth=16", "--numjobs=2", "--size=64M", "--offset_increment=64M",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--group_reporting")
	var fioOut lockedBuffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	fio.Dir = t.TempDir()
	start := time.Now()
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	fioDone := make(chan error, 1)
	go func() { fioDone <- fio.Wait() }()
	t.Cleanup(func() { fio.Process.Kill() })
	// The write phase takes about 2s here; the kill lands well inside it.
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-fioDone:
		t.Fatalf("fio finished (%v) before the replica was killed; make its run longer:\n%s", err, fioOut.String())
	default:
	}
	c.replicas[1].kill()
	killedAt := time.Since(start)
	var err error
	select {
	case err = <-fioDone:
	case <-time.After(2 * time.Minute):
		t.Fatalf("fio still running 2 minutes after the kill:\n%s", fioOut.String())
	}
	out := fioOut.String()
	if err != nil || strings.Contains(out, "verify: bad") || !strings.Contains(out, "err= 0") {
		t.Fatalf("fio: %v\n%s", err, out)
	}
	t.Logf("fio ran %v, replica 2 killed at %v", time.Since(start).Round(time.Millisecond), killedAt.Round(time.Millisecond))
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "IOPS=") {
			t.Log(strings.TrimSpace(line))
		}
	}
	c.waitModes("the volume serving with replica 2 ERR", "RW", "ERR", "RW")

	c.startReplica(1)
	c.waitModes("replica 2 rebuilt after restart", "RW", "RW", "RW")
	img := filepath.Join(t.TempDir(), "img")
	sh(t, "nbdcopy", uri, img)
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	want := sha(data)
	for i, s := range c.checksums() {
		if s != want {
			t.Errorf("replica %d checksum %s, want the volume's %s", i+1, s, want)
		}
	}
}

// TestProcessDevISCSICHAP: `drover dev --frontend iscsi` with CHAP serves
// the volume as LUN 0 of iqn...:dev to an initiator with the secret
// (libiscsi's iscsi-readcapacity16 reads its size) and refuses one
// without it, logging the failure with its count; discovery (iscsi-ls)
// needs the secret too.
func TestProcessDevISCSICHAP(t *testing.T) {
	needTools(t, "iscsi-readcapacity16", "iscsi-ls")
	const user, secret = "drover-test", "a-secret-of-16-bytes"
	ctl, portal := freeAddr(t), freeAddr(t)
	c := newVolumeClient(t, ctl, testSizeBytes)
	p := start(t, "dev", nil, "dev", "--data-dir", t.TempDir(), "--size", "4MiB", "--control", ctl,
		"--frontend", "iscsi", "--iscsi-listen", portal, "--iscsi-chap-user", user, "--iscsi-chap-secret", secret)
	c.waitModes("drover dev serving", "", "", "")
	eventually(t, "drover dev printing its iSCSI target", func() (bool, string) {
		return strings.Contains(p.output(), "iSCSI target iqn.2026-11.io.drover:dev on portal "+portal), p.output()
	})
	url := func(cred string) string { return "iscsi://" + cred + portal + "/iqn.2026-11.io.drover:dev/0" }
	if out := sh(t, "iscsi-readcapacity16", "-s", url(user+"%"+secret+"@")); strings.TrimSpace(out) != "4194304" {
		t.Errorf("iscsi-readcapacity16 -s = %q, want 4194304", out)
	}
	if out, err := exec.Command("iscsi-readcapacity16", "-s", url(user+"%wrong-secret-123456@")).CombinedOutput(); err == nil {
		t.Errorf("a login with the wrong CHAP secret was accepted:\n%s", out)
	}
	if out, err := exec.Command("iscsi-ls", "-s", "iscsi://"+portal).CombinedOutput(); err == nil || strings.Contains(string(out), "iqn.2026-11.io.drover:dev") {
		t.Errorf("discovery without CHAP listed the target: %v\n%s", err, out)
	}
	if out := sh(t, "iscsi-ls", "-s", "iscsi://"+user+"%"+secret+"@"+portal); !strings.Contains(out, "Target:iqn.2026-11.io.drover:dev") {
		t.Errorf("discovery with CHAP does not list the target:\n%s", out)
	}
	p.stop()
	if !strings.Contains(p.output(), "CHAP login failed") || !strings.Contains(p.output(), "failures=1 next_attempt_delay=200ms") {
		t.Errorf("the failed login is not logged with its count and delay:\n%s", p.output())
	}
}
