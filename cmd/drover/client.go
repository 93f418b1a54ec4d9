package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/control/controlpb"
)

// defaultControlAddr is where `drover dev` serves the control API, and so
// where the client subcommands look by default.
const defaultControlAddr = "127.0.0.1:7370"

// clientFlags are the flags every control-API client subcommand takes.
type clientFlags struct {
	addr    string
	timeout time.Duration
}

func (f *clientFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.addr, "control", defaultControlAddr, "control API address of the running engine")
	cmd.PersistentFlags().DurationVar(&f.timeout, "timeout", time.Minute, "give up after this long")
}

// run dials the control API and calls fn with a context bounded by the
// timeout.
func (f *clientFlags) run(cmd *cobra.Command, fn func(ctx context.Context, c controlpb.ControlClient) error) error {
	c, conn, err := control.Dial(f.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	defer cancel()
	if err := fn(ctx, c); err != nil {
		return fmt.Errorf("engine at %s: %w", f.addr, err)
	}
	return nil
}
