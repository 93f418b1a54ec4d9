package nbd_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/device"
)

// Protocol numbers the raw test client uses.
const (
	optExportName = 1
	optAbort      = 2
	optList       = 3
	optInfo       = 6
	optGo         = 7
	optStructured = 8

	repAck        = 1
	repServer     = 2
	repInfo       = 3
	repErrUnsup   = 1<<31 + 1
	repErrInvalid = 1<<31 + 3
	repErrUnknown = 1<<31 + 6

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	flagFUA      = 1 << 0
	flagNoHole   = 1 << 1
	flagFastZero = 1 << 4
)

// client is a raw NBD client for protocol tests.
type client struct {
	t  testing.TB
	nc net.Conn
	r  *bufio.Reader
}

func dial(t testing.TB, s *served) *client {
	t.Helper()
	nc, err := net.Dial("unix", s.socket)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(time.Minute))
	t.Cleanup(func() { nc.Close() })
	c := &client{t: t, nc: nc, r: bufio.NewReader(nc)}
	var hello [18]byte
	c.read(hello[:])
	if string(hello[:8]) != "NBDMAGIC" || string(hello[8:16]) != "IHAVEOPT" || hello[17] != 3 {
		t.Fatalf("server hello %q", hello)
	}
	return c
}

func (c *client) read(b []byte) {
	c.t.Helper()
	if _, err := io.ReadFull(c.r, b); err != nil {
		c.t.Fatalf("read from server: %v", err)
	}
}

func (c *client) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write to server: %v", err)
	}
}

func (c *client) flags(f uint32) { c.write(binary.BigEndian.AppendUint32(nil, f)) }

func (c *client) option(opt uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, 0x49484156454f5054)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

// optReply reads one option reply and returns its type and data.
func (c *client) optReply(opt uint32) (uint32, []byte) {
	c.t.Helper()
	var h [20]byte
	c.read(h[:])
	if binary.BigEndian.Uint64(h[:8]) != 0x3e889045565a9 || binary.BigEndian.Uint32(h[8:12]) != opt {
		c.t.Fatalf("option reply header %x for option %d", h, opt)
	}
	data := make([]byte, binary.BigEndian.Uint32(h[16:20]))
	c.read(data)
	return binary.BigEndian.Uint32(h[12:16]), data
}

func goData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// open negotiates export name with NBD_OPT_GO.
func open(t testing.TB, s *served, name string) *client {
	c := dial(t, s)
	c.flags(1)
	c.option(optGo, goData(name))
	for {
		typ, _ := c.optReply(optGo)
		if typ == repAck {
			return c
		}
		if typ != repInfo {
			t.Fatalf("NBD_OPT_GO %q: reply type %#x", name, typ)
		}
	}
}

func (c *client) send(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	c.write(append(nbd.AppendRequest(nil, nbd.Request{Flags: flags, Type: typ, Cookie: cookie,
		Offset: off, Length: length}), payload...))
}

// reply reads a simple reply header: error and cookie.
func (c *client) reply() (uint32, uint64) {
	c.t.Helper()
	var h [16]byte
	c.read(h[:])
	if binary.BigEndian.Uint32(h[:4]) != 0x67446698 {
		c.t.Fatalf("reply magic in %x", h)
	}
	return binary.BigEndian.Uint32(h[4:8]), binary.BigEndian.Uint64(h[8:16])
}

// closed reports whether the server has closed the connection.
func (c *client) closed() bool {
	c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := c.r.ReadByte()
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}

func TestRejectsClientsWithoutFixedNewstyle(t *testing.T) {
	d, _ := fileDevice(t, 1<<20)
	s := serve(t, nbd.Export{Name: "vol", Device: d})
	for _, flags := range []uint32{0, 2, 1 | 4} {
		c := dial(t, s)
		c.flags(flags)
		if !c.closed() {
			t.Fatalf("client flags %#x: connection not closed", flags)
		}
	}
}

