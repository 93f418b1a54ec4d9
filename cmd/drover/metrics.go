package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/spf13/pflag"

	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/metrics"
	"github.com/drover-io/drover/transports/replicarun"
)

// defaultDevMetricsAddr is where drover dev serves /metrics unless told
// otherwise (loopback: metrics name volumes and replicas).
const defaultDevMetricsAddr = "127.0.0.1:9570"

// httpFlag is a listen address for an HTTP endpoint (metrics, console).
// A default address that is busy is not an error: the endpoint is left
// off with a warning, so that two drover dev on one host (or parallel
// tests) still start; an address given on the command line must bind.
type httpFlag struct {
	name, what, addr, def string
	fs                    *pflag.FlagSet
}

func (f *httpFlag) register(fs *pflag.FlagSet, name, def, what, usage string) {
	f.name, f.def, f.what, f.fs = name, def, what, fs
	fs.StringVar(&f.addr, name, def, usage)
}

// listen binds the address; nil (and no error) when it is empty, or the
// default and busy.
func (f *httpFlag) listen(out io.Writer) (net.Listener, error) {
	if f.addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", f.addr)
	if err == nil {
		return ln, nil
	}
	if f.fs.Changed(f.name) {
		return nil, fmt.Errorf("%s on %s: %w (pick another with --%s, or --%s '' for none)", f.what, f.addr, err, f.name, f.name)
	}
	fmt.Fprintf(out, "%s off: %v (pick another address with --%s)\n", f.what, err, f.name)
	return nil, nil
}

// serveHTTP serves h on ln until ctx ends.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}

// volumeMetrics serves the volume's metrics (with its frontends'
// connections from fe) on ln at /metrics. It is a sidecar of runEngine:
// it starts before the volume serves, so a volume stuck opening shows.
//
// jobs (may be nil) are the backups and restores the process runs.
func volumeMetrics(ln net.Listener, volume string, fe *metrics.Frontends, jobs *metrics.Jobs) Frontend {
	return func(ctx context.Context, dev device.Device, out io.Writer) (func() error, error) {
		v, ok := dev.(*enginerun.Volume)
		if !ok {
			return nil, fmt.Errorf("metrics: volume is a %T, not an engine's", dev)
		}
		reg, err := metrics.NewRegistry(metrics.NewVolume(v, volume, fe, jobs))
		if err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics.Handler(reg))
		fmt.Fprintf(out, "metrics on http://%s/metrics\n", ln.Addr())
		return func() error { return serveHTTP(ctx, ln, mux) }, nil
	}
}

// serveReplicaMetrics serves a replica server's metrics on ln at
// /metrics until ctx ends.
func serveReplicaMetrics(ctx context.Context, out io.Writer, ln net.Listener, r *replicarun.Runner, dir string, conns func() int) error {
	reg, err := metrics.NewRegistry(metrics.NewReplica(r, dir, conns))
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics.Handler(reg))
	fmt.Fprintf(out, "metrics on http://%s/metrics\n", ln.Addr())
	go func() { _ = serveHTTP(ctx, ln, mux) }()
	return nil
}

// listenSidecars binds drover dev's HTTP endpoints (metrics, console)
// before anything is created, and returns runEngine's sidecars for them
// and a function closing the listeners (after serving, closing again is
// harmless).
func (o *devOptions) listenSidecars(out io.Writer) ([]Frontend, func(), error) {
	var sidecars []Frontend
	var lns []net.Listener
	jobs := &metrics.Jobs{} // the console's backups, in the metrics too
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	ml, err := o.metrics.listen(out)
	if err != nil {
		return nil, closeAll, err
	}
	if ml != nil {
		lns = append(lns, ml)
		sidecars = append(sidecars, volumeMetrics(ml, o.volume, &o.ff.conns, jobs))
	}
	cl, err := o.console.listen(out)
	if err != nil {
		return nil, closeAll, err
	}
	if cl != nil {
		lns = append(lns, cl)
		sidecars = append(sidecars, webConsole(cl, &o.ff.conns, jobs, o.backupTarget))
	}
	return sidecars, closeAll, nil
}

// engineSidecars binds drover engine's HTTP endpoints (both off unless
// given) and returns runEngine's sidecars for them.
func engineSidecars(out io.Writer, mf, cf *httpFlag, volume string, fe *metrics.Frontends) ([]Frontend, error) {
	var sidecars []Frontend
	ml, err := mf.listen(out)
	if err != nil {
		return nil, err
	}
	if ml != nil {
		sidecars = append(sidecars, volumeMetrics(ml, volume, fe, nil))
	}
	cl, err := cf.listen(out)
	if err != nil {
		if ml != nil {
			ml.Close()
		}
		return nil, err
	}
	if cl != nil {
		sidecars = append(sidecars, webConsole(cl, fe, nil, ""))
	}
	return sidecars, nil
}
