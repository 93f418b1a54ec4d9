package tcp

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/certs"
	"github.com/drover-io/drover/transports/peercred"
	"github.com/drover-io/drover/transports/replicadir"
	"github.com/drover-io/drover/transports/testenv"
)

// testPKI makes a CA for cluster with certificates for names (valid for
// 127.0.0.1) and returns their files.
func testPKI(t testing.TB, cluster string, names ...string) map[string]certs.Files {
	t.Helper()
	dir := filepath.Join(t.TempDir(), cluster)
	if err := certs.Init(dir, cluster, time.Now()); err != nil {
		t.Fatal(err)
	}
	out := map[string]certs.Files{}
	for _, n := range names {
		if err := certs.Issue(dir, certs.IssueOptions{Name: n, Hosts: []string{"127.0.0.1"}}, time.Now()); err != nil {
			t.Fatal(err)
		}
		out[n] = certs.Files{Cert: filepath.Join(dir, certs.CertFile(n)), Key: filepath.Join(dir, certs.KeyFile(n)),
			CA: filepath.Join(dir, certs.CAFile)}
	}
	return out
}

// TestTLS: a replica requiring mutual TLS serves an engine with a
// certificate from its cluster's CA (writes and reads round-trip), and
// refuses a plain connection and an engine of another cluster.
func TestTLS(t *testing.T) {
	pki := testPKI(t, "c1", "replica", "engine")
	other := testPKI(t, "c2", "intruder")
	scfg, err := pki["replica"].ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	ts := startServerTLS(t, t.TempDir(), scfg)
	ccfg, err := pki["engine"].ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	col := newCollector(4)
	l, err := NewDialer(DialConfig{ReplicaID: "r1", TLS: ccfg})(ts.addr, col.handler())
	if err != nil {
		t.Fatalf("engine of the cluster: %v", err)
	}
	defer l.Close()
	l.Send(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen},
		proto.Request{ID: 2, Epoch: 1, Op: proto.OpWrite, BlockIndex: 3, BlockCount: 2, Data: fill(7, 2), Seq: 1},
		proto.Request{ID: 3, Epoch: 1, Op: proto.OpFlush, Seq: 1},
		proto.Request{ID: 4, Epoch: 1, Op: proto.OpRead, BlockIndex: 3, BlockCount: 2})
	got := col.wait(t)
	if rep := got[4]; rep.Status != proto.StatusOK || !bytes.Equal(rep.Data, fill(7, 2)) {
		t.Fatalf("read over TLS: %v %s", rep.Status, rep.Err)
	}

	if l, err := Dial(ts.addr, newCollector(1).handler()); err == nil {
		l.Close()
		t.Error("a plain connection got through the handshake")
	}
	ts.logs.waitFor(t, "TLS handshake")
	icfg, err := other["intruder"].ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	icfg.RootCAs = ccfg.RootCAs // it trusts the replica; the replica must not trust it
	// (TLS 1.3 clients finish before the server checks their
	// certificate, so the refusal may show in the replica's hello.)
	if l, err := NewDialer(DialConfig{TLS: icfg})(ts.addr, newCollector(1).handler()); err == nil {
		l.Close()
		t.Error("an engine of another cluster got through the handshake")
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		ts.logs.mu.Lock()
		n := 0
		for _, l := range ts.logs.lines {
			n += strings.Count(l, "TLS handshake")
		}
		lines := ts.logs.lines
		ts.logs.mu.Unlock()
		if n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the refused handshakes are not logged: %q", lines)
		}
	}
}

// TestAcceptOnly: a server with AcceptOnly(peercred.Check) serves this
// user's engine on loopback and closes a connection from the user
// nobody, logging why.
func TestAcceptOnly(t *testing.T) {
	testenv.NeedRoot(t, "connecting as the user nobody")
	testenv.NeedTools(t, "bash")
	rd, err := replicadir.Open(replicadir.Config{Dir: t.TempDir(), ID: "r1", CreateSizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	r := rd.Runner
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBook{}
	srv := NewServer(r, logs.logf)
	srv.AcceptOnly(peercred.Check)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close(); rd.Close() })
	col := newCollector(1)
	l, err := Dial(ln.Addr().String(), col.handler())
	if err != nil {
		t.Fatalf("this user's engine: %v", err)
	}
	l.Send(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen})
	col.wait(t)
	l.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	cmd := exec.Command("bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/"+port+"; cat <&3")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); len(out) != 0 {
		t.Errorf("nobody got %d bytes (%v)", len(out), err)
	}
	logs.waitFor(t, "connection from another user: 65534")
}
