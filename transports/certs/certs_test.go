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

// handshakeWith is handshake with configurations made beforehand, so a
// test can change the files between handshakes; it also returns the
// serial number of the server certificate the client saw.
func handshakeWith(t *testing.T, scfg, ccfg *tls.Config) (serverSerial string, err error) {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	res := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			res <- err
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err = tc.Handshake(); err == nil {
			_, err = io.ReadFull(tc, make([]byte, 1))
		}
		res <- err
	}()
	c, cerr := tls.Dial("tcp", lis.Addr().String(), ccfg)
	if cerr == nil {
		serverSerial = c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
		_, _ = c.Write([]byte{1})
		defer c.Close()
	}
	if serr := <-res; serr != nil {
		return serverSerial, serr
	}
	return serverSerial, cerr
}

// TestRenewAndRevokeWithoutRestart: endpoints configured once follow
// their files: a renewed server certificate is served from the next
// handshake, and a revoked client or server certificate is refused.
func TestRenewAndRevokeWithoutRestart(t *testing.T) {
	dir := issueIn(t, "c1", "replica-1", "engine-1")
	scfg, err := files(dir, "replica-1").ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := files(dir, "engine-1").ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	before, err := handshakeWith(t, scfg, ccfg)
	if err != nil {
		t.Fatalf("first handshake: %v", err)
	}
	if err := Issue(dir, IssueOptions{Name: "replica-1", Hosts: []string{"127.0.0.1"}}, time.Now()); !errors.Is(err, ErrExists) {
		t.Fatalf("issue over an existing certificate: %v", err)
	}
	if err := Issue(dir, IssueOptions{Name: "replica-1", Hosts: []string{"127.0.0.1"}, Replace: true}, time.Now()); err != nil {
		t.Fatal(err)
	}
	after, err := handshakeWith(t, scfg, ccfg)
	if err != nil || after == before {
		t.Fatalf("after renewal: serial %s (was %s), %v", after, before, err)
	}
	if _, err := Revoke(dir, "engine-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := handshakeWith(t, scfg, ccfg); err == nil || !strings.Contains(err.Error(), "bad certificate") && !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked client accepted: %v", err)
	}
	ccfg2, err := files(dir, "replica-1").ClientConfig() // a client not revoked
	if err != nil {
		t.Fatal(err)
	}
	if _, err := handshakeWith(t, scfg, ccfg2); err != nil {
		t.Fatalf("a client not revoked: %v", err)
	}
	if _, err := Revoke(dir, "replica-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := handshakeWith(t, scfg, ccfg2); err == nil {
		t.Fatal("revoked server (and client) accepted")
	}
	if err := os.WriteFile(filepath.Join(dir, RevokedFile), []byte("not-hex\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := files(dir, "engine-1").ServerConfig(); err == nil || !strings.Contains(err.Error(), "not a hex serial") {
		t.Fatalf("a bad revocation list: %v", err)
	}
}
