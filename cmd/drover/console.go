package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/drover-io/drover/transports/backuprun"
	"github.com/drover-io/drover/transports/console"
	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/metrics"
	"github.com/drover-io/drover/transports/objstore"
	"github.com/drover-io/drover/transports/peercred"
)

// defaultConsoleAddr is where drover dev serves the web console unless
// told otherwise.
const defaultConsoleAddr = "127.0.0.1:7380"

// webConsole serves the volume's web console on ln (a runEngine sidecar,
// like the metrics). With a backup target (a directory or s3:// URL, as
// drover backup --target takes), the page backs up and restores; jobs
// tracks those for the metrics.
//
// Like the control API, the console serves only its own user and root
// on this host (peercred.LocalOnly: the owner of the caller's socket is
// checked), so another local user cannot act on the volume through it.
func webConsole(ln net.Listener, fe *metrics.Frontends, jobs *metrics.Jobs, backupTarget string) Frontend {
	ln = peercred.LocalOnly(ln, func(c net.Conn, err error) {
		slog.Warn("web console: connection refused", "peer", c.RemoteAddr().String(), "err", err)
	})
	return func(ctx context.Context, dev device.Device, out io.Writer) (func() error, error) {
		v, ok := dev.(*enginerun.Volume)
		if !ok {
			return nil, fmt.Errorf("console: volume is a %T, not an engine's", dev)
		}
		cfg := console.Config{Volume: v, Frontends: fe, Jobs: jobs, BackupTarget: backupTarget}
		if backupTarget != "" {
			// A target that does not open leaves the console without
			// backups, not the volume unserved.
			if st, err := openBackupTarget(ctx, backupTarget); err != nil {
				fmt.Fprintf(out, "web console: backups off: %v\n", err)
				cfg.BackupError = err.Error()
			} else {
				cfg.Backups = backuprun.NewRepo(st)
			}
		}
		c, err := console.New(cfg)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(out, "web console on http://%s/\n", ln.Addr())
		return func() error {
			defer c.Close()
			return serveHTTP(ctx, ln, c)
		}, nil
	}
}

func openBackupTarget(ctx context.Context, target string) (objstore.Store, error) {
	creds, err := objstore.CredentialsFromEnv("")
	if err != nil {
		return nil, fmt.Errorf("--backup-target %s: %w", target, err)
	}
	st, err := objstore.Open(ctx, target, creds)
	if err != nil {
		return nil, fmt.Errorf("--backup-target %s: %w", target, err)
	}
	return st, nil
}
