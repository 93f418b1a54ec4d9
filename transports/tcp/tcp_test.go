package tcp

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/link"
	"github.com/drover-io/drover/transports/replicadir"
	"github.com/drover-io/drover/transports/replicarun"
)

// logBook collects the server's log lines.
type logBook struct {
	mu    sync.Mutex
	lines []string
}

func (b *logBook) logf(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines = append(b.lines, fmt.Sprintf(format, args...))
}

func (b *logBook) waitFor(t *testing.T, substr string) string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		b.mu.Lock()
		for _, l := range b.lines {
			if strings.Contains(l, substr) {
				b.mu.Unlock()
				return l
			}
		}
		b.mu.Unlock()
	}
	t.Fatalf("no log line containing %q", substr)
	return ""
}

type testServer struct {
	addr   string
	srv    *Server
	runner *replicarun.Runner
	logs   *logBook
}

// startServer serves a new replica on files under dir over loopback.
func startServer(t testing.TB, dir string) *testServer {
	t.Helper()
	return startServerTLS(t, dir, nil)
}

// startServerTLS is startServer requiring TLS with tlsCfg (nil: none).
func startServerTLS(t testing.TB, dir string, tlsCfg *tls.Config) *testServer {
	t.Helper()
	rd, err := replicadir.Open(replicadir.Config{Dir: dir, ID: "r1", CreateSizeBytes: 256 << 20})
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
	if tlsCfg != nil {
		srv.RequireTLS(tlsCfg)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close(); rd.Close() })
	return &testServer{addr: ln.Addr().String(), srv: srv, runner: r, logs: logs}
}

// collector gathers replies by id.
type collector struct {
	mu    sync.Mutex
	got   map[uint64]proto.Reply
	want  int
	done  chan struct{}
	downs chan error
}

func newCollector(want int) *collector {
	return &collector{got: map[uint64]proto.Reply{}, want: want, done: make(chan struct{}), downs: make(chan error, 1)}
}

func (c *collector) handler() link.Handler {
	return link.Handler{OnReply: func(rep proto.Reply) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.got[rep.ID] = rep
		if len(c.got) == c.want {
			close(c.done)
		}
	}, OnDown: func(err error) { c.downs <- err }}
}

func (c *collector) wait(t *testing.T) map[uint64]proto.Reply {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.mu.Lock()
		defer c.mu.Unlock()
		t.Fatalf("%d of %d replies", len(c.got), c.want)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got
}

func fill(v byte, blocks int) []byte { return bytes.Repeat([]byte{v}, blocks*proto.BlockSize) }

// TestPipelined sends hundreds of writes and reads in flight at once over
// one connection and checks every reply.
func TestPipelined(t *testing.T) {
	ts := startServer(t, t.TempDir())
	const n = 400
	col := newCollector(2*n + 2)
	l, err := NewDialer(DialConfig{ReplicaID: "r1"})(ts.addr, col.handler())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	reqs := []proto.Request{{ID: 1, Epoch: 1, Op: proto.OpOpen}}
	for i := range n {
		reqs = append(reqs, proto.Request{ID: uint64(2 + i), Epoch: 1, Op: proto.OpWrite, BlockIndex: uint64(i), BlockCount: 1, Data: fill(byte(i), 1), Seq: uint64(i + 1)})
	}
	reqs = append(reqs, proto.Request{ID: n + 2, Epoch: 1, Op: proto.OpFlush, Seq: n})
	for i := range n {
		reqs = append(reqs, proto.Request{ID: uint64(n + 3 + i), Epoch: 1, Op: proto.OpRead, BlockIndex: uint64(i), BlockCount: 1})
	}
	for i := 0; i < len(reqs); i += 50 {
		l.Send(reqs[i:min(i+50, len(reqs))]...)
	}
	got := col.wait(t)
	for _, req := range reqs {
		rep := got[req.ID]
		if rep.Status != proto.StatusOK {
			t.Fatalf("%v %d: %v %s", req.Op, req.ID, rep.Status, rep.Err)
		}
		if req.Op == proto.OpRead && !bytes.Equal(rep.Data, fill(byte(req.BlockIndex), 1)) {
			t.Fatalf("read of block %d: wrong data", req.BlockIndex)
		}
	}
	if info := got[1].Info; info == nil || info.ID != "r1" || info.Epoch != 1 {
		t.Fatalf("open reply info: %+v", info)
	}
}

