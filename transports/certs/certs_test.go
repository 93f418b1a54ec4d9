package certs

import (
	"crypto/tls"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// issueIn makes a CA for cluster in a new directory and issues names.
func issueIn(t *testing.T, cluster string, names ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	now := time.Now()
	if err := Init(dir, cluster, now); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := Issue(dir, IssueOptions{Name: n, Hosts: []string{"127.0.0.1", "localhost"}}, now); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func files(dir, name string) Files {
	return Files{Cert: filepath.Join(dir, CertFile(name)), Key: filepath.Join(dir, KeyFile(name)), CA: filepath.Join(dir, CAFile)}
}

func TestInitIssueModes(t *testing.T) {
	dir := issueIn(t, "c1", "engine-1")
	for name, want := range map[string]os.FileMode{CAKeyFile: 0o600, CAFile: 0o644, "engine-1.key": 0o600, "engine-1.crt": 0o644, ".": 0o700} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", name, got, want)
		}
	}
	if err := Init(dir, "c1", time.Now()); !errors.Is(err, ErrExists) {
		t.Errorf("second init: %v, want ErrExists", err)
	}
	if err := Issue(dir, IssueOptions{Name: "engine-1"}, time.Now()); !errors.Is(err, ErrExists) {
		t.Errorf("second issue: %v, want ErrExists", err)
	}
	for _, bad := range []string{"", "ca", "../x"} {
		if err := Issue(dir, IssueOptions{Name: bad}, time.Now()); err == nil {
			t.Errorf("issue %q: no error", bad)
		}
	}
	if err := Issue(t.TempDir(), IssueOptions{Name: "x"}, time.Now()); err == nil || !strings.Contains(err.Error(), "certs init") {
		t.Errorf("issue without a CA: %v, want a hint to run certs init", err)
	}
	if _, err := (Files{Cert: "a"}).ServerConfig(); err == nil || !strings.Contains(err.Error(), "missing: key, CA") {
		t.Errorf("half-configured TLS: %v", err)
	}
}

// handshake runs one mutual-TLS handshake over real TCP and returns the
// server's error and the subject it saw.
func handshake(t *testing.T, server, client Files) (string, error) {
	t.Helper()
	scfg, err := server.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := client.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	type result struct {
		subject string
		err     error
	}
	res := make(chan result, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		err = tc.Handshake()
		if err == nil {
			_, err = io.ReadFull(tc, make([]byte, 1))
		}
		res <- result{Subject(tc.ConnectionState()), err}
	}()
	c, err := tls.Dial("tcp", lis.Addr().String(), ccfg)
	if err == nil {
		_, _ = c.Write([]byte{1})
		defer c.Close()
	}
	r := <-res
	return r.subject, r.err
}

func TestMutualTLS(t *testing.T) {
	dir := issueIn(t, "c1", "replica-1", "engine-1")
	subject, err := handshake(t, files(dir, "replica-1"), files(dir, "engine-1"))
	if err != nil {
		t.Fatalf("same CA: %v", err)
	}
	if subject != "CN=engine-1,O=c1" {
		t.Errorf("subject %q", subject)
	}
	other := issueIn(t, "c2", "engine-x")
	if _, err := handshake(t, files(dir, "replica-1"), files(other, "engine-x")); err == nil {
		t.Error("a client certificate from another cluster's CA was accepted")
	}
}
