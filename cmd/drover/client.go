package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	"github.com/drover-io/drover/transports/certs"
	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/control/controlpb"
)

// controlSocketName is the control API's unix socket in drover dev's data
// dir (and in an engine's run directory).
const controlSocketName = "control.sock"

// controlEnv names a control API address clients use when --control is
// not given.
const controlEnv = "DROVER_CONTROL"

// tlsFlags name the certificate, key and CA of a mutual-TLS endpoint
// (drover certs init and drover certs issue make them).
type tlsFlags struct{ files certs.Files }

func (f *tlsFlags) register(fs *pflag.FlagSet, what string) {
	fs.StringVar(&f.files.Cert, "tls-cert", "", "certificate (PEM) for mutual TLS on "+what+" (drover certs issue makes one)")
	fs.StringVar(&f.files.Key, "tls-key", "", "key of --tls-cert")
	fs.StringVar(&f.files.CA, "tls-ca", "", "CA certificate the other side's certificate must be signed by (drover certs init makes one)")
}

// controlTarget is how a client reaches an engine's control API: its
// address (found by resolveControl when empty) and its TLS files.
type controlTarget struct {
	addr string
	tls  tlsFlags
}

func (f *controlTarget) register(fs *pflag.FlagSet, usage string) {
	fs.StringVar(&f.addr, "control", "", usage+": unix:PATH or HOST:PORT (default: $"+controlEnv+", else the one running drover dev or engine on this host)")
	f.tls.register(fs, "a TCP control address")
}

// dial resolves the address and dials it.
func (f *controlTarget) dial() (controlpb.ControlClient, *grpc.ClientConn, error) {
	addr, err := resolveControl(f.addr)
	if err != nil {
		return nil, nil, err
	}
	f.addr = addr
	var cfg control.DialConfig
	if path, unix := control.IsUnix(addr); unix {
		if err := checkSocketAccess(path); err != nil {
			return nil, nil, err
		}
	} else if !f.tls.files.Empty() {
		if cfg.TLS, err = f.tls.files.ClientConfig(); err != nil {
			return nil, nil, fmt.Errorf("control API at %s: %w", addr, err)
		}
	}
	return control.Dial(addr, cfg)
}

// resolveControl returns addr, or, when it is empty, $DROVER_CONTROL or the
// one control socket found on this host: drover dev's in its default data
// dir, or an engine's under the run directory.
func resolveControl(addr string) (string, error) {
	if addr != "" {
		return addr, nil
	}
	if env := os.Getenv(controlEnv); env != "" {
		return env, nil
	}
	var looked, found []string
	if dir, err := defaultDataDir(); err == nil {
		looked = append(looked, filepath.Join(dir, controlSocketName))
	}
	if run, err := runDir(); err == nil {
		pattern := filepath.Join(run, "*", controlSocketName)
		matches, _ := filepath.Glob(pattern)
		looked = append(looked, pattern)
		looked = append(looked, matches...)
	}
	for _, p := range looked {
		if st, err := os.Stat(p); err == nil && st.Mode()&fs.ModeSocket != 0 {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 1:
		return "unix:" + found[0], nil
	case 0:
		return "", fmt.Errorf("no control API found on this host (looked for %s): start drover dev, or name the engine with --control unix:PATH or --control HOST:PORT",
			strings.Join(looked, " and "))
	}
	return "", fmt.Errorf("more than one control API on this host: pick one with --control unix:%s", strings.Join(found, " or --control unix:"))
}

// runDir is where engines keep their control sockets, one directory per
// volume: $XDG_RUNTIME_DIR/drover, /run/drover for root, else a directory
// of this user's under the temporary directory.
func runDir() (string, error) {
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" {
		return filepath.Join(x, "drover"), nil
	}
	if os.Geteuid() == 0 {
		return "/run/drover", nil
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("drover-%d", os.Geteuid())), nil
}

// clientFlags are the flags every control-API client subcommand takes.
type clientFlags struct {
	controlTarget
	timeout time.Duration
}

func (f *clientFlags) register(cmd *cobra.Command) {
	f.controlTarget.register(cmd.PersistentFlags(), "control API of the running engine")
	cmd.PersistentFlags().DurationVar(&f.timeout, "timeout", time.Minute, "give up after this long")
}

// run dials the control API and calls fn with a context bounded by the
// timeout.
func (f *clientFlags) run(cmd *cobra.Command, fn func(ctx context.Context, c controlpb.ControlClient) error) error {
	c, conn, err := f.dial()
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

// checkSocketAccess says clearly why a control socket cannot be used
// (gRPC would only retry and time out).
func checkSocketAccess(path string) error {
	_, err := os.Stat(path)
	if err == nil {
		err = syscall.Access(path, 2) // W_OK: connect needs write permission
		if err != nil {
			err = &fs.PathError{Op: "connect", Path: path, Err: err}
		}
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("control API: %w (the control socket is only for the user running the engine, and root)", err)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("control API: %w: is the engine running?", err)
	}
	return fmt.Errorf("control API: %w", err)
}
