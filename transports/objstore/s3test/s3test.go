// Package s3test starts a real S3 server for tests: versitygw (built from
// the Go module proxy into the repository's bin/ by `make versitygw`) with
// its posix backend, as a separate process on 127.0.0.1. It is test
// support only; nothing in the binary imports it.
package s3test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/drover-io/drover/transports/testenv"
)

// Server is a running versitygw.
type Server struct {
	Endpoint  string // 127.0.0.1:port
	AccessKey string
	SecretKey string
	Root      string // the posix backend's directory: one directory per bucket
	cmd       *exec.Cmd
	bin       string
	logf      *os.File
}

// Binary returns the versitygw binary: $DROVER_VERSITYGW, or bin/versitygw
// at the repository root.
func Binary() string {
	if p := os.Getenv("DROVER_VERSITYGW"); p != "" {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "bin", "versitygw")
}

// Start starts a server with one bucket per name in buckets and stops it
// at the end of the test. Without the binary the test stops (see
// testenv: a skip, or a failure under .ci/run): `make test` builds it.
func Start(t testing.TB, buckets ...string) *Server {
	t.Helper()
	bin := Binary()
	if _, err := os.Stat(bin); err != nil {
		testenv.Unavailable(t, "versitygw not found at %s: run `make versitygw` (make test does)", bin)
	}
	root := t.TempDir()
	for _, b := range buckets {
		if err := os.Mkdir(filepath.Join(root, b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := &Server{Endpoint: addr, AccessKey: "drover-test", SecretKey: "drover-test-secret", Root: root, bin: bin}
	logf, err := os.Create(filepath.Join(t.TempDir(), "versitygw.log"))
	if err != nil {
		t.Fatal(err)
	}
	s.logf = logf
	t.Cleanup(func() {
		s.Stop()
		logf.Close()
	})
	s.Restart(t)
	return s
}

// Stop kills the server (as a network failure would look to clients).
func (s *Server) Stop() {
	if s.cmd != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

// Restart starts the server again on the same address and storage.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.cmd = exec.Command(s.bin, "--port", s.Endpoint, "--access", s.AccessKey, "--secret", s.SecretKey, "--quiet", "posix", s.Root)
	s.cmd.Stdout, s.cmd.Stderr = s.logf, s.logf
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Endpoint, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(s.logf.Name())
			t.Fatalf("versitygw did not listen on %s: %v\n%s", s.Endpoint, err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// URL returns a backup target URL for bucket (with an optional prefix).
func (s *Server) URL(bucket, prefix string) string {
	return fmt.Sprintf("s3://%s/%s?endpoint=%s&insecure=true", bucket, prefix, s.Endpoint)
}
