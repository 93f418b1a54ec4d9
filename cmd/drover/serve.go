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

	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/enginerun"
)

// devFrontends are frontends `drover dev` starts on its volume besides
// the ones chosen with --frontend. A frontend with no flags of its own can
// add itself from an init function in its own file, so adding one never
// touches dev.go:
//
//	func init() { devFrontends = append(devFrontends, serveDevThing) }
var devFrontends []Frontend

// listenControl binds the control API's address: callers do it before
// anything else, so that an address in use is an error before a volume
// is created or a replica dialed.
func listenControl(controlAddr string) (net.Listener, error) {
	lis, err := net.Listen("tcp", controlAddr)
	if err != nil {
		return nil, fmt.Errorf("control API on %s: %w (pick another with --control)", controlAddr, err)
	}
	return lis, nil
}

// runEngine starts an engine driver, its control API on lis (which it
// closes) and the given frontends, prints what it serves, and runs until
// SIGINT or SIGTERM (or ctx ends). On the way out it flushes the volume.
// Sidecars (metrics, the console) start as soon as the driver exists,
// before the volume serves, and stop with it.
func runEngine(ctx context.Context, out io.Writer, cfg enginerun.Config, lis net.Listener, frontends []Frontend, sidecars ...Frontend) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
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
	if err := startSidecars(ctx, vol, out, sidecars); err != nil {
		return err
	}
	if err := waitServing(ctx, d, out); err != nil {
		return err
	}
	fmt.Fprintf(out, "volume %s serving: %s\n", cfg.Volume, formatSize(d.SizeBytes()))
	var serves []func() error
	for _, f := range frontends {
		serve, err := f(ctx, vol, out)
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
