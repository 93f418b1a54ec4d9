package iscsi_test

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

	"github.com/drover-io/drover/frontends/iscsi"
	"github.com/drover-io/drover/transports/device"
)

// hostileLiveBoundBytes is what 100 hostile initiators may pin in the
// server's heap (live after a collection) under the default buffer
// limits: the 256 MiB total budget, about 600 KiB of PDU and socket
// buffering per connection, and slack for goroutines.
const hostileLiveBoundBytes = 400 << 20

// hostileReadBytes is each hostile READ's length: the largest transfer
// the target allows.
const hostileReadBytes = 8 << 20

// TestHostileInitiatorsMemoryBounded logs in 100 initiators that send
// 8 MiB READs and never read a response, checks that the server's heap
// stays under hostileLiveBoundBytes while iscsi-ls and qemu-io are still
// served, and that the memory is given back once they hang up. The same
// run measures a server with no total bound as the reference (with fewer
// initiators: each pins 64 MiB there). On a file (commands on workers)
// and on an engine volume (async commands, whose responses must not be
// written inside the engine's driver).
func TestHostileInitiatorsMemoryBounded(t *testing.T) {
	needTool(t, "iscsi-ls")
	needTool(t, "qemu-io")
	refClients := 8
	if n, err := strconv.Atoi(os.Getenv("DROVER_HOSTILE_REFERENCE_CLIENTS")); err == nil {
		refClients = n
	}
	cases := []struct {
		name string
		lun  func(t *testing.T) device.Device
		// heapBoundBytes bounds the heap in use, garbage included: a
		// volume's engine reads into buffers of its own, then copies out
		// and pools them.
		heapBoundBytes uint64
	}{
		{"file", fileLUN, 400 << 20},
		{"volume", func(t *testing.T) device.Device { return droverVolume(t, 1, 64<<20) }, 700 << 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if refClients > 0 {
				ref := hostileRun(t, tc.lun(t), -1, refClients)
				t.Logf("reference, no total bound: %d hostile initiators grow the heap by %d MiB (%d MiB each), %d MiB live, RSS %d MiB",
					refClients, ref.heapInuseBytes>>20, ref.heapInuseBytes>>20/uint64(refClients), ref.liveBytes>>20, ref.rssBytes>>20)
			}
			got := hostileRun(t, tc.lun(t), 0, 100)
			t.Logf("default limits: 100 hostile initiators grow the heap by %d MiB (bound %d), %d MiB live (bound %d), RSS %d MiB",
				got.heapInuseBytes>>20, tc.heapBoundBytes>>20, got.liveBytes>>20, hostileLiveBoundBytes>>20, got.rssBytes>>20)
			if got.heapInuseBytes > tc.heapBoundBytes || got.liveBytes > hostileLiveBoundBytes {
				t.Fatalf("100 hostile initiators grew the heap by %d MiB (%d MiB live), over the bound of %d MiB (%d MiB live)",
					got.heapInuseBytes>>20, got.liveBytes>>20, tc.heapBoundBytes>>20, hostileLiveBoundBytes>>20)
			}
		})
	}
}

// memory is what the test process holds.
type memory struct {
	heapInuseBytes uint64
	liveBytes      uint64 // heap in use after collections
	rssBytes       uint64
}

