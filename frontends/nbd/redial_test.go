package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/device"
)

// restartable serves one device on a fixed TCP address; stop ends the
// server (Shutdown: requests in flight finish), start serves again on the
// same address, as a restarted agent's engine does.
type restartable struct {
	t    *testing.T
	dev  device.Device
	addr string
	srv  *nbd.Server
}

func (s *restartable) start() {
	s.t.Helper()
	srv, err := nbd.NewServer(nbd.Config{Exports: []nbd.Export{{Name: "vol", Device: s.dev}},
		Logger: slog.New(slog.NewTextHandler(testWriter{s.t}, nil))})
	if err != nil {
		s.t.Fatal(err)
	}
	addr := s.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	for range 100 { // the old listener's port may linger a moment
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	s.addr, s.srv = lis.Addr().String(), srv
	go srv.Serve(lis)
}

func (s *restartable) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.t.Errorf("shutdown: %v", err)
	}
}

// redialed starts a restartable server of dev and a Redialer to it (cfg
// without its URI); both end with the test, the Redialer first.
func redialed(t *testing.T, dev device.Device, cfg nbd.RedialConfig) (*restartable, *nbd.Redialer) {
	t.Helper()
	s := &restartable{t: t, dev: dev}
	s.start()
	t.Cleanup(func() { s.stop() })
	cfg.URI = nbd.TCPURI(s.addr, "vol")
	r, err := nbd.NewRedialer(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return s, r
}

// TestRedialerSurvivesServerRestart writes through a Redialer while its
// server is stopped and started again on the same address: the writes
// wait instead of failing, and everything written reads back, from the
// Redialer and from the device itself.
func TestRedialerSurvivesServerRestart(t *testing.T) {
	dev, _ := fileDevice(t, 8<<20)
	s, r := redialed(t, dev, nbd.RedialConfig{})
	ctx := context.Background()
	if r.SizeBytes() != 8<<20 || r.MinBlockBytes() != dev.MinBlockBytes() {
		t.Fatalf("size %d min block %d, want %d and %d", r.SizeBytes(), r.MinBlockBytes(), 8<<20, dev.MinBlockBytes())
	}
	block := func(i int) []byte { return bytes.Repeat([]byte{byte(i), byte(i >> 8), 0x5a, 0xa5}, 1024) }
	const blocks = 512
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	done := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each writer rewrites its blocks until the restarts are over.
			for pass := 0; ; pass++ {
				for i := w; i < blocks; i += 4 {
					if err := r.WriteAt(ctx, block(i), uint64(i)*4096, false); err != nil {
						errs <- err
						return
					}
				}
				select {
				case <-done:
					return
				default:
				}
			}
		}()
	}
	// Restart the server twice while the writers run, each time waiting
	// for the relay to reconnect.
	for n := range uint64(2) {
		s.stop()
		time.Sleep(50 * time.Millisecond) // writes pile up meanwhile
		s.start()
		for r.Reconnects() < n+1 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a write failed across the restarts: %v", err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	for i := range blocks {
		if err := r.ReadAt(ctx, got, uint64(i)*4096); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, block(i)) {
			t.Fatalf("block %d through the relay: wrong data", i)
		}
		if err := dev.ReadAt(ctx, got, uint64(i)*4096); err != nil || !bytes.Equal(got, block(i)) {
			t.Fatalf("block %d on the device: wrong data (%v)", i, err)
		}
	}
	// Errors the server answers are the device's, not retried.
	if err := r.ReadAt(ctx, got, 8<<20); !errors.Is(err, device.ErrInvalid) {
		t.Fatalf("read past the end: %v, want ErrInvalid", err)
	}
}

