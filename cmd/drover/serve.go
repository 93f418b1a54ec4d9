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
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/drover-io/drover/frontends/device"
	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/enginerun"
)

// Frontend serves a volume to hosts (NBD, iSCSI). Start runs until ctx
// ends; it prints where it serves to out.
type Frontend func(ctx context.Context, dev device.Device, out io.Writer) error

// devFrontends are the frontends `drover dev` starts on its volume once it
// serves. A frontend package adds itself from an init function in its own
// file here, so adding one never touches dev.go:
//
//	func init() { devFrontends = append(devFrontends, serveDevNBD) }
var devFrontends []Frontend

// runEngine starts an engine driver, its control API on controlAddr and
// the given frontends, prints what it serves, and runs until SIGINT or
// SIGTERM (or ctx ends). On the way out it flushes the volume.
func runEngine(ctx context.Context, out io.Writer, cfg enginerun.Config, controlAddr string, frontends []Frontend) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	lis, err := net.Listen("tcp", controlAddr)
	if err != nil {
		return fmt.Errorf("control API: %w", err)
	}
	d, err := enginerun.New(cfg)
	if err != nil {
		lis.Close()
		return err
	}
	defer d.Close()
	vol := enginerun.NewVolume(d)
	gs := grpc.NewServer(control.ServerOptions()...)
	control.NewServer(vol).Register(gs)
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	fmt.Fprintf(out, "control API on %s (try: drover volume info --control %s)\n", lis.Addr(), lis.Addr())
	if err := waitServing(ctx, d, out); err != nil {
		return err
	}
	fmt.Fprintf(out, "volume %s serving: %s\n", cfg.Volume, formatSize(d.SizeBytes()))
	fe := make(chan error, len(frontends))
	for _, f := range frontends {
		go func() { fe <- f(ctx, vol, out) }()
	}
	fmt.Fprintln(out, "stop with Ctrl-C or SIGTERM (acknowledged writes are flushed on the way out)")
	select {
	case <-ctx.Done():
	case err = <-fe:
		stop()
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