// hostileRun serves lun with the given total bound (0: default, -1: none)
// to clients hostile initiators and returns the heap growth once the
// server holds what it will. Meanwhile a normal initiator must be
// served; afterwards the heap must be back near where it started.
func hostileRun(t *testing.T, lun device.Device, totalBytes int64, clients int) memory {
	t.Helper()
	srv, err := iscsi.Listen(iscsi.Config{
		Addr:    "127.0.0.1:0",
		Targets: []iscsi.TargetConfig{{Volume: "vol", LUNs: []device.Device{lun}}},
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		// Room for the hostile initiators and the normal one; the
		// default (64) would refuse the normal one.
		MaxConnections:        clients + 8,
		MaxBytesInFlightTotal: totalBytes,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	addr := srv.Addr().String()
	base := heapAfterGC()
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for i := range clients {
		conns = append(conns, dialHostile(t, addr, iscsi.IQN("vol"), i, 16))
	}
	want := int64(min(clients*(64<<20), 256<<20) - hostileReadBytes)
	if totalBytes < 0 {
		want = int64(clients*(64<<20) - hostileReadBytes)
	}
	waitUntil(t, time.Minute, func() bool { return srv.BufferedBytes() > want })
	m := settle(time.Minute)
	m.heapInuseBytes -= min(m.heapInuseBytes, base)
	m.liveBytes = heapAfterGC()
	m.liveBytes -= min(m.liveBytes, base)

	out := runBounded(t, "iscsi-ls", "-s", "iscsi://"+addr)
	if !strings.Contains(out, iscsi.IQN("vol")) || !strings.Contains(out, "Lun:0") {
		t.Fatalf("iscsi-ls beside %d hostile initiators:\n%s", clients, out)
	}
	uri := fmt.Sprintf("iscsi://%s/%s/0", addr, iscsi.IQN("vol"))
	out = runBounded(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "read -P 0x5a 0 1M", uri)
	if strings.Contains(out, "failed") || !strings.Contains(out, "read 1048576/1048576") {
		t.Fatalf("qemu-io beside %d hostile initiators:\n%s", clients, out)
	}
	for _, nc := range conns {
		nc.Close()
	}
	waitUntil(t, time.Minute, func() bool { return srv.Connections() == 0 && srv.BufferedBytes() == 0 })
	if after := heapAfterGC(); after > base+64<<20 {
		t.Fatalf("heap %d MiB after the hostile initiators left, %d MiB before they came: not given back",
			after>>20, base>>20)
	}
	return m
}

// dialHostile logs in to target with a session of its own (ISID from
// id) and sends reads READ(16)s of hostileReadBytes, never reading a
// response.
func dialHostile(t *testing.T, addr, target string, id, reads int) net.Conn {
	t.Helper()
	nc, _ := loginRaw(t, addr, target, id)
	var cmds []byte
	for i := range reads {
		cmds = append(cmds, read16(uint32(i+1), uint32(i), 0, hostileReadBytes/512, hostileReadBytes)...)
	}
	// The server stops reading once it holds what it may: the write may
	// block, so it runs on its own goroutine and ends with the conn.
	go nc.Write(cmds)
	return nc
}

// loginRaw logs in to target over TCP as a raw initiator with a session
// of its own (ISID from id); its first CmdSN is 0.
func loginRaw(t *testing.T, addr, target string, id int) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("raw initiator: %v", err)
	}
	// A small receive buffer, so the kernel holds little of what the
	// server sends and the server's own buffers are what is measured.
	nc.(*net.TCPConn).SetReadBuffer(64 << 10)
	nc.SetDeadline(time.Now().Add(time.Minute))
	text := "InitiatorName=iqn.2026-12.io.drover:raw\x00SessionType=Normal\x00TargetName=" + target +
		"\x00MaxRecvDataSegmentLength=262144\x00"
	login := bhs(0x43, 0x87) // immediate login, transit from operational to full feature
	binary.BigEndian.PutUint32(login[4:], uint32(len(text)))
	binary.BigEndian.PutUint16(login[8:], 0x8000)
	binary.BigEndian.PutUint32(login[10:], uint32(id)) // ISID: one session each
	pdu := append(login, text...)
	pdu = append(pdu, make([]byte, (4-len(text)%4)%4)...)
	if _, err := nc.Write(pdu); err != nil {
		t.Fatalf("raw initiator: login: %v", err)
	}
	r := bufio.NewReader(nc)
	resp := readPDU(t, r)
	if resp[0]&0x3f != 0x23 || resp[36] != 0 || resp[1]&0x83 != 0x83 {
		t.Fatalf("raw initiator: login response %x", resp)
	}
	nc.SetDeadline(time.Time{})
	return nc, r
}

