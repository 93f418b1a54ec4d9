package control

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-io/drover/transports/certs"
	"github.com/drover-io/drover/transports/control/controlpb"
)

// logBuffer captures the default logger's output for one test.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func captureLog(t *testing.T) *logBuffer {
	b := &logBuffer{}
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(b, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	return b
}

func TestUnixSocketAudit(t *testing.T) {
	logs := captureLog(t)
	d := newTestDriver(t)
	path := filepath.Join(t.TempDir(), "run", "control.sock")
	lis, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", p, got, want)
		}
	}
	if _, err := ListenUnix(path); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("second listen on a live socket: %v", err)
	}
	serve(t, d, lis, ServerConfig{})
	c, conn, err := Dial("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	if _, err := c.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(ctx, &controlpb.WriteRequest{Data: make([]byte, 4096)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SnapshotDelete(ctx, &controlpb.SnapshotRequest{Name: "nope"}); err == nil {
		t.Fatal("deleting a missing snapshot succeeded")
	}
	out := logs.String()
	if !strings.Contains(out, "method=Write caller=\"unix uid=") || !strings.Contains(out, "method=SnapshotDelete") {
		t.Errorf("mutating calls not logged with the caller's uid:\n%s", out)
	}
	if strings.Contains(out, "VolumeInfo") {
		t.Errorf("a read-only call was logged:\n%s", out)
	}
}

func TestUnixSocketStale(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close() // as if killed: the socket file stays
	lis, err = ListenUnix(path)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	lis.Close()
}

func TestMutualTLS(t *testing.T) {
	logs := captureLog(t)
	dir := filepath.Join(t.TempDir(), "certs")
	other := filepath.Join(t.TempDir(), "other")
	now := time.Now()
	for _, step := range []error{
		certs.Init(dir, "c1", now), certs.Init(other, "c2", now),
		certs.Issue(dir, certs.IssueOptions{Name: "engine", Hosts: []string{"127.0.0.1"}}, now),
		certs.Issue(dir, certs.IssueOptions{Name: "operator"}, now),
		certs.Issue(other, certs.IssueOptions{Name: "stranger"}, now),
	} {
		if step != nil {
			t.Fatal(step)
		}
	}
	files := func(dir, name string) certs.Files {
		return certs.Files{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key"), CA: filepath.Join(dir, certs.CAFile)}
	}
	scfg, err := files(dir, "engine").ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, newTestDriver(t), lis, ServerConfig{TLS: scfg})
	call := func(cfg DialConfig) error {
		c, conn, err := Dial(lis.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = c.Flush(ctx, &controlpb.Empty{})
		return err
	}
	ccfg, err := files(dir, "operator").ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if err := call(DialConfig{TLS: ccfg}); err != nil {
		t.Fatalf("client with a certificate from the CA: %v", err)
	}
	if out := logs.String(); !strings.Contains(out, `method=Flush caller="tls CN=operator,O=c1`) {
		t.Errorf("call not logged with the certificate's subject:\n%s", out)
	}
	if err := call(DialConfig{}); err == nil {
		t.Error("a plain TCP client was served by a mutual-TLS server")
	}
	stranger, err := files(other, "stranger").ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	stranger.RootCAs = ccfg.RootCAs // it trusts the server; the server must not trust it
	if err := call(DialConfig{TLS: stranger}); err == nil {
		t.Error("a client with another CA's certificate was served")
	}
}

func TestCheckListen(t *testing.T) {
	for _, tc := range []struct {
		addr          string
		tls, insecure bool
		ok            bool
	}{
		{"127.0.0.1:7370", false, false, true},
		{"[::1]:7370", false, false, true},
		{"localhost:7370", false, false, true},
		{"0.0.0.0:7370", false, false, false},
		{":7370", false, false, false},
		{"10.0.0.5:7370", false, false, false},
		{"10.0.0.5:7370", true, false, true},
		{"0.0.0.0:7370", false, true, true},
	} {
		err := CheckListen(tc.addr, tc.tls, tc.insecure)
		if (err == nil) != tc.ok {
			t.Errorf("CheckListen(%q, tls=%v, insecure=%v) = %v", tc.addr, tc.tls, tc.insecure, err)
		}
		if err != nil && !errors.Is(err, ErrInsecureListen) {
			t.Errorf("CheckListen(%q): %v, want ErrInsecureListen", tc.addr, err)
		}
	}
}