func TestOptionNegotiation(t *testing.T) {
	d, _ := fileDevice(t, 1<<20)
	s := serve(t, nbd.Export{Name: "vol", Description: "d", Device: d}, nbd.Export{Name: "", Device: d})
	c := dial(t, s)
	c.flags(1)
	for _, tc := range []struct {
		opt  uint32
		data []byte
		want uint32
	}{
		{optList, []byte{1}, repErrInvalid},
		{optStructured, nil, repErrUnsup},
		{99, []byte("whatever"), repErrUnsup},
		{optInfo, goData("nope"), repErrUnknown},
		{optInfo, goData("vol")[:5], repErrInvalid},
		{optGo, append(goData("vol", 1), 0), repErrInvalid},
	} {
		c.option(tc.opt, tc.data)
		if typ, _ := c.optReply(tc.opt); typ != tc.want {
			t.Fatalf("option %d %x: reply %#x, want %#x", tc.opt, tc.data, typ, tc.want)
		}
	}
	c.option(optList, nil)
	var names []string
	for {
		typ, data := c.optReply(optList)
		if typ == repAck {
			break
		}
		if typ != repServer {
			t.Fatalf("NBD_OPT_LIST reply %#x", typ)
		}
		names = append(names, string(data[4:4+binary.BigEndian.Uint32(data)]))
	}
	if fmt.Sprint(names) != "[vol ]" {
		t.Fatalf("NBD_OPT_LIST names %q", names)
	}
	c.option(optInfo, goData("vol", 1, 2, 3))
	got := map[uint16][]byte{}
	for {
		typ, data := c.optReply(optInfo)
		if typ == repAck {
			break
		}
		got[binary.BigEndian.Uint16(data)] = data[2:]
	}
	if binary.BigEndian.Uint64(got[0]) != 1<<20 || string(got[1]) != "vol" || string(got[2]) != "d" ||
		fmt.Sprint(got[3]) != fmt.Sprint([]byte{0, 0, 2, 0, 0, 0, 16, 0, 2, 0, 0, 0}) {
		t.Fatalf("NBD_OPT_INFO replies %v", got)
	}
	// NBD_OPT_EXPORT_NAME with NO_ZEROES negotiated: size and flags only.
	c2 := dial(t, s)
	c2.flags(3)
	c2.option(optExportName, nil)
	var b [10]byte
	c2.read(b[:])
	if binary.BigEndian.Uint64(b[:8]) != 1<<20 || binary.BigEndian.Uint16(b[8:])&(1<<8) == 0 {
		t.Fatalf("NBD_OPT_EXPORT_NAME reply %x", b)
	}
	c2.send(cmdFlush, 0, 1, 0, 0, nil)
	if errno, _ := c2.reply(); errno != 0 {
		t.Fatalf("flush after NBD_OPT_EXPORT_NAME: errno %d", errno)
	}
	c.option(optAbort, nil)
	if typ, _ := c.optReply(optAbort); typ != repAck || !c.closed() {
		t.Fatalf("NBD_OPT_ABORT: reply %#x", typ)
	}
	c3 := dial(t, s)
	c3.flags(1)
	c3.option(optExportName, []byte("nope"))
	if !c3.closed() {
		t.Fatal("NBD_OPT_EXPORT_NAME of an unknown export left the connection open")
	}
}

// faultyDevice fails every call with err once err is set.
type faultyDevice struct {
	device.Device
	err error
}

func (d *faultyDevice) ReadAt(ctx context.Context, p []byte, off uint64) error {
	if d.err != nil {
		return fmt.Errorf("injected: %w", d.err)
	}
	return d.Device.ReadAt(ctx, p, off)
}

func (d *faultyDevice) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if d.err != nil {
		return fmt.Errorf("injected: %w", d.err)
	}
	return d.Device.WriteAt(ctx, p, off, fua)
}