// read16 is a READ(16) command PDU of blocks 512-byte blocks at lba.
func read16(itt, cmdSN uint32, lba uint64, blocks, edtl uint32) []byte {
	cmd := bhs(0x01, 0xc1) // final, read, simple
	binary.BigEndian.PutUint32(cmd[16:], itt)
	binary.BigEndian.PutUint32(cmd[20:], edtl)
	binary.BigEndian.PutUint32(cmd[24:], cmdSN)
	cmd[32] = 0x88
	binary.BigEndian.PutUint64(cmd[34:], lba)
	binary.BigEndian.PutUint32(cmd[42:], blocks)
	return cmd
}

// readPDU reads one PDU and returns its header; its data is skipped.
func readPDU(t *testing.T, r *bufio.Reader) []byte {
	t.Helper()
	h := make([]byte, 48)
	if _, err := io.ReadFull(r, h); err != nil {
		t.Fatalf("raw initiator: read PDU: %v", err)
	}
	n := int(h[5])<<16 | int(h[6])<<8 | int(h[7])
	if _, err := r.Discard(int(h[4])*4 + n + (4-n%4)%4); err != nil {
		t.Fatalf("raw initiator: read PDU data: %v", err)
	}
	return h
}

// TestOversizeCommandsRefused sends commands asking for more than a
// command may move: each completes with CHECK CONDITION and no buffer of
// that size, and the session goes on serving.
func TestOversizeCommandsRefused(t *testing.T) {
	addr := startServer(t, iscsi.TargetConfig{Volume: "vol", LUNs: []device.Device{fileLUN(t)}})
	nc, r := loginRaw(t, addr, iscsi.IQN("vol"), 1)
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(time.Minute))
	write := bhs(0x01, 0xa1) // final, write, simple; no data follows
	binary.BigEndian.PutUint32(write[16:], 1)
	binary.BigEndian.PutUint32(write[20:], 8<<20+4096)
	binary.BigEndian.PutUint32(write[24:], 0)
	write[32] = 0x8a // WRITE(16)
	binary.BigEndian.PutUint32(write[42:], (8<<20+4096)/512)
	cmds := [][]byte{
		write,
		read16(2, 1, 0, 1<<32-1, 1<<32-1),        // 2 TiB
		read16(3, 2, 0, (8<<20+4096)/512, 8<<20), // just over the largest transfer
	}
	for i, cmd := range cmds {
		if _, err := nc.Write(cmd); err != nil {
			t.Fatal(err)
		}
		h := readPDU(t, r)
		if h[0]&0x3f != 0x21 || h[3] != 0x02 || binary.BigEndian.Uint32(h[16:]) != uint32(i+1) {
			t.Fatalf("command %d: response %x, want SCSI Response with CHECK CONDITION", i+1, h)
		}
	}
	if _, err := nc.Write(read16(4, 3, 0, 8, 4096)); err != nil {
		t.Fatal(err)
	}
	for {
		h := readPDU(t, r)
		if h[0]&0x3f == 0x25 && h[1]&0x01 != 0 { // Data-In carrying status
			if h[3] != 0 {
				t.Fatalf("read after the refused commands: status %#x", h[3])
			}
			return
		}
		if h[0]&0x3f != 0x25 {
			t.Fatalf("read after the refused commands: response %x", h)
		}
	}
}

// bhs is a 48-byte basic header segment with opcode and flags set.
func bhs(opcode, flags byte) []byte {
	b := make([]byte, 48)
	b[0], b[1] = opcode, flags
	return b
}

func measure() memory {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memory{heapInuseBytes: ms.HeapInuse, rssBytes: rss()}
}

// rss reads the process's resident set size from /proc (0 if it cannot).
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// settle waits, within bound, until the heap stops growing.
func settle(bound time.Duration) memory {
	deadline := time.Now().Add(bound)
	last := measure()
	for stable := 0; stable < 5 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		m := measure()
		if m.heapInuseBytes <= last.heapInuseBytes+(1<<20) {
			stable++
		} else {
			stable = 0
		}
		last = m
	}
	return last
}

// heapAfterGC is the heap in use after two collections, which empty the
// buffer pools of what nobody took since.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	return measure().heapInuseBytes
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

// runBounded runs a command for at most a minute: an initiator starved
// by the hostile ones fails the test instead of hanging it.
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
