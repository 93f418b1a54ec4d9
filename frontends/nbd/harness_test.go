package nbd_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/testenv"
)

// served is a Server listening on a unix socket and a loopback TCP port.
type served struct {
	srv     *nbd.Server
	socket  string
	tcpAddr string
}

// unixURI is the URI of export name over the unix socket.
func (s *served) unixURI(name string) string { return nbd.UnixURI(s.socket, name) }

// tcpURI is the URI of export name over TCP.
func (s *served) tcpURI(name string) string { return nbd.TCPURI(s.tcpAddr, name) }

// serve starts a Server for exports on a unix socket and a TCP port and
// shuts it down when the test ends.
func serve(t testing.TB, exports ...nbd.Export) *served {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := nbd.NewServer(nbd.Config{Exports: exports, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	// Unix socket paths are limited to 108 bytes; t.TempDir can be long.
	dir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "s")
	ul, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ul)
	go srv.Serve(tl)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		os.RemoveAll(dir)
	})
	return &served{srv: srv, socket: socket, tcpAddr: tl.Addr().String()}
}

// fileDevice makes a device.File of sizeBytes in a temporary directory.
func fileDevice(t testing.TB, sizeBytes uint64) (*device.File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dev.img")
	d, err := device.OpenFile(path, device.FileConfig{SizeBytes: sizeBytes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, path
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// need stops the test unless every binary is installed (see testenv).
func need(t testing.TB, binaries ...string) {
	t.Helper()
	testenv.NeedTools(t, binaries...)
}

// run runs a command and fails the test with its output if it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}
