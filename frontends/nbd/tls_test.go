package nbd_test

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/certs"
)

// tlsPKI makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, and a GnuTLS-style directory for each client kind (what
// libnbd's tls-certificates and qemu's tls-creds-x509 dir= read):
// withCert holds ca-cert.pem, client-cert.pem and client-key.pem,
// caOnly only ca-cert.pem.
func tlsPKI(t *testing.T) (server certs.Files, withCert, caOnly string) {
	t.Helper()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	now := time.Now()
	if err := certs.Init(ca, "test", now); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"server", "client"} {
		if err := certs.Issue(ca, certs.IssueOptions{Name: n, Hosts: []string{"127.0.0.1"}}, now); err != nil {
			t.Fatal(err)
		}
	}
	withCert, caOnly = filepath.Join(dir, "client"), filepath.Join(dir, "anonymous")
	for _, link := range []struct{ dir, from, to string }{
		{withCert, certs.CAFile, "ca-cert.pem"}, {withCert, "client.crt", "client-cert.pem"},
		{withCert, "client.key", "client-key.pem"}, {caOnly, certs.CAFile, "ca-cert.pem"},
	} {
		b, err := os.ReadFile(filepath.Join(ca, link.from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(link.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(link.dir, link.to), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certs.Files{Cert: filepath.Join(ca, "server.crt"), Key: filepath.Join(ca, "server.key"), CA: filepath.Join(ca, certs.CAFile)}, withCert, caOnly
}

// TestSTARTTLS: with TLS required, nbdinfo (libnbd, nbds://) and qemu-io
// (tls-creds-x509) with a client certificate from the CA negotiate
// NBD_OPT_STARTTLS and read and write; a client that does not start TLS
// gets NBD_REP_ERR_TLS_REQD for NBD_OPT_GO, and one without a client
// certificate fails the handshake.
func TestSTARTTLS(t *testing.T) {
	need(t, "nbdinfo")
	need(t, "qemu-io")
	files, withCert, caOnly := tlsPKI(t)
	scfg, err := files.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := fileDevice(t, 16<<20)
	_, addr := serveTCP(t, nbd.Config{Exports: []nbd.Export{{Name: "vol", Device: d}}, TLS: scfg, TLSRequired: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	host, port, _ := net.SplitHostPort(addr)

	out, err := exec.Command("nbdinfo", "--size", "nbds://"+addr+"/vol?tls-certificates="+withCert).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "16777216" {
		t.Fatalf("nbdinfo over TLS: %v\n%s", err, out)
	}
	out, err = exec.Command("qemu-io", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+withCert,
		"--image-opts", "driver=nbd,server.type=inet,server.host="+host+",server.port="+port+",export=vol,tls-creds=tls0",
		"-c", "write -P 0xab 4096 65536", "-c", "read -P 0xab 4096 65536", "-c", "read -P 0 0 4096").CombinedOutput()
	if err != nil || strings.Contains(string(out), "fail") || strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("qemu-io over TLS: %v\n%s", err, out)
	}
	t.Logf("qemu-io: %s", out)
	if out, err := exec.Command("nbdinfo", "--size", "nbd://"+addr+"/vol").CombinedOutput(); err == nil {
		t.Errorf("nbdinfo without TLS succeeded:\n%s", out)
	}
	if out, err := exec.Command("nbdinfo", "--size", "nbds://"+addr+"/vol?tls-certificates="+caOnly).CombinedOutput(); err == nil {
		t.Errorf("nbdinfo without a client certificate succeeded:\n%s", out)
	}
	if got := goWithoutTLS(t, addr, "vol"); got != 1<<31+5 {
		t.Errorf("NBD_OPT_GO without TLS: reply type %#x, want NBD_REP_ERR_TLS_REQD", got)
	}
}

// goWithoutTLS negotiates fixed newstyle, sends NBD_OPT_GO for name
// without starting TLS, and returns the reply type.
func goWithoutTLS(t *testing.T, addr, name string) uint32 {
	t.Helper()
	data := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	data = append(data, name...)
	data = binary.BigEndian.AppendUint16(data, 0)
	return rawOption(t, addr, 7, data) // NBD_OPT_GO
}

// rawOption negotiates fixed newstyle, sends one option, and returns the
// type of the server's reply.
func rawOption(t *testing.T, addr string, opt uint32, data []byte) uint32 {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	hello := make([]byte, 18)
	if _, err := io.ReadFull(c, hello); err != nil {
		t.Fatal(err)
	}
	req := binary.BigEndian.AppendUint32(nil, 3) // fixed newstyle, no zeroes
	req = binary.BigEndian.AppendUint64(req, 0x49484156454f5054)
	req = binary.BigEndian.AppendUint32(req, opt)
	req = binary.BigEndian.AppendUint32(req, uint32(len(data)))
	req = append(req, data...)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	rep := make([]byte, 20)
	if _, err := io.ReadFull(c, rep); err != nil {
		t.Fatal(err)
	}
	return binary.BigEndian.Uint32(rep[12:16])
}

// TestSTARTTLSRefusals: NBD_OPT_STARTTLS with data is invalid, and a
// server without TLS refuses it by policy.
func TestSTARTTLSRefusals(t *testing.T) {
	files, _, _ := tlsPKI(t)
	scfg, err := files.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := fileDevice(t, 1<<20)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, withTLS := serveTCP(t, nbd.Config{Exports: []nbd.Export{{Name: "v", Device: d}}, TLS: scfg, TLSRequired: true, Logger: quiet})
	_, without := serveTCP(t, nbd.Config{Exports: []nbd.Export{{Name: "v", Device: d}}, Logger: quiet})
	if got := rawOption(t, withTLS, 5, []byte{1}); got != 1<<31+3 {
		t.Errorf("STARTTLS with data: reply %#x, want NBD_REP_ERR_INVALID", got)
	}
	if got := rawOption(t, without, 5, nil); got != 1<<31+2 {
		t.Errorf("STARTTLS without TLS configured: reply %#x, want NBD_REP_ERR_POLICY", got)
	}
	if _, err := nbd.NewServer(nbd.Config{Exports: []nbd.Export{{Name: "v", Device: d}}, TLSRequired: true}); err == nil {
		t.Error("TLSRequired without TLS accepted")
	}
}
