package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/control/controlpb"
)

// droverBin is the drover binary TestMain builds for the process tests.
var droverBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "drover-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	droverBin = filepath.Join(dir, "drover")
	out, err := exec.Command("go", "build", "-o", droverBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build drover: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a drover process started by a test.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

// lockedBuffer collects a process's output while tests read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// output is what the process printed so far.
func (p *proc) output() string { return p.out.String() }

// start runs drover with args (prefixed by prefix, e.g. ip netns exec);
// the process is killed at cleanup.
func start(t *testing.T, name string, prefix []string, args ...string) *proc {
	t.Helper()
	argv := append(append(append([]string{}, prefix...), droverBin), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{t: t, name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.t.Errorf("%s did not stop on SIGTERM; killing it", p.name)
		p.kill()
	}
}

// freeAddr returns a loopback address with a port free right now, for a
// process started next to listen on. The port comes from below Linux's
// ephemeral range (32768 and up), where every ":0" listener (an engine's
// control API, another test's server) takes its port, so none of those
// can grab it before its process binds it; and no port is handed out
// twice in one test binary (CI once saw a replica's port taken by the
// engine's control API: "bind: address already in use").
func freeAddr(t *testing.T) string {
	t.Helper()
	handedOutMu.Lock()
	defer handedOutMu.Unlock()
	for range 10000 {
		port := 20000 + rand.IntN(12000)
		if handedOut[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		addr := l.Addr().String()
		l.Close()
		handedOut[port] = true
		return addr
	}
	t.Fatal("no free loopback port between 20000 and 32000")
	return ""
}

var (
	handedOutMu sync.Mutex
	handedOut   = map[int]bool{}
)

// runDrover runs a drover subcommand to completion and returns its output.
func runDrover(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(droverBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("drover %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// eventually polls cond until it holds, failing after a generous bound
// (the tests assert outcomes, not timings).
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never happened; last state: %s", what, last)
}

// volumeClient talks to a running engine's control API.
type volumeClient struct {
	t       *testing.T
	ctlAddr string
	size    uint64
	client  controlpb.ControlClient
}

// newVolumeClient dials the control API at ctlAddr (gRPC connects lazily,
// so the server may start later); the connection closes with the test.
func newVolumeClient(t *testing.T, ctlAddr string, size uint64) *volumeClient {
	client, conn, err := control.Dial(ctlAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &volumeClient{t: t, ctlAddr: ctlAddr, size: size, client: client}
}

// modes returns the phase and each replica's mode, by replica id.
func (c *volumeClient) modes() (string, map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := c.client.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
	if err != nil {
		return "", nil, err
	}
	m := map[string]string{}
	for _, r := range info.GetReplicas() {
		m[r.GetId()] = r.GetMode()
	}
	return info.GetPhase(), m, nil
}

// waitModes waits until the engine serves and replica i has mode want[i]
// ("" = any).
func (c *volumeClient) waitModes(what string, want ...string) {
	c.t.Helper()
	eventually(c.t, what, func() (bool, string) {
		phase, m, err := c.modes()
		if err != nil {
			return false, err.Error()
		}
		if phase != "serving" {
			return false, phase
		}
		for i, w := range want {
			if w != "" && m[fmt.Sprintf("r%d", i+1)] != w {
				return false, fmt.Sprint(m)
			}
		}
		return true, ""
	})
}

// load writes random 4 KiB-multiple extents through the engine and keeps
// the expected content. flushed is the content as of the last flush.
type load struct {
	c    *volumeClient
	rng  *rand.Rand
	want []byte
	n    int
}

func newLoad(c *volumeClient, seed uint64) *load {
	return &load{c: c, rng: rand.New(rand.NewPCG(seed, seed)), want: make([]byte, c.size)}
}

// write does one write; a failed write's effect is unknown, so the test
// fails on it (these tests expect the volume to keep serving).
func (l *load) write() {
	l.c.t.Helper()
	if err := l.tryWrite(); err != nil {
		l.c.t.Fatal(err)
	}
}

func (l *load) tryWrite() error {
	blocks := 1 + l.rng.IntN(16)
	off := uint64(l.rng.IntN(int(l.c.size/4096)-blocks)) * 4096
	p := make([]byte, blocks*4096)
	for i := range p {
		p[i] = byte(l.rng.Uint32())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := l.c.client.Write(ctx, &controlpb.WriteRequest{Offset: off, Data: p}); err != nil {
		return fmt.Errorf("write %d [%d, +%d): %w", l.n, off, len(p), err)
	}
	copy(l.want[off:], p)
	l.n++
	return nil
}

// during runs fn while a goroutine writes without pause, and fails the
// test if any of those writes fails. fn must not use the load.
func (l *load) during(fn func()) {
	l.c.t.Helper()
	stop := make(chan struct{})
	done := make(chan error, 1)
	n0 := l.n
	go func() {
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if err := l.tryWrite(); err != nil {
				done <- err
				return
			}
		}
	}()
	fn()
	close(stop)
	if err := <-done; err != nil {
		l.c.t.Fatalf("write under load: %v", err)
	}
	l.c.t.Logf("%d writes under load", l.n-n0)
}

func (l *load) flush() {
	l.c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := l.c.client.Flush(ctx, &controlpb.Empty{}); err != nil {
		l.c.t.Fatalf("flush: %v", err)
	}
}

// verify reads the whole volume through the engine and compares.
func (l *load) verify(what string) {
	l.c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for off := uint64(0); off < l.c.size; off += 1 << 20 {
		rep, err := l.c.client.Read(ctx, &controlpb.ReadRequest{Offset: off, Length: 1 << 20})
		if err != nil {
			l.c.t.Fatalf("%s: read at %d: %v", what, off, err)
		}
		if !bytes.Equal(rep.GetData(), l.want[off:off+1<<20]) {
			l.c.t.Fatalf("%s: the volume's MiB at %d differs from what was written", what, off)
		}
	}
}

// testSizeBytes keeps most process tests fast; TestProcessRebuildBigVolume
// covers volumes whose rebuild needs several layer listings.
const testSizeBytes = 4 << 20

// TestProcessDevReopensVolume: drover dev serves a volume; after kill -9
// and a restart on the same data dir, every flushed write is there, and
// snapshots survive.
func TestProcessDevReopensVolume(t *testing.T) {
	dataDir := t.TempDir()
	c := newVolumeClient(t, freeAddr(t), testSizeBytes)
	startDev := func() *proc {
		p := start(t, "dev", nil, "dev", "--data-dir", dataDir, "--size", "4MiB", "--control", c.ctlAddr,
			"--nbd-listen", "unix:"+filepath.Join(dataDir, "nbd.sock"))
		c.waitModes("drover dev serving", "", "", "")
		return p
	}
	dev := startDev()
	l := newLoad(c, 7)
	for i := 0; i < 30; i++ {
		l.write()
	}
	l.flush()
	runDrover(t, "snapshot", "create", "snap1", "--control", c.ctlAddr)
	dev.kill()
	dev = startDev()
	l.verify("after kill -9 and reopen")
	if ls := runDrover(t, "snapshot", "ls", "--control", c.ctlAddr); !strings.Contains(ls, "\nsnap1 ") {
		t.Errorf("snapshot ls after reopen = %q, want snap1 listed", ls)
	}
	info := runDrover(t, "volume", "info", "--control", c.ctlAddr)
	for _, want := range []string{"phase:      serving", "dev-1", "dev-3", "4MiB"} {
		if !strings.Contains(info, want) {
			t.Errorf("volume info lacks %q:\n%s", want, info)
		}
	}
	dev.stop()
}
