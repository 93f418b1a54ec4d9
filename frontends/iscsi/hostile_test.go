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

	"github.com/drover-io/drover/frontends/device"
	"github.com/drover-io/drover/frontends/iscsi"
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
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("hostile initiator: %v", err)
	}
	// A small receive buffer, so the kernel holds little of what the
	// server sends and the server's own buffers are what is measured.
	nc.(*net.TCPConn).SetReadBuffer(64 << 10)
	nc.SetDeadline(time.Now().Add(time.Minute))
	text := "InitiatorName=iqn.2026-12.io.drover:hostile\x00SessionType=Normal\x00TargetName=" + target +
		"\x00MaxRecvDataSegmentLength=262144\x00"
	login := bhs(0x43, 0x87) // immediate login, transit from operational to full feature
	binary.BigEndian.PutUint32(login[4:], uint32(len(text)))
	binary.BigEndian.PutUint16(login[8:], 0x8000)
	binary.BigEndian.PutUint32(login[10:], uint32(id)) // ISID: one session each
	pdu := append(login, text...)
	pdu = append(pdu, make([]byte, (4-len(text)%4)%4)...)
	if _, err := nc.Write(pdu); err != nil {
		t.Fatalf("hostile initiator: login: %v", err)
	}
	r := bufio.NewReader(nc)
	var resp [48]byte
	if _, err := io.ReadFull(r, resp[:]); err != nil {
		t.Fatalf("hostile initiator: login response: %v", err)
	}
	if resp[0]&0x3f != 0x23 || resp[36] != 0 || resp[1]&0x83 != 0x83 {
		t.Fatalf("hostile initiator: login response %x", resp[:])
	}
	n := int(resp[5])<<16 | int(resp[6])<<8 | int(resp[7])
	if _, err := r.Discard(n + (4-n%4)%4); err != nil {
		t.Fatalf("hostile initiator: login response data: %v", err)
	}
	nc.SetDeadline(time.Time{})
	var cmds []byte
	for i := range reads {
		cmd := bhs(0x01, 0xc1) // final, read, simple
		binary.BigEndian.PutUint32(cmd[16:], uint32(i+1))
		binary.BigEndian.PutUint32(cmd[20:], hostileReadBytes)
		binary.BigEndian.PutUint32(cmd[24:], uint32(i)) // CmdSN from 0, as the login set
		cmd[32] = 0x88                                  // READ(16) at LBA 0
		binary.BigEndian.PutUint32(cmd[42:], hostileReadBytes/512)
		cmds = append(cmds, cmd...)
	}
	// The server stops reading once it holds what it may: the write may
	// block, so it runs on its own goroutine and ends with the conn.
	go nc.Write(cmds)
	return nc
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
