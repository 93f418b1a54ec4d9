package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-io/drover/transports/certs"
	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/testenv"
)

// nobodyUID is the uid (and gid) of the unprivileged user nobody.
const nobodyUID = 65534

// openDir is a directory anyone may enter, holding a copy of the drover
// binary anyone may run: with the test's own (0700) temporary directories,
// nobody would be kept out by them, not by what drover does.
func openDir(t *testing.T) (dir, bin string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "drover-sec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(droverBin)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin = filepath.Join(dir, "drover")
	dst, err := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

// asNobody runs argv as user nobody and returns its output and whether it
// succeeded.
func asNobody(t *testing.T, argv ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyUID, Gid: nobodyUID}}
	cmd.Dir = "/"
	cmd.Env = []string{"HOME=/nonexistent", "PATH=/usr/bin:/bin"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err == nil
}

// wantMode fails t unless path has permission bits want.
func wantMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != want {
		t.Errorf("%s: mode %o, want %o", path, got, want)
	}
}

// TestProcessNobodyLockedOut: drover dev's control API is a unix socket
// in its data dir that only its user (and root) may use, the data dir is
// 0700 and replica files 0600, and its loopback TCP control address, NBD
// export (TCP and unix socket) and CHAP-less iSCSI portal serve only its
// user and root. The user nobody can neither control the volume nor read
// its data: not through the sockets, not even with the data dir opened up
// to everyone, not with the sockets themselves opened up (the servers
// check the caller's uid), not over loopback TCP (the owner of the peer's
// socket is checked), and not from the files. Every mutating call is
// logged with the caller's uid.
func TestProcessNobodyLockedOut(t *testing.T) {
	testenv.NeedRoot(t, "running commands as the user nobody")
	dir, bin := openDir(t)
	dataDir := filepath.Join(dir, "data")
	sock := filepath.Join(dataDir, controlSocketName)
	needTools(t, "nbdinfo", "iscsi-inq")
	ctlTCP, nbdTCP, portal := freeAddr(t), freeAddr(t), freeAddr(t)
	nbdSock := filepath.Join(dataDir, "nbd.sock")
	dev := start(t, "dev", nil, "dev", "--data-dir", dataDir, "--size", "4MiB", "--control", ctlTCP,
		"--frontend", "nbd,iscsi", "--nbd-listen", "unix:"+nbdSock+","+nbdTCP, "--iscsi-listen", portal)
	c := newVolumeClient(t, "unix:"+sock, 4<<20)
	c.waitServing()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, bytes.Repeat([]byte("TOPSECRET-"), 4096/10+1)[:4096], 0o644); err != nil {
		t.Fatal(err)
	}
	// The owner needs no flags: drover finds the socket in the
	// (default) data dir.
	ownerEnv := []string{"XDG_DATA_HOME=" + filepath.Join(dir, "xdg"), "XDG_RUNTIME_DIR=" + filepath.Join(dir, "run"), controlEnv + "="}
	if err := os.MkdirAll(filepath.Join(dir, "xdg", "drover"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dataDir, filepath.Join(dir, "xdg", "drover", "dev")); err != nil {
		t.Fatal(err)
	}
	droverEnv(t, ownerEnv, "volume", "write", "--offset", "0", "--file", secret)
	droverEnv(t, ownerEnv, "snapshot", "create", "s1")
	runDrover(t, "volume", "flush", "--control", "unix:"+sock)

	wantMode(t, dataDir, 0o700)
	wantMode(t, filepath.Join(dataDir, "dev-1"), 0o700)
	wantMode(t, sock, 0o600)
	files, _ := filepath.Glob(filepath.Join(dataDir, "dev-1", "*"))
	for _, f := range files {
		wantMode(t, f, 0o600)
	}

	// Root reaches every frontend and the TCP control address.
	sh(t, "nbdinfo", "--size", "nbd://"+nbdTCP+"/dev")
	sh(t, "nbdinfo", "--size", "nbd+unix:///dev?socket="+nbdSock)
	sh(t, "iscsi-inq", "iscsi://"+portal+"/iqn.2026-11.io.drover:dev/0")
	runDrover(t, "volume", "info", "--control", ctlTCP)
	attempts := [][]string{
		{bin, "volume", "info", "--control", ctlTCP, "--timeout", "5s"},
		{bin, "snapshot", "create", "evil", "--control", ctlTCP, "--timeout", "5s"},
		{"nbdinfo", "--size", "nbd://" + nbdTCP + "/dev"},
		{"nbdinfo", "--size", "nbd+unix:///dev?socket=" + nbdSock},
		{"iscsi-inq", "iscsi://" + portal + "/iqn.2026-11.io.drover:dev/0"},
		{bin, "volume", "info", "--control", "unix:" + sock},
		{bin, "volume", "write", "--offset", "0", "--file", secret, "--control", "unix:" + sock},
		{bin, "snapshot", "create", "evil", "--control", "unix:" + sock},
		{bin, "replica", "rm", "dev-3", "--control", "unix:" + sock},
		{bin, "volume", "read", "--offset", "0", "--length", "4096", "--control", "unix:" + sock},
	}
	reads := [][]string{{"cat", filepath.Join(dataDir, "dev-1", "layer-1.data")}, {"cat", filepath.Join(dataDir, "dev-1", "meta")}}
	denied := func(stage string) {
		t.Helper()
		for _, argv := range append(append([][]string{}, attempts...), reads...) {
			out, ok := asNobody(t, argv...)
			if ok || strings.Contains(out, "TOPSECRET") {
				t.Errorf("%s: nobody ran %s:\n%s", stage, strings.Join(argv[1:], " "), out)
			}
		}
	}
	denied("data dir 0700")
	// Opened up by its owner, the data dir still keeps its files and
	// its socket private.
	if err := os.Chmod(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	denied("data dir 0755")
	if out, _ := asNobody(t, bin, "volume", "info", "--control", "unix:"+sock); !strings.Contains(out, "permission denied") {
		t.Errorf("nobody's refusal does not say permission denied:\n%s", out)
	}
	// With the sockets opened up too, the servers refuse nobody's uid.
	for _, p := range []string{sock, nbdSock} {
		if err := os.Chmod(p, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	for _, argv := range attempts {
		if argv[0] == bin {
			argv = append(argv, "--timeout", "5s")
		}
		if out, ok := asNobody(t, argv...); ok {
			t.Errorf("socket 0666: nobody ran %s:\n%s", strings.Join(argv[1:], " "), out)
		}
	}
	info, err := c.volumeInfo()
	if err != nil || len(info.GetReplicas()) != 3 {
		t.Fatalf("after nobody's attempts: %v, %v", info, err)
	}
	dev.stop()
	out := dev.output()
	for _, want := range []string{`method=Write caller="unix uid=0(root)`, `method=SnapshotCreate caller="unix uid=0(root)`,
		`refused a caller on the unix socket caller="uid=65534(nobody)`, `refused a loopback caller caller="uid=65534(nobody)`,
		`nbd: connection refused`, `connection from another user: 65534(nobody)`} {
		if !strings.Contains(out, want) {
			t.Errorf("dev's log lacks %q", want)
		}
	}
	if strings.Contains(out, "evil") {
		t.Errorf("nobody's snapshot reached the engine:\n%s", out)
	}
}

// TestProcessControlTLS: the control API on a non-loopback TCP address
// needs mutual TLS (certificates from drover certs) or --insecure-listen,
// which warns; with TLS a client needs a certificate from the CA, and
// its calls are logged with the certificate's subject.
func TestProcessControlTLS(t *testing.T) {
	dir := t.TempDir()
	certsDir := filepath.Join(dir, "certs")
	runDrover(t, "certs", "init", "--dir", certsDir, "--cluster", "test")
	runDrover(t, "certs", "issue", "engine", "--dir", certsDir, "--host", "127.0.0.1")
	runDrover(t, "certs", "issue", "admin", "--dir", certsDir)
	wantMode(t, filepath.Join(certsDir, "ca.key"), 0o600)
	wantMode(t, filepath.Join(certsDir, "admin.key"), 0o600)
	tlsArgs := func(name string) []string {
		return []string{"--tls-cert", filepath.Join(certsDir, name+".crt"), "--tls-key", filepath.Join(certsDir, name+".key"),
			"--tls-ca", filepath.Join(certsDir, "ca.crt")}
	}
	port := freeAddr(t)[len("127.0.0.1:"):]
	wantFail(t, []string{"refusing an unauthenticated control API beyond loopback", "--insecure-listen"},
		"dev", "--data-dir", filepath.Join(dir, "refused"), "--size", "4MiB", "--frontend", "none", "--control", "0.0.0.0:"+port)
	if _, err := os.Stat(filepath.Join(dir, "refused")); !os.IsNotExist(err) {
		t.Errorf("the refused run left its data dir: %v", err)
	}

	dev := start(t, "dev", nil, append([]string{"dev", "--data-dir", filepath.Join(dir, "data"), "--size", "4MiB",
		"--frontend", "none", "--control", "0.0.0.0:" + port}, tlsArgs("engine")...)...)
	c := newVolumeClient(t, "unix:"+filepath.Join(dir, "data", controlSocketName), 4<<20)
	c.waitServing()
	runDrover(t, append([]string{"snapshot", "create", "s1", "--control", "127.0.0.1:" + port}, tlsArgs("admin")...)...)
	wantFail(t, nil, "snapshot", "create", "s2", "--control", "127.0.0.1:"+port, "--timeout", "3s")
	dev.stop()
	if out := dev.output(); !strings.Contains(out, `method=SnapshotCreate caller="tls CN=admin,O=test`) ||
		strings.Contains(out, "s2") {
		t.Errorf("dev's log: want admin's snapshot logged with its certificate and no s2:\n%s", out)
	}

	insecure := start(t, "dev insecure", nil, "dev", "--data-dir", filepath.Join(dir, "data"), "--frontend", "none",
		"--control", "0.0.0.0:"+port, "--insecure-listen")
	c.waitServing()
	insecure.stop()
	if out := insecure.output(); !strings.Contains(out, "control API listens without authentication (--insecure-listen)") {
		t.Errorf("no warning for --insecure-listen:\n%s", out)
	}
}

// TestProcessReplicaTLS: replicas and engine as separate processes with
// certificates from drover certs: the volume serves over mutual TLS and
// writes read back; an engine without TLS, and one with a certificate
// from another CA, are refused by every replica (logged), and the volume
// does not serve for them. A replica refuses to listen beyond loopback
// without TLS.
func TestProcessReplicaTLS(t *testing.T) {
	dir := t.TempDir()
	ca, rogue := filepath.Join(dir, "certs"), filepath.Join(dir, "rogue")
	runDrover(t, "certs", "init", "--dir", ca, "--cluster", "c1")
	runDrover(t, "certs", "init", "--dir", rogue, "--cluster", "c2")
	runDrover(t, "certs", "issue", "replica", "--dir", ca, "--host", "127.0.0.1")
	runDrover(t, "certs", "issue", "engine", "--dir", ca, "--host", "127.0.0.1")
	runDrover(t, "certs", "issue", "admin", "--dir", ca)
	runDrover(t, "certs", "issue", "engine", "--dir", rogue, "--host", "127.0.0.1")
	tlsArgs := func(dir, name string) []string {
		return []string{"--tls-cert", filepath.Join(dir, name+".crt"), "--tls-key", filepath.Join(dir, name+".key"),
			"--tls-ca", filepath.Join(ca, "ca.crt")} // the rogue engine trusts the replicas; they must not trust it
	}
	wantFail(t, []string{"refusing plain TCP beyond loopback", "--insecure-listen"},
		"replica", "--dir", filepath.Join(dir, "open"), "--listen", "0.0.0.0:"+freeAddr(t)[len("127.0.0.1:"):], "--size", "4MiB")

	c := newCluster(t, testSizeBytes, []string{freeAddr(t), freeAddr(t), freeAddr(t)}, make([][]string, 3), tlsArgs(ca, "replica")...)
	// The engine's certificates guard its TCP control address too.
	admin, err := certs.Files{Cert: filepath.Join(ca, "admin.crt"), Key: filepath.Join(ca, "admin.key"), CA: filepath.Join(ca, "ca.crt")}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	client, conn, err := control.Dial(c.ctlAddr, control.DialConfig{TLS: admin})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c.client = client
	c.startEngine(tlsArgs(ca, "engine")...)
	l := newLoad(c.volumeClient, 5)
	for range 20 {
		l.write()
	}
	l.flush()
	l.verify("over mutual TLS")
	c.engine.stop()

	for _, tc := range []struct {
		name string
		args []string
	}{{"plain engine", nil}, {"engine of another CA", tlsArgs(rogue, "engine")}} {
		var reps []string
		for i, a := range c.addrs {
			reps = append(reps, fmt.Sprintf("r%d=%s", i+1, a))
		}
		eng := start(t, tc.name, nil, append([]string{"engine", "--volume", "test", "--replicas", strings.Join(reps, ","),
			"--control", c.ctlAddr, "--replica-timeout", "3s"}, tc.args...)...)
		eventually(t, tc.name+" refused by every replica", func() (bool, string) {
			for _, r := range c.replicas {
				if strings.Count(r.output(), "TLS handshake") == 0 {
					return false, r.output()
				}
			}
			return true, ""
		})
		if out := eng.output(); strings.Contains(out, "volume test serving") || strings.Contains(out, "replica link up") {
			t.Errorf("%s reached the replicas:\n%s", tc.name, out)
		}
		eng.stop()
		for _, r := range c.replicas {
			r.out.mu.Lock()
			r.out.buf.Reset()
			r.out.mu.Unlock()
		}
	}
}

// TestProcessNBDTLS: drover dev with --nbd-tls-* serves its TCP NBD
// address only over TLS with a client certificate from the CA (nbdinfo
// nbds://), while its unix socket stays plain; a plain NBD address
// beyond loopback is refused.
func TestProcessNBDTLS(t *testing.T) {
	needTools(t, "nbdinfo")
	dir := t.TempDir()
	ca := filepath.Join(dir, "certs")
	runDrover(t, "certs", "init", "--dir", ca)
	runDrover(t, "certs", "issue", "server", "--dir", ca, "--host", "127.0.0.1")
	runDrover(t, "certs", "issue", "client", "--dir", ca)
	// libnbd reads a GnuTLS-style directory.
	client := filepath.Join(dir, "client")
	if err := os.Mkdir(client, 0o700); err != nil {
		t.Fatal(err)
	}
	for from, to := range map[string]string{"ca.crt": "ca-cert.pem", "client.crt": "client-cert.pem", "client.key": "client-key.pem"} {
		if err := os.Symlink(filepath.Join(ca, from), filepath.Join(client, to)); err != nil {
			t.Fatal(err)
		}
	}
	wantFail(t, []string{"refusing plain TCP beyond loopback", "--nbd-insecure-listen"},
		"dev", "--data-dir", filepath.Join(dir, "refused"), "--size", "4MiB", "--nbd-listen", "0.0.0.0:"+freeAddr(t)[len("127.0.0.1:"):])

	sock, tcpAddr := filepath.Join(dir, "nbd.sock"), freeAddr(t)
	p := start(t, "dev", nil, "dev", "--data-dir", filepath.Join(dir, "data"), "--size", "4MiB",
		"--nbd-listen", "unix:"+sock+","+tcpAddr, "--nbd-tls-cert", filepath.Join(ca, "server.crt"),
		"--nbd-tls-key", filepath.Join(ca, "server.key"), "--nbd-tls-ca", filepath.Join(ca, "ca.crt"))
	eventually(t, "dev serving NBD", func() (bool, string) {
		return strings.Contains(p.output(), "stop with Ctrl-C"), p.output()
	})
	if !strings.Contains(p.output(), "nbds://"+tcpAddr+"/dev") {
		t.Errorf("dev does not print the nbds:// URI:\n%s", p.output())
	}
	if out := sh(t, "nbdinfo", "--size", "nbds://"+tcpAddr+"/dev?tls-certificates="+client); strings.TrimSpace(out) != "4194304" {
		t.Errorf("nbdinfo over TLS: %q", out)
	}
	if out, err := exec.Command("nbdinfo", "--size", "nbd://"+tcpAddr+"/dev").CombinedOutput(); err == nil {
		t.Errorf("plain NBD over TCP was served:\n%s", out)
	}
	if out := sh(t, "nbdinfo", "--size", "nbd+unix:///dev?socket="+sock); strings.TrimSpace(out) != "4194304" {
		t.Errorf("nbdinfo on the unix socket: %q", out)
	}
	p.stop()
}

// TestProcessEngineControlSocket: drover engine without --control serves
// its control API on a unix socket (0600) in a directory of its own
// (0700) under the run directory, and the CLI finds it there without
// flags.
func TestProcessEngineControlSocket(t *testing.T) {
	run := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", run)
	t.Setenv("XDG_DATA_HOME", t.TempDir()) // no drover dev socket to find
	t.Setenv(controlEnv, "")
	c := newCluster(t, testSizeBytes, []string{freeAddr(t), freeAddr(t)}, make([][]string, 2))
	eng := start(t, "engine", nil, "engine", "--volume", "sockvol", "--replicas", strings.Join(c.addrs, ","))
	sock := filepath.Join(run, "drover", "sockvol", controlSocketName)
	eventually(t, "the engine serving", func() (bool, string) {
		out, err := exec.Command(droverBin, "volume", "info").CombinedOutput()
		return err == nil && strings.Contains(string(out), "serving"), string(out) + eng.output()
	})
	wantMode(t, sock, 0o600)
	wantMode(t, filepath.Dir(sock), 0o700)
	if !strings.Contains(eng.output(), "control API on unix:"+sock) {
		t.Errorf("the engine does not say where its control API is:\n%s", eng.output())
	}
	eng.stop()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket outlived the engine: %v", err)
	}
}