func TestErrorReplies(t *testing.T) {
	f, _ := fileDevice(t, 1<<20)
	faulty := &faultyDevice{Device: f}
	s := serve(t, nbd.Export{Name: "vol", Device: faulty}, nbd.Export{Name: "ro", Device: f, ReadOnly: true})
	c := open(t, s, "vol")
	block := bytes.Repeat([]byte{7}, 4096)
	for i, tc := range []struct {
		name        string
		typ, flags  uint16
		off         uint64
		length      uint32
		payload     []byte
		inject      error
		errno       uint32
		wantPayload bool
	}{
		{name: "write", typ: cmdWrite, off: 4096, length: 4096, payload: block},
		{name: "read", typ: cmdRead, off: 4096, length: 4096, wantPayload: true},
		{name: "read past end", typ: cmdRead, off: 1<<20 - 512, length: 1024, errno: 22},
		{name: "write past end", typ: cmdWrite, off: 1 << 20, length: 4096, payload: block, errno: 28},
		{name: "zeroes past end", typ: cmdWriteZeroes, off: 1<<20 - 512, length: 4096, errno: 28},
		{name: "trim past end", typ: cmdTrim, off: 1 << 30, length: 512, errno: 22},
		{name: "misaligned read", typ: cmdRead, off: 100, length: 512, errno: 22},
		{name: "oversize read", typ: cmdRead, length: 64 << 20, errno: 22},
		{name: "read of 4 GiB less one byte", typ: cmdRead, length: 1<<32 - 1, errno: 22},
		{name: "block status", typ: cmdBlockStatus, length: 4096, errno: 95},
		{name: "unknown command", typ: 42, errno: 22},
		{name: "fast zero", typ: cmdWriteZeroes, flags: flagFastZero, length: 4096, errno: 95},
		{name: "unknown flag", typ: cmdWrite, flags: 1 << 9, length: 512, payload: block[:512], errno: 22},
		{name: "device EIO on read", typ: cmdRead, length: 4096, inject: device.ErrIO, errno: 5},
		{name: "device ENOSPC", typ: cmdWrite, length: 512, payload: block[:512], inject: device.ErrNoSpace, errno: 28},
		{name: "device EPERM", typ: cmdWrite, length: 512, payload: block[:512], inject: device.ErrReadOnly, errno: 1},
		{name: "device canceled", typ: cmdRead, length: 512, inject: context.Canceled, errno: 108},
		{name: "zeroes with NO_HOLE and FUA", typ: cmdWriteZeroes, flags: flagNoHole | flagFUA, off: 4096, length: 512},
		{name: "zeroes punching a hole", typ: cmdWriteZeroes, off: 4608, length: 512},
		{name: "trim", typ: cmdTrim, off: 5120, length: 1024},
		{name: "flush", typ: cmdFlush},
	} {
		faulty.err = tc.inject
		cookie := uint64(1000 + i)
		c.send(tc.typ, tc.flags, cookie, tc.off, tc.length, tc.payload)
		errno, gotCookie := c.reply()
		if errno != tc.errno || gotCookie != cookie {
			t.Fatalf("%s: errno %d cookie %d, want %d and %d", tc.name, errno, gotCookie, tc.errno, cookie)
		}
		if tc.wantPayload {
			data := make([]byte, tc.length)
			c.read(data)
			if !bytes.Equal(data, block) {
				t.Fatalf("%s: wrong data", tc.name)
			}
		}
	}
	// The zeroed and trimmed ranges read as zeros, the rest of the block
	// as written: the connection survived every error in sync.
	c.send(cmdRead, 0, 1, 4096, 4096, nil)
	if errno, _ := c.reply(); errno != 0 {
		t.Fatalf("final read: errno %d", errno)
	}
	data := make([]byte, 4096)
	c.read(data)
	want := bytes.Clone(block)
	clear(want[:2048])
	if !bytes.Equal(data, want) {
		t.Fatalf("final read: %v", data[:2049])
	}
	ro := open(t, s, "ro")
	ro.send(cmdWrite, 0, 5, 0, 512, block[:512])
	if errno, _ := ro.reply(); errno != 1 {
		t.Fatalf("write to read-only export: errno %d, want EPERM", errno)
	}
}

