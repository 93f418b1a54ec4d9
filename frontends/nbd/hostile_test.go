package nbd_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/device"
)

// hostile is a raw NBD client that sends large reads and never reads a
// reply: what a misbehaving or malicious client does to pin a server's
// memory.
type hostile struct {
	nc net.Conn
}

// dialHostile negotiates export name on addr over TCP and sends reads of
// readBytes each, without reading anything back. It fails the test only
// for errors of its own; the server may stop reading from it at any time.
func dialHostile(t testing.TB, addr, name string, reads int, readBytes uint32) *hostile {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("hostile client: %v", err)
	}
	// A small receive buffer, so the kernel holds little of what the
	// server sends and the server's own buffers are what is measured.
	nc.(*net.TCPConn).SetReadBuffer(64 << 10)
	nc.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(nc)
	var hello [18]byte
	if _, err := io.ReadFull(r, hello[:]); err != nil {
		t.Fatalf("hostile client: hello: %v", err)
	}
	b := binary.BigEndian.AppendUint32(nil, 1|2) // fixed newstyle, no zeroes
	b = binary.BigEndian.AppendUint64(b, 0x49484156454f5054)
	b = binary.BigEndian.AppendUint32(b, optGo)
	data := goData(name)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	if _, err := nc.Write(append(b, data...)); err != nil {
		t.Fatalf("hostile client: option: %v", err)
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			t.Fatalf("hostile client: option reply: %v", err)
		}
		if _, err := r.Discard(int(binary.BigEndian.Uint32(h[16:20]))); err != nil {
			t.Fatalf("hostile client: option reply data: %v", err)
		}
		typ := binary.BigEndian.Uint32(h[12:16])
		if typ == repAck {
			break
		}
		if typ != repInfo {
			t.Fatalf("hostile client: NBD_OPT_GO reply type %#x", typ)
		}
	}
	nc.SetDeadline(time.Time{})
	var reqs []byte
	for i := range reads {
		reqs = nbd.AppendRequest(reqs, nbd.Request{Type: cmdRead, Cookie: uint64(i), Length: readBytes})
	}
	// The server stops reading once it holds what it may: the write may
	// block, so it runs on its own goroutine and ends with the conn.
	go nc.Write(reqs)
	return &hostile{nc: nc}
}

// memory is what the test process holds: the Go heap in use and the
// resident set.
type memory struct {
	heapInuseBytes uint64
	liveBytes      uint64 // heap in use after collections; set by hostileRun
	rssBytes       uint64
}

func (m memory) String() string {
	return fmt.Sprintf("heap in use %d MiB, RSS %d MiB", m.heapInuseBytes>>20, m.rssBytes>>20)
}

func measure(t testing.TB) memory {
	t.Helper()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memory{heapInuseBytes: ms.HeapInuse, rssBytes: rss(t)}
}

