package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/enginerun"
)

// devFrontends are frontends `drover dev` starts on its volume besides
// the ones chosen with --frontend. A frontend with no flags of its own can
// add itself from an init function in its own file, so adding one never
// touches dev.go:
//
//	func init() { devFrontends = append(devFrontends, serveDevThing) }
var devFrontends []Frontend

// controlServeFlags say where a server (drover dev, drover engine) serves
// its control API: a unix socket for this host (its owner and root only)
// and, opt-in, TCP, which beyond loopback needs mutual TLS or
// --insecure-listen.
type controlServeFlags struct {
	socket   string // unix socket path; "" before defaults are settled
	addr     string // TCP address, or unix:PATH meaning socket
	tls      tlsFlags
	insecure bool
}

func (f *controlServeFlags) register(fs *pflag.FlagSet, socketWhere, tlsWhat string) {
	fs.StringVar(&f.socket, "control-socket", "", "unix socket for the control API (mode 0600; default "+socketWhere+")")
	fs.StringVar(&f.addr, "control", "", "also serve the control API on this TCP address (loopback, or anywhere with --tls-*)")
	fs.BoolVar(&f.insecure, "insecure-listen", false, "allow --control beyond loopback without TLS: anyone who reaches it controls the volume")
	f.tls.register(fs, tlsWhat)
}

// controlListeners are the bound control API listeners and how to serve
// them.
type controlListeners struct {
	lis    []net.Listener
	cfg    control.ServerConfig
	socket string        // the unix socket, "" if none
	self   controlTarget // how the server's own helpers reach it
}

func (c *controlListeners) Close() {
	for _, l := range c.lis {
		l.Close()
	}
}

