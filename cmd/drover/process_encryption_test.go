package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProcessDevEncrypted: drover dev --encryption-key-file encrypts in
// the engine's process: data written through NBD (whole and partial
// blocks) reads back through NBD, but no replica file, no backup object
// and no control API read holds it; a restart without the key or with
// another key is refused with the reason, and with the key the data is
// there.
func TestProcessDevEncrypted(t *testing.T) {
	needTools(t, "nbdcopy", "qemu-io")
	dir := t.TempDir()
	key, other := filepath.Join(dir, "vol.key"), filepath.Join(dir, "other.key")
	runDrover(t, "key", "new", key)
	runDrover(t, "key", "new", other)
	wantMode(t, key, 0o600)
	secret := bytes.Repeat([]byte("DROVER-SECRET-PATTERN:"), 1<<20/22+1)[:1<<20]
	src := filepath.Join(dir, "secret.img")
	if err := os.WriteFile(src, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir, sock := filepath.Join(dir, "data"), filepath.Join(dir, "nbd.sock")
	ctl := "unix:" + filepath.Join(dataDir, controlSocketName)
	args := []string{"dev", "--data-dir", dataDir, "--size", "8MiB", "--nbd-listen", "unix:" + sock}
	uri := "nbd+unix:///dev?socket=" + sock
	startDev := func(extra ...string) *proc {
		p := start(t, "dev", nil, append(append([]string{}, args...), extra...)...)
		eventually(t, "dev serving NBD", func() (bool, string) {
			return strings.Contains(p.output(), "stop with Ctrl-C"), p.output()
		})
		return p
	}
	p := startDev("--encryption-key-file", key)
	if !strings.Contains(p.output(), "encrypted (AES-256-XTS)") {
		t.Errorf("dev does not say the volume is encrypted:\n%s", p.output())
	}
	sh(t, "nbdcopy", src, uri)
	// A partial block goes through the read-modify-write path.
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1049088 1024", "-c", "flush", uri)
	back := filepath.Join(dir, "back.img")
	sh(t, "nbdcopy", uri, back)
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:1<<20], secret) || !bytes.Equal(got[1049088:1049088+1024], bytes.Repeat([]byte{0x5a}, 1024)) {
		t.Fatal("what NBD wrote does not read back through NBD")
	}
	if out := runDrover(t, "volume", "read", "--control", ctl, "--offset", "0", "--length", "1MiB"); strings.Contains(out, "DROVER-SECRET") {
		t.Error("the control API read returns plaintext")
	}
	target := filepath.Join(dir, "backups")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	runDrover(t, "backup", "create", "--control", ctl, "--target", target, "--quiet")
	p.stop()
	holds := 0
	for _, root := range []string{dataDir, target} {
		err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Type()&os.ModeSocket != 0 {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if bytes.Contains(b, []byte("DROVER-SECRET")) {
				t.Errorf("%s holds the plaintext", path)
			}
			if len(b) > 1<<20 {
				holds++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if holds == 0 {
		t.Error("no file of a MiB or more under the data dir and backups: nothing was checked")
	}

	wantFail(t, []string{"holds an encrypted volume", "--encryption-key-file"}, args...)
	wantFail(t, []string{"wrong encryption key"}, append(args, "--encryption-key-file", other)...)
	p = startDev("--encryption-key-file", key)
	sh(t, "nbdcopy", uri, back+"2")
	if got, err := os.ReadFile(back + "2"); err != nil || !bytes.Equal(got[:1<<20], secret) {
		t.Fatalf("after a restart with the key: %v", err)
	}
	p.stop()
}

// TestProcessKeyRewrap: a key wrapped by a passphrase opens the volume
// with it; after drover key rewrap the new passphrase opens the same
// volume and the old one is refused as a wrong passphrase, and a wrapped
// key without a passphrase is refused with the flag to give.
func TestProcessKeyRewrap(t *testing.T) {
	dir := t.TempDir()
	key, p1, p2 := filepath.Join(dir, "vol.key"), filepath.Join(dir, "p1"), filepath.Join(dir, "p2")
	for path, pass := range map[string]string{p1: "correct horse\n", p2: "battery staple\n"} {
		if err := os.WriteFile(path, []byte(pass), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	runDrover(t, "key", "new", key, "--passphrase-file", p1)
	if b, err := os.ReadFile(key); err != nil || !strings.Contains(string(b), "drover-wrapped-key-v1") {
		t.Fatalf("key file: %v\n%s", err, b)
	}
	dataDir := filepath.Join(dir, "data")
	c := newVolumeClient(t, "unix:"+filepath.Join(dataDir, controlSocketName), 4<<20)
	args := []string{"dev", "--data-dir", dataDir, "--size", "4MiB", "--frontend", "none", "--encryption-key-file", key}
	p := start(t, "dev", nil, append(args, "--encryption-passphrase-file", p1)...)
	c.waitServing()
	p.stop()
	runDrover(t, "key", "rewrap", key, "--passphrase-file", p1, "--new-passphrase-file", p2)
	wantMode(t, key, 0o600)
	wantFail(t, []string{"wrong passphrase"}, append(args, "--encryption-passphrase-file", p1)...)
	wantFail(t, []string{"wrapped by a passphrase", "--encryption-passphrase-file"}, args...)
	p = start(t, "dev", nil, append(args, "--encryption-passphrase-file", p2)...)
	c.waitServing()
	p.stop()
}

// TestProcessEngineEncrypted: drover engine --encryption-key-file over
// three replica processes: what NBD writes reads back through NBD and is
// in no replica's files; a key without --encryption-key-check, or
// another key, is refused before anything is served.
func TestProcessEngineEncrypted(t *testing.T) {
	needTools(t, "nbdcopy")
	dir := t.TempDir()
	key, other := filepath.Join(dir, "vol.key"), filepath.Join(dir, "other.key")
	runDrover(t, "key", "new", key)
	runDrover(t, "key", "new", other)
	check := strings.TrimSpace(runDrover(t, "key", "check", key))
	secret := bytes.Repeat([]byte("ENGINE-SECRET-PATTERN:"), 1<<20/22+1)[:1<<20]
	src := filepath.Join(dir, "secret.img")
	if err := os.WriteFile(src, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "nbd.sock")
	uri := "nbd+unix:///test?socket=" + sock
	c := newCluster(t, testSizeBytes, []string{freeAddr(t), freeAddr(t), freeAddr(t)}, make([][]string, 3))
	enc := []string{"--frontend", "nbd", "--nbd-listen", "unix:" + sock, "--encryption-key-file", key, "--encryption-key-check", check}
	c.startEngine(enc...)
	sh(t, "nbdcopy", src, uri)
	back := filepath.Join(dir, "back.img")
	sh(t, "nbdcopy", uri, back)
	if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got[:1<<20], secret) {
		t.Fatalf("read back through NBD: %v", err)
	}
	c.engine.stop()
	for _, d := range c.dirs {
		files, _ := filepath.Glob(filepath.Join(d, "*"))
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte("ENGINE-SECRET")) {
				t.Errorf("%s holds the plaintext", f)
			}
		}
	}
	var reps []string
	for i, a := range c.addrs {
		reps = append(reps, fmt.Sprintf("r%d=%s", i+1, a))
	}
	base := []string{"engine", "--volume", "test", "--replicas", strings.Join(reps, ","), "--control", freeAddr(t)}
	wantFail(t, []string{"does not match --encryption-key-check", "wrong encryption key"},
		append(base, "--encryption-key-file", other, "--encryption-key-check", check)...)
	wantFail(t, []string{"needs --encryption-key-check", "drover key check"}, append(base, "--encryption-key-file", key)...)
	c.startEngine(enc...)
	sh(t, "nbdcopy", uri, back+"2")
	if got, err := os.ReadFile(back + "2"); err != nil || !bytes.Equal(got[:1<<20], secret) {
		t.Fatalf("after a restart with the key: %v", err)
	}
	c.engine.stop()
}