// TestGarbageFrameClosesOnlyThatConnection sends a frame with a bad
// checksum on one connection: that connection closes with a logged
// reason, another keeps working.
func TestGarbageFrameClosesOnlyThatConnection(t *testing.T) {
	ts := startServer(t, t.TempDir())
	good := newCollector(2)
	l, err := Dial(ts.addr, good.handler())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Send(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen})

	raw, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write(proto.AppendHello(nil, proto.Hello{Version: proto.WireVersion, Role: proto.RoleEngine}))
	if _, err := proto.ReadHello(raw); err != nil {
		t.Fatal(err)
	}
	frame := proto.AppendRequestFrame(nil, &proto.Request{ID: 1, Epoch: 1, Op: proto.OpInfo})
	frame[len(frame)-1] ^= 0xff
	raw.Write(frame)
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := raw.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("garbage connection: read %d, %v; want EOF", n, err)
	}
	t.Log(ts.logs.waitFor(t, "checksum mismatch"))

	l.Send(proto.Request{ID: 2, Epoch: 1, Op: proto.OpWrite, BlockIndex: 3, BlockCount: 1, Data: fill(3, 1)})
	for id, rep := range good.wait(t) {
		if rep.Status != proto.StatusOK {
			t.Fatalf("good connection, request %d: %v %s", id, rep.Status, rep.Err)
		}
	}
}

// TestWrongVersionRefused: an engine of another version is told why and
// dropped by the server; a dialer meeting a replica of another version
// fails with a *proto.VersionError.
func TestWrongVersionRefused(t *testing.T) {
	ts := startServer(t, t.TempDir())
	raw, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write(proto.AppendHello(nil, proto.Hello{Version: proto.WireVersion + 1, Role: proto.RoleEngine}))
	if h, err := proto.ReadHello(raw); err != nil || h.Version != proto.WireVersion {
		t.Fatalf("server hello: %+v %v", h, err)
	}
	t.Log(ts.logs.waitFor(t, "protocol version"))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write(proto.AppendHello(nil, proto.Hello{Version: 99, Role: proto.RoleReplica, ReplicaID: "future"}))
		io.Copy(io.Discard, c)
	}()
	_, err = Dial(ln.Addr().String(), link.Handler{})
	var ve *proto.VersionError
	if !errors.As(err, &ve) || ve.Remote != 99 {
		t.Fatalf("dial a version-99 replica: %v", err)
	}
	t.Log(err)
}

func TestWrongReplicaRefused(t *testing.T) {
	ts := startServer(t, t.TempDir())
	_, err := NewDialer(DialConfig{ReplicaID: "other"})(ts.addr, link.Handler{})
	if err == nil || !strings.Contains(err.Error(), `"other"`) {
		t.Fatalf("dial the wrong replica: %v", err)
	}
	t.Log(err)
}

// TestServerCloseCallsOnDown: a server going away breaks the link, and the
// engine hears it once.
func TestServerCloseCallsOnDown(t *testing.T) {
	ts := startServer(t, t.TempDir())
	col := newCollector(1)
	l, err := Dial(ts.addr, col.handler())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Send(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen})
	col.wait(t)
	ts.srv.Close()
	select {
	case err := <-col.downs:
		t.Log(err)
	case <-time.After(5 * time.Second):
		t.Fatal("no OnDown after the server closed")
	}
	l.Send(proto.Request{ID: 2, Epoch: 1, Op: proto.OpInfo}) // dropped silently
}

// TestLargeDataWrittenInPlace pipelines writes of proto.SplitDataBytes and
// more (written from their own slices with writev, their data under the
// frame CRC) between small ones, sent in batches while earlier ones are
// being written, and reads every block back.
func TestLargeDataWrittenInPlace(t *testing.T) {
	ts := startServer(t, t.TempDir())
	const n = 24
	blocks := func(i int) int { return []int{1, proto.SplitDataBytes / proto.BlockSize, 256}[i%3] }
	col := newCollector(2*n + 1)
	l, err := NewDialer(DialConfig{ReplicaID: "r1"})(ts.addr, col.handler())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	reqs := []proto.Request{{ID: 1, Epoch: 1, Op: proto.OpOpen}}
	for i := range n {
		reqs = append(reqs, proto.Request{ID: uint64(2 + i), Epoch: 1, Op: proto.OpWrite, BlockIndex: uint64(i * 256),
			BlockCount: uint32(blocks(i)), Data: fill(byte(i+1), blocks(i)), Seq: uint64(i + 1)})
	}
	for i := range n {
		reqs = append(reqs, proto.Request{ID: uint64(n + 2 + i), Epoch: 1, Op: proto.OpRead, BlockIndex: uint64(i * 256), BlockCount: uint32(blocks(i))})
	}
	for i := 0; i < len(reqs); i += 5 {
		l.Send(reqs[i:min(i+5, len(reqs))]...)
	}
	got := col.wait(t)
	for i, req := range reqs {
		rep := got[req.ID]
		if rep.Status != proto.StatusOK {
			t.Fatalf("%v %d: %v %s", req.Op, req.ID, rep.Status, rep.Err)
		}
		if j := i - n - 1; req.Op == proto.OpRead && !bytes.Equal(rep.Data, fill(byte(j+1), blocks(j))) {
			t.Fatalf("read of block %d: wrong data", req.BlockIndex)
		}
	}
}