// TestRedialerGivesUp: with the server gone for longer than the
// reconnect timeout, IO fails with ErrIO instead of waiting forever; a
// server back on the address serves again.
func TestRedialerGivesUp(t *testing.T) {
	dev, _ := fileDevice(t, 1<<20)
	s := &restartable{t: t, dev: dev}
	s.start()
	ctx := context.Background()
	r, err := nbd.NewRedialer(ctx, nbd.RedialConfig{URI: nbd.TCPURI(s.addr, "vol"), ReconnectTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s.stop()
	if err := r.WriteAt(ctx, make([]byte, 4096), 0, false); !errors.Is(err, device.ErrIO) {
		t.Fatalf("write with the server gone: %v, want ErrIO", err)
	}
	s.start()
	defer s.stop()
	deadline := time.Now().Add(time.Minute)
	for {
		err := r.WriteAt(ctx, make([]byte, 4096), 0, false)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write succeeded after the server came back: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDialClientBadURI: a URI that is not NBD's is a clear error.
func TestDialClientBadURI(t *testing.T) {
	for _, uri := range []string{"http://x/y", "nbd+unix:///vol", "::"} {
		if _, err := nbd.DialClient(context.Background(), uri); err == nil {
			t.Errorf("DialClient(%q) succeeded", uri)
		}
	}
}

// volatile is a device that acknowledges writes from memory and writes
// them to the file underneath only at a flush, like a server that acks
// before its data is durable; crash drops what is not flushed.
type volatile struct {
	*device.File
	mu    sync.Mutex
	dirty map[uint64][]byte // by 4 KiB-aligned offset
}

func (v *volatile) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for i := 0; i < len(p); i += 4096 {
		v.dirty[off+uint64(i)] = bytes.Clone(p[i : i+4096])
	}
	return nil
}

func (v *volatile) ReadAt(ctx context.Context, p []byte, off uint64) error {
	if err := v.File.ReadAt(ctx, p, off); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for i := 0; i < len(p); i += 4096 {
		if d, ok := v.dirty[off+uint64(i)]; ok {
			copy(p[i:i+4096], d)
		}
	}
	return nil
}

func (v *volatile) Flush(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for off, d := range v.dirty {
		if err := v.File.WriteAt(ctx, d, off, false); err != nil {
			return err
		}
	}
	clear(v.dirty)
	return v.File.Flush(ctx)
}

func (v *volatile) crash() {
	v.mu.Lock()
	defer v.mu.Unlock()
	clear(v.dirty)
}

// TestRedialerReplaysUnflushedWrites: a server that acknowledged writes
// and crashed before making them durable comes back; the Redialer
// replays them before anything else, so a flush on the new connection
// covers them and they read back. A flush ends their retention.
func TestRedialerReplaysUnflushedWrites(t *testing.T) {
	f, _ := fileDevice(t, 4<<20)
	v := &volatile{File: f, dirty: map[uint64][]byte{}}
	s, r := redialed(t, v, nbd.RedialConfig{})
	ctx := context.Background()
	block := func(i, gen int) []byte { return bytes.Repeat([]byte{byte(i), byte(gen), 0x77, 0x11}, 1024) }
	// Generation 1, flushed; generation 2 over half of it, not flushed.
	for i := range 64 {
		if err := r.WriteAt(ctx, block(i, 1), uint64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := r.RetainedBytes(); n != 0 {
		t.Fatalf("%d bytes retained after a flush", n)
	}
	for i := range 32 {
		if err := r.WriteAt(ctx, block(i, 2), uint64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.RetainedBytes(); n != 32*4096 {
		t.Fatalf("%d bytes retained, want %d", n, 32*4096)
	}
	s.stop()
	v.crash() // the server loses what it acknowledged and did not flush
	s.start()
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	for i := range 64 {
		want := block(i, 1)
		if i < 32 {
			want = block(i, 2)
		}
		if err := f.ReadAt(ctx, got, uint64(i)*4096); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("block %d on the device after the crash and a flush: wrong data (%v)", i, err)
		}
	}
	if n := r.RetainedBytes(); n != 0 {
		t.Fatalf("%d bytes retained after the flush", n)
	}
}

// TestRedialerBoundsRetained: writes past MaxRetainedBytes flush, so
// what is kept for replay stays bounded.
func TestRedialerBoundsRetained(t *testing.T) {
	dev, _ := fileDevice(t, 4<<20)
	_, r := redialed(t, dev, nbd.RedialConfig{MaxRetainedBytes: 64 << 10})
	ctx := context.Background()
	for i := range 256 {
		if err := r.WriteAt(ctx, make([]byte, 4096), uint64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
		if n := r.RetainedBytes(); n > 64<<10 {
			t.Fatalf("after write %d: %d bytes retained, bound %d", i, n, 64<<10)
		}
	}
}