// TestPipelinedAcrossConnections keeps many requests in flight on each of
// several connections to one export and checks every reply.
func TestPipelinedAcrossConnections(t *testing.T) {
	d, _ := fileDevice(t, 8<<20)
	s := serve(t, nbd.Export{Name: "vol", Device: d})
	const conns, requests = 4, 300
	errs := make(chan error, conns)
	clients := make([]*client, conns)
	for i := range clients {
		clients[i] = open(t, s, "vol")
	}
	for ci, c := range clients {
		go func() {
			errs <- pipeline(c, uint64(ci)*(2<<20), byte(ci+1), requests)
		}()
	}
	for range conns {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// pipeline writes requests distinct 4 KiB blocks at base without waiting,
// then reads them all back the same way, then checks every reply.
func pipeline(c *client, base uint64, stamp byte, requests int) error {
	go func() {
		for i := range requests {
			b := bytes.Repeat([]byte{stamp, byte(i)}, 2048)
			c.send(cmdWrite, 0, uint64(i), base+uint64(i)*4096, 4096, b)
		}
	}()
	seen := map[uint64]bool{}
	for range requests {
		errno, cookie := c.reply()
		if errno != 0 || seen[cookie] || cookie >= uint64(requests) {
			return fmt.Errorf("write reply errno %d cookie %d", errno, cookie)
		}
		seen[cookie] = true
	}
	go func() {
		for i := range requests {
			c.send(cmdRead, 0, uint64(i), base+uint64(i)*4096, 4096, nil)
		}
	}()
	data := make([]byte, 4096)
	for range requests {
		errno, cookie := c.reply()
		if errno != 0 {
			return fmt.Errorf("read reply errno %d", errno)
		}
		if _, err := io.ReadFull(c.r, data); err != nil {
			return err
		}
		if !bytes.Equal(data, bytes.Repeat([]byte{stamp, byte(cookie)}, 2048)) {
			return fmt.Errorf("read %d returned another block's data", cookie)
		}
	}
	return nil
}

func TestMalformedRequestClosesOnlyItsConnection(t *testing.T) {
	d, _ := fileDevice(t, 1<<20)
	s := serve(t, nbd.Export{Name: "vol", Device: d})
	good := open(t, s, "vol")
	for name, raw := range map[string][]byte{
		"bad magic":      bytes.Repeat([]byte{0xff}, 28),
		"oversize write": nbd.AppendRequest(nil, nbd.Request{Type: cmdWrite, Length: 64 << 20}),
		"bad option":     nil,
	} {
		var c *client
		if raw == nil {
			c = dial(t, s)
			c.flags(1)
			c.write(make([]byte, 16))
		} else {
			c = open(t, s, "vol")
			c.write(raw)
		}
		if !c.closed() {
			t.Fatalf("%s: connection left open", name)
		}
		good.send(cmdFlush, 0, 9, 0, 0, nil)
		if errno, cookie := good.reply(); errno != 0 || cookie != 9 {
			t.Fatalf("after %s on another connection: errno %d cookie %d", name, errno, cookie)
		}
	}
}

// gatedDevice holds writes until its gate closes.
type gatedDevice struct {
	device.Device
	entered chan struct{}
	gate    chan struct{}
}

func (d *gatedDevice) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	d.entered <- struct{}{}
	<-d.gate
	return d.Device.WriteAt(ctx, p, off, fua)
}

// TestDiscAndShutdownWaitForInFlightRequests: a request in flight when
// the client sends NBD_CMD_DISC, or when the server shuts down, still gets
// its reply before the connection closes.
func TestDiscAndShutdownWaitForInFlightRequests(t *testing.T) {
	f, _ := fileDevice(t, 1<<20)
	d := &gatedDevice{Device: f, entered: make(chan struct{}, 1), gate: make(chan struct{})}
	s := serve(t, nbd.Export{Name: "vol", Device: d})
	c := open(t, s, "vol")
	c.send(cmdWrite, 0, 1, 0, 512, make([]byte, 512))
	<-d.entered
	c.send(cmdDisc, 0, 2, 0, 0, nil)
	close(d.gate)
	if errno, cookie := c.reply(); errno != 0 || cookie != 1 {
		t.Fatalf("write in flight at DISC: errno %d cookie %d", errno, cookie)
	}
	if !c.closed() {
		t.Fatal("connection open after DISC")
	}

	d.gate = make(chan struct{})
	c = open(t, s, "vol")
	c.send(cmdWrite, 0, 3, 0, 512, make([]byte, 512))
	<-d.entered
	shut := make(chan error, 1)
	go func() { shut <- s.srv.Shutdown(context.Background()) }()
	close(d.gate)
	if errno, cookie := c.reply(); errno != 0 || cookie != 3 {
		t.Fatalf("write in flight at shutdown: errno %d cookie %d", errno, cookie)
	}
	if !c.closed() {
		t.Fatal("connection open after shutdown")
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("unix", s.socket); err == nil {
		t.Fatal("server still accepting after shutdown")
	}
}
