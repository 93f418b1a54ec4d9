package fuzz

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/certs"
	"github.com/drover-io/drover/transports/device"
)

// FuzzNBDParseRequest: ParseRequest never panics, rejects only with
// ErrMalformed, and what it accepts re-encodes to the same header.
func FuzzNBDParseRequest(f *testing.F) {
	for _, r := range []nbd.Request{
		{Type: 0, Cookie: 1, Offset: 4096, Length: 4096},
		{Type: 1, Flags: 1, Cookie: 1 << 60, Offset: 512, Length: 32 << 20},
		{Type: 6, Flags: 2 | 16, Offset: ^uint64(0), Length: ^uint32(0)},
		{Type: 2},
	} {
		b := nbd.AppendRequest(nil, r)
		f.Add(b)
		f.Add(b[:27])
	}
	f.Add(bytes.Repeat([]byte{0xff}, 28))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := nbd.ParseRequest(b)
		if err != nil {
			if !errors.Is(err, nbd.ErrMalformed) || r != (nbd.Request{}) {
				t.Fatalf("ParseRequest = %+v, %v: want zero and ErrMalformed", r, err)
			}
			return
		}
		if enc := nbd.AppendRequest(nil, r); !bytes.Equal(enc, b[:28]) {
			t.Fatalf("accepted header re-encodes differently:\n in %x\nout %x", b[:28], enc)
		}
	})
}

// FuzzNBDSession feeds arbitrary client bytes (option haggling, then
// requests) to a server connection: it must never panic or hang, must
// open with the fixed newstyle hello, and its option replies must be
// well formed up to the point the session enters transmission.
func FuzzNBDSession(f *testing.F) {
	dev := &memDevice{data: make([]byte, 1<<20)}
	adev := &asyncMemDevice{memDevice: memDevice{data: make([]byte, 1<<20)}}
	srv, err := nbd.NewServer(nbd.Config{
		Exports: []nbd.Export{{Name: "vol", Device: dev}, {Name: "ro", Device: dev, ReadOnly: true},
			{Name: "avol", Device: adev}},
		Logger:           slog.New(slog.DiscardHandler),
		MaxBytesInFlight: 1 << 20,
		MaxBlockBytes:    1 << 20,
	})
	if err != nil {
		f.Fatal(err)
	}
	// The same sessions against a server that requires TLS: options
	// before NBD_OPT_STARTTLS are refused, and after it the fuzzer's
	// bytes meet the TLS handshake.
	srvTLS, err := nbd.NewServer(nbd.Config{
		Exports: []nbd.Export{{Name: "vol", Device: dev}},
		Logger:  slog.New(slog.DiscardHandler),
		TLS:     fuzzTLSConfig(f), TLSRequired: true,
	})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range seedSessions() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, srv := range []*nbd.Server{srv, srvTLS} {
			c := &scriptConn{in: bytes.NewReader(in)}
			done := make(chan struct{})
			go func() {
				// Any outcome is fine; only panics and hangs are bugs.
				_ = srv.ServeConn(c)
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("ServeConn did not return after its input ended")
			}
			checkOptionReplies(t, c.output())
		}
	})
}

// fuzzTLSConfig is a TLS server configuration with a certificate from a
// CA made for the run.
func fuzzTLSConfig(f *testing.F) *tls.Config {
	dir := f.TempDir()
	if err := certs.Init(dir, "fuzz", time.Now()); err != nil {
		f.Fatal(err)
	}
	if err := certs.Issue(dir, certs.IssueOptions{Name: "server", Hosts: []string{"127.0.0.1"}}, time.Now()); err != nil {
		f.Fatal(err)
	}
	cfg, err := certs.Files{Cert: filepath.Join(dir, "server.crt"), Key: filepath.Join(dir, "server.key"),
		CA: filepath.Join(dir, certs.CAFile)}.ServerConfig()
	if err != nil {
		f.Fatal(err)
	}
	return cfg
}