// listenControl binds the control API's addresses: callers do it before
// anything else, so that an address in use is an error before a volume
// is created or a replica dialed. The unix socket (defaultSocket unless
// --control-socket or --control unix:PATH says otherwise) is served
// unless TCP is asked for and socketWithTCP is false.
func listenControl(f *controlServeFlags, defaultSocket string, socketWithTCP bool) (*controlListeners, error) {
	socket, tcp := f.socket, f.addr
	if p, ok := control.IsUnix(tcp); ok {
		socket, tcp = p, ""
	}
	if socket == "" && (tcp == "" || socketWithTCP) {
		socket = defaultSocket
	}
	c := &controlListeners{socket: socket}
	if socket != "" {
		lis, err := control.ListenUnix(socket)
		if err != nil {
			return nil, err
		}
		c.lis = append(c.lis, lis)
		c.self.addr = "unix:" + socket
	}
	if tcp != "" {
		if err := c.listenTCP(f, tcp); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func (c *controlListeners) listenTCP(f *controlServeFlags, addr string) error {
	withTLS := !f.tls.files.Empty()
	if err := control.CheckListen(addr, withTLS, f.insecure); err != nil {
		return err
	}
	if withTLS {
		var err error
		if c.cfg.TLS, err = f.tls.files.ServerConfig(); err != nil {
			return fmt.Errorf("control API TLS: %w", err)
		}
	} else if host, _, _ := net.SplitHostPort(addr); f.insecure && !isLoopbackHost(host) {
		slog.Warn("control API listens without authentication (--insecure-listen): anyone who can reach it can write, revert or delete the volume", "addr", addr)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("control API on %s: %w (pick another with --control)", addr, err)
	}
	c.lis = append(c.lis, lis)
	if c.self.addr == "" {
		c.self = controlTarget{addr: lis.Addr().String(), tls: f.tls}
	}
	return nil
}

func isLoopbackHost(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

// describe says where the control API is and how to reach it.
func (c *controlListeners) describe(defaultSocket string) string {
	var where []string
	for _, l := range c.lis {
		if l.Addr().Network() == "unix" {
			where = append(where, "unix:"+l.Addr().String())
		} else {
			where = append(where, l.Addr().String())
		}
	}
	hint := "drover volume info --control " + where[0]
	if c.socket != "" && c.socket == defaultSocket {
		hint = "drover volume info"
	}
	return fmt.Sprintf("control API on %s (try: %s)", strings.Join(where, " and "), hint)
}

// runEngine starts an engine driver, its control API on ctl's listeners
// (which it closes; ctlHint says where they are), with crypt (when not
// nil) encrypting what the frontends write, or re-encrypting the volume
// meanwhile, and the given frontends, prints what it serves, and runs until
// SIGINT or SIGTERM (or ctx ends). On the way out it flushes the volume.
// Sidecars (metrics, the console) start as soon as the driver exists,
// before the volume serves, and stop with it.
func runEngine(ctx context.Context, out io.Writer, cfg enginerun.Config, ctl *controlListeners, ctlHint string, frontends []Frontend, crypt *volumeCrypt, sidecars ...Frontend) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := enginerun.New(cfg)
	if err != nil {
		ctl.Close()
		return err
	}
	defer d.Close()
	vol := enginerun.NewVolume(d)
	// The frontends' IOs pass a QoS limiter: no limits until `drover
	// volume qos` sets some through the control API.
	limiter := device.NewLimiter()
	gs := grpc.NewServer(control.ServerOptions(ctl.cfg)...)
	control.NewServer(vol).WithQoS(limiter).Register(gs)
	for _, lis := range ctl.lis {
		go func() { _ = gs.Serve(lis) }()
	}
	defer gs.Stop()
	fmt.Fprintln(out, ctlHint)
	if err := startSidecars(ctx, vol, out, sidecars); err != nil {
		return err
	}
	if err := waitServing(ctx, d, out); err != nil {
		return err
	}
	fmt.Fprintf(out, "volume %s serving: %s\n", cfg.Volume, formatSize(d.SizeBytes()))
	var dev device.Device = vol
	if crypt != nil {
		enc, wait, err := crypt.open(ctx, d, vol, out)
		if err != nil {
			return err
		}
		// After the final flush below, before the driver closes: a
		// rekey step under way ends (the next start resumes after it).
		defer wait()
		dev = enc
		fmt.Fprintf(out, "volume %s is encrypted (AES-256-XTS): frontends see plaintext, everything below ciphertext\n", cfg.Volume)
	}
	dev = device.NewLimited(dev, limiter)
	var serves []func() error
	for _, f := range frontends {
		serve, err := f(ctx, dev, out)
		if err != nil {
			stop()
			return fmt.Errorf("frontend: %w", err)
		}
		serves = append(serves, serve)
	}
	fe := make(chan error, len(serves))
	for _, serve := range serves {
		go func() { fe <- serve() }()
	}
	fmt.Fprintln(out, "stop with Ctrl-C or SIGTERM (acknowledged writes are flushed on the way out); after kill -9, run the same command again: flushed writes are kept")
	select {
	case <-ctx.Done():
	case err = <-fe:
		serves = serves[1:]
	}
	stop()
	// The frontends finish the requests they have read before the flush.
	for range serves {
		if ferr := <-fe; err == nil {
			err = ferr
		}
	}
	flushCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if ferr := vol.Flush(flushCtx); ferr != nil {
		slog.Warn("final flush", "err", ferr)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("frontend: %w", err)
	}
	return nil
}

// waitServing waits for the engine to open its replicas, telling the user
// every few seconds why it is still waiting.
func waitServing(ctx context.Context, d *enginerun.Driver, out io.Writer) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := d.WaitServing(wctx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		fmt.Fprintf(out, "waiting for replicas: %v\n", err)
	}
}

// startSidecars starts runEngine's sidecars; each runs until ctx ends.
func startSidecars(ctx context.Context, vol *enginerun.Volume, out io.Writer, sidecars []Frontend) error {
	for _, s := range sidecars {
		serve, err := s(ctx, vol, out)
		if err != nil {
			return err
		}
		go func() {
			if err := serve(); err != nil {
				slog.Warn("sidecar stopped", "err", err)
			}
		}()
	}
	return nil
}