// rss reads the process's resident set size from /proc.
func rss(t testing.TB) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatalf("read /proc/self/status: %v", err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("parse VmRSS %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// settle waits, within bound, until the heap stops growing: the server
// has read all it will from the hostile clients.
func settle(t testing.TB, bound time.Duration) memory {
	t.Helper()
	deadline := time.Now().Add(bound)
	last := measure(t)
	for stable := 0; stable < 5 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		m := measure(t)
		if m.heapInuseBytes <= last.heapInuseBytes+(1<<20) {
			stable++
		} else {
			stable = 0
		}
		last = m
	}
	return last
}

// serveTCP serves exports with cfg on a loopback TCP port and returns
// its address; the server closes when the test ends.
func serveTCP(t testing.TB, cfg nbd.Config) (*nbd.Server, string) {
	t.Helper()
	srv, err := nbd.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return srv, l.Addr().String()
}

// hostileLiveBoundBytes is what 100 hostile clients may pin in the
// server's heap (live after a collection) under the default Config: the
// 256 MiB total budget, 512 KiB of socket buffering per connection, and
// slack for goroutines.
const hostileLiveBoundBytes = 400 << 20

// TestHostileClientsMemoryBounded connects 100 clients that send large
// reads and never read a reply, checks that the server's heap stays under
// hostileHeapBoundBytes while qemu-io and nbdinfo are still served, and
// that the memory is given back once the hostile clients hang up. The
// same run measures a server with no total bound as the reference (with
// fewer clients: each pins 64 MiB there). On a file (the synchronous
// path, 32 MiB reads) and on an engine volume (the async path, 4 MiB
// reads, where a reply that cannot be written must not stall the
// engine for everyone).
func TestHostileClientsMemoryBounded(t *testing.T) {
	if raceEnabled {
		t.Skip("memory bounds mean nothing under the race detector (make test runs this test without it)")
	}
	need(t, "qemu-io", "nbdinfo")
	refClients := 8
	if n, err := strconv.Atoi(os.Getenv("DROVER_HOSTILE_REFERENCE_CLIENTS")); err == nil {
		refClients = n
	}
	cases := []struct {
		name      string
		dev       func(t *testing.T) device.Device
		readBytes uint32
		// heapBoundBytes bounds the heap in use, garbage included: a
		// volume's engine reads into buffers of its own, as many as the
		// frontend has reads in flight, then copies out and pools them.
		heapBoundBytes uint64
	}{
		{"file", func(t *testing.T) device.Device { d, _ := fileDevice(t, 64<<20); return d }, 32 << 20, 400 << 20},
		{"volume", func(t *testing.T) device.Device { return engineVolume(t, 64<<20) }, 4 << 20, 700 << 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if refClients > 0 {
				ref := hostileRun(t, tc.dev(t), nbd.Config{MaxBytesInFlightTotal: -1}, refClients, tc.readBytes)
				t.Logf("reference, no total bound: %d hostile clients grow the heap by %d MiB (%d MiB each), %d MiB live, RSS %d MiB",
					refClients, ref.heapInuseBytes>>20, ref.heapInuseBytes>>20/uint64(refClients), ref.liveBytes>>20, ref.rssBytes>>20)
			}
			got := hostileRun(t, tc.dev(t), nbd.Config{}, 100, tc.readBytes)
			t.Logf("default config: 100 hostile clients grow the heap by %d MiB (bound %d), %d MiB live (bound %d), RSS %d MiB",
				got.heapInuseBytes>>20, tc.heapBoundBytes>>20, got.liveBytes>>20, hostileLiveBoundBytes>>20, got.rssBytes>>20)
			if got.heapInuseBytes > tc.heapBoundBytes || got.liveBytes > hostileLiveBoundBytes {
				t.Fatalf("100 hostile clients grew the heap by %d MiB (%d MiB live), over the bound of %d MiB (%d MiB live)",
					got.heapInuseBytes>>20, got.liveBytes>>20, tc.heapBoundBytes>>20, hostileLiveBoundBytes>>20)
			}
		})
	}
}

// hostileRun serves dev with cfg, connects clients hostile clients that
// each send reads of readBytes, and returns the heap growth (over the
// heap before) and RSS once the server holds what it will. Meanwhile a
// normal client must be served; afterwards, with the hostile clients
// gone, the heap must be back near where it started.
func hostileRun(t *testing.T, dev device.Device, cfg nbd.Config, clients int, readBytes uint32) memory {
	t.Helper()
	cfg.Exports = []nbd.Export{{Name: "vol", Device: dev}}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, addr := serveTCP(t, cfg)
	base := heapAfterGC(t)
	var hs []*hostile
	for range clients {
		// Three requests: more than a connection may hold at once.
		hs = append(hs, dialHostile(t, addr, "vol", 3*int(64<<20/readBytes), readBytes))
	}
	// The server holds what it will once the total is spent (or, with no
	// total bound, once every connection holds its maximum).
	want := int64(min(clients*(64<<20), 256<<20) - int(readBytes))
	if cfg.MaxBytesInFlightTotal < 0 {
		want = int64(clients*(64<<20) - int(readBytes))
	}
	waitUntil(t, time.Minute, func() bool { return srv.BufferedBytes() > want })
	m := settle(t, time.Minute)
	m.heapInuseBytes -= min(m.heapInuseBytes, base)
	m.liveBytes = heapAfterGC(t)
	m.liveBytes -= min(m.liveBytes, base)
	uri := nbd.TCPURI(addr, "vol")
	out := runBounded(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "read -P 0x5a 0 1M", uri)
	if strings.Contains(out, "failed") || !strings.Contains(out, "read 1048576/1048576") {
		t.Fatalf("qemu-io beside %d hostile clients:\n%s", clients, out)
	}
	if out := runBounded(t, "nbdinfo", "--size", uri); strings.TrimSpace(out) != "67108864" {
		t.Fatalf("nbdinfo --size beside %d hostile clients: %q", clients, out)
	}
	for _, h := range hs {
		h.nc.Close()
	}
	waitUntil(t, time.Minute, func() bool { return srv.Connections() == 0 && srv.BufferedBytes() == 0 })
	if after := heapAfterGC(t); after > base+64<<20 {
		t.Fatalf("heap %d MiB after the hostile clients left, %d MiB before they came: not given back",
			after>>20, base>>20)
	}
	return m
}

// heapAfterGC is the heap in use after two collections, which empty the
// buffer pools of what nobody took since.
func heapAfterGC(t *testing.T) uint64 {
	t.Helper()
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	return measure(t).heapInuseBytes
}

// waitUntil polls cond until it holds, failing the test after bound.
func waitUntil(t *testing.T, bound time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not reached within %v", bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runBounded runs a command for at most a minute: a client starved by
// the hostile ones fails the test instead of hanging it.
func runBounded(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}