// seedSessions are whole client sessions: each negotiation path, then
// requests of every kind.
func seedSessions() [][]byte {
	opt := func(b []byte, o uint32, data []byte) []byte {
		b = binary.BigEndian.AppendUint64(b, 0x49484156454f5054)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	goData := func(name string) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
		b = append(b, name...)
		return append(b, 0, 2, 0, 1, 0, 3)
	}
	req := func(b []byte, typ, flags uint16, off uint64, length uint32, payload bool) []byte {
		b = nbd.AppendRequest(b, nbd.Request{Type: typ, Flags: flags, Cookie: uint64(len(b)), Offset: off, Length: length})
		if payload {
			b = append(b, bytes.Repeat([]byte{0x5a}, int(length))...)
		}
		return b
	}
	requests := func(b []byte) []byte {
		b = req(b, 1, 1, 4096, 4096, true)
		b = req(b, 0, 0, 4096, 4096, false)
		b = req(b, 6, 2, 0, 8192, false)
		b = req(b, 4, 0, 512, 512, false)
		b = req(b, 3, 0, 0, 0, false)
		b = req(b, 0, 0, 1<<20, 512, false)
		b = req(b, 9, 0, 0, 0, false)
		return req(b, 2, 0, 0, 0, false)
	}
	flags := []byte{0, 0, 0, 3}
	var seeds [][]byte
	b := opt(append([]byte(nil), flags...), 3, nil)
	b = opt(b, 6, goData("ro"))
	b = opt(b, 8, nil)
	b = opt(b, 7, goData("vol"))
	seeds = append(seeds, requests(b))
	seeds = append(seeds, requests(opt(append([]byte(nil), flags...), 1, []byte("vol"))))
	seeds = append(seeds, requests(opt(append([]byte(nil), flags...), 1, []byte("avol"))))
	seeds = append(seeds, opt(append([]byte(nil), flags...), 2, nil))
	// STARTTLS, then a GO the server reads as a TLS handshake.
	seeds = append(seeds, opt(opt(append([]byte(nil), flags...), 5, nil), 7, goData("vol")))
	seeds = append(seeds, opt(append([]byte(nil), flags...), 7, goData("missing")))
	seeds = append(seeds, []byte{0, 0, 0, 0})
	return seeds
}

// checkOptionReplies parses the server's output: the hello, then option
// replies; it stops at the first bytes that are not one (an export-name
// reply or transmission).
func checkOptionReplies(t *testing.T, out []byte) {
	if len(out) < 18 || string(out[:8]) != "NBDMAGIC" || string(out[8:16]) != "IHAVEOPT" {
		t.Fatalf("server hello %x", out[:min(len(out), 18)])
	}
	out = out[18:]
	for len(out) >= 20 && binary.BigEndian.Uint64(out) == 0x3e889045565a9 {
		n := binary.BigEndian.Uint32(out[16:20])
		if uint64(len(out)-20) < uint64(n) {
			t.Fatalf("option reply of %d bytes cut short at %d", n, len(out)-20)
		}
		out = out[20+n:]
	}
}

// scriptConn is a net.Conn that reads a fixed script and records what is
// written.
type scriptConn struct {
	in  *bytes.Reader
	mu  sync.Mutex
	out bytes.Buffer
}

func (c *scriptConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.in.Len() == 0 {
		return 0, io.EOF
	}
	return c.in.Read(p)
}

func (c *scriptConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

func (c *scriptConn) output() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// memDevice is an in-memory device.Device: the session fuzzer spends its
// time in the server, not in syscalls.
type memDevice struct {
	mu   sync.Mutex
	data []byte
}

func (d *memDevice) SizeBytes() uint64           { return uint64(len(d.data)) }
func (d *memDevice) MinBlockBytes() uint32       { return 512 }
func (d *memDevice) PreferredBlockBytes() uint32 { return 4096 }
func (d *memDevice) Flush(context.Context) error { return nil }

func (d *memDevice) check(off, length uint64) error {
	if off%512 != 0 || length%512 != 0 || off > uint64(len(d.data)) || length > uint64(len(d.data))-off {
		return device.ErrInvalid
	}
	return nil
}

func (d *memDevice) ReadAt(_ context.Context, p []byte, off uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(off, uint64(len(p))); err != nil {
		return err
	}
	copy(p, d.data[off:])
	return nil
}

func (d *memDevice) WriteAt(_ context.Context, p []byte, off uint64, _ bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(off, uint64(len(p))); err != nil {
		return err
	}
	copy(d.data[off:], p)
	return nil
}

func (d *memDevice) Trim(ctx context.Context, off, length uint64, fua bool) error {
	return d.WriteZeroes(ctx, off, length, fua)
}

func (d *memDevice) WriteZeroes(_ context.Context, off, length uint64, _ bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(off, length); err != nil {
		return err
	}
	clear(d.data[off : off+length])
	return nil
}

// asyncMemDevice is memDevice with device.Async: Start completes every
// third request at once and queues the rest for Run, so the session
// fuzzer drives the NBD server's asynchronous transmission too.
type asyncMemDevice struct {
	memDevice
	qmu    sync.Mutex
	queue  []*device.Request
	starts int
}

func (d *asyncMemDevice) Start(r *device.Request) {
	d.qmu.Lock()
	d.starts++
	now := d.starts%3 == 0
	if !now {
		d.queue = append(d.queue, r)
	}
	d.qmu.Unlock()
	if now {
		r.Done(r, device.Do(context.Background(), &d.memDevice, r))
	}
}

func (d *asyncMemDevice) Run() {
	d.qmu.Lock()
	q := d.queue
	d.queue = nil
	d.qmu.Unlock()
	for _, r := range q {
		r.Done(r, device.Do(context.Background(), &d.memDevice, r))
	}
}
