package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/drover-io/drover/frontends/iscsi"
	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/certs"
	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/metrics"
	"github.com/drover-io/drover/transports/peercred"
)

// Frontend serves a volume to hosts (NBD, iSCSI). It binds its listeners
// and prints where it serves to out before it returns, so that a bad
// address is an error at start and the output comes in order; serve then
// runs until ctx ends and shuts the frontend down (requests already read
// finish first).
type Frontend func(ctx context.Context, dev device.Device, out io.Writer) (serve func() error, err error)

// defaultNBDPort is NBD's IANA port.
const defaultNBDPort = "10809"

// frontendFlags are the frontend flags of drover dev and drover engine.
type frontendFlags struct {
	kinds       string
	nbdListen   []string
	iscsiListen string
	chap        iscsi.CHAP
	// openDiscovery lets discovery sessions in without CHAP when the
	// target requires it.
	openDiscovery bool
	// nbdTLS are the NBD server's certificate and key, and the CA its
	// clients' certificates must come from (optional).
	nbdTLS      certs.Files
	nbdInsecure bool
	// iscsiInsecure allows an iSCSI portal beyond loopback without CHAP.
	iscsiInsecure bool
	// conns gathers the frontends' connection counts for metrics.
	conns metrics.Frontends
}

// register adds the flags to fs. nbdDefault describes the default of
// --nbd-listen, which the command fills in at run time.
func (f *frontendFlags) register(fs *pflag.FlagSet, defaultKind, nbdDefault string) {
	fs.StringVar(&f.kinds, "frontend", defaultKind, "how hosts reach the volume: nbd, iscsi, nbd,iscsi or none")
	fs.StringSliceVar(&f.nbdListen, "nbd-listen", nil,
		"NBD listen addresses, comma-separated: host:port for TCP, unix:PATH (or a path with a /) for a unix socket (default "+nbdDefault+")")
	fs.StringVar(&f.iscsiListen, "iscsi-listen", iscsi.DefaultAddr, "iSCSI portal address (host:port)")
	fs.StringVar(&f.chap.User, "iscsi-chap-user", "", "require initiators to log in with CHAP as this user")
	fs.StringVar(&f.chap.Secret, "iscsi-chap-secret", "", "the initiator's CHAP secret, at least 12 bytes (or $DROVER_ISCSI_CHAP_SECRET)")
	fs.StringVar(&f.chap.MutualUser, "iscsi-chap-mutual-user", "", "user the target answers mutual CHAP with")
	fs.StringVar(&f.chap.MutualSecret, "iscsi-chap-mutual-secret", "", "the target's mutual CHAP secret (or $DROVER_ISCSI_CHAP_MUTUAL_SECRET)")
	fs.StringVar(&f.nbdTLS.Cert, "nbd-tls-cert", "", "NBD over TLS (NBD_OPT_STARTTLS, nbds:// URIs): the server's certificate; TCP clients must then start TLS")
	fs.StringVar(&f.nbdTLS.Key, "nbd-tls-key", "", "key of --nbd-tls-cert")
	fs.StringVar(&f.nbdTLS.CA, "nbd-tls-ca", "", "with --nbd-tls-cert: NBD clients must present a certificate signed by this CA")
	fs.BoolVar(&f.nbdInsecure, "nbd-insecure-listen", false, "allow --nbd-listen beyond loopback without TLS: anyone who reaches it reads and writes the volume")
	fs.BoolVar(&f.iscsiInsecure, "iscsi-insecure-listen", false, "allow --iscsi-listen beyond loopback without CHAP: anyone who reaches it reads and writes the volume")
	fs.BoolVar(&f.openDiscovery, "iscsi-open-discovery", false, "with CHAP: let discovery sessions list the target without CHAP (by default they need the same credentials)")
}

// frontends returns the frontends chosen for volume; nbdDefault is the
// NBD listen list when --nbd-listen is not given.
func (f *frontendFlags) frontends(volume string, nbdDefault []string) ([]Frontend, error) {
	var out []Frontend
	for _, kind := range strings.Split(f.kinds, ",") {
		switch strings.TrimSpace(kind) {
		case "none", "":
		case "nbd":
			addrs := f.nbdListen
			if len(addrs) == 0 {
				addrs = nbdDefault
			}
			tlsCfg, err := f.nbdTLSConfig(addrs)
			if err != nil {
				return nil, err
			}
			out = append(out, nbdFrontend(volume, addrs, tlsCfg, &f.conns))
		case "iscsi":
			fe, err := f.iscsiFrontend(volume)
			if err != nil {
				return nil, err
			}
			out = append(out, fe)
		default:
			return nil, fmt.Errorf("--frontend %q: want nbd, iscsi, nbd,iscsi or none", kind)
		}
	}
	return out, nil
}

// localPeerOnly lets in only this user and root on unix sockets and
// loopback TCP, which every user of the host can reach; connections from
// beyond loopback pass (TLS, CHAP or an insecure-listen flag decided
// about those at start).
func localPeerOnly(c net.Conn) error {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
		return nil
	}
	return peercred.Check(c)
}

// unixPeerOnly is localPeerOnly for unix sockets alone.
func unixPeerOnly(c net.Conn) error {
	if _, ok := c.(*net.UnixConn); !ok {
		return nil
	}
	return peercred.Check(c)
}

// nbdTLSConfig is the NBD server's TLS configuration (nil without
// --nbd-tls-cert). Without TLS, a TCP address beyond loopback is refused
// unless --nbd-insecure-listen.
func (f *frontendFlags) nbdTLSConfig(addrs []string) (*tls.Config, error) {
	if f.nbdTLS.Cert == "" && f.nbdTLS.Key == "" {
		if f.nbdTLS.CA != "" {
			return nil, errors.New("--nbd-tls-ca needs --nbd-tls-cert and --nbd-tls-key")
		}
		for _, a := range addrs {
			host, _, err := net.SplitHostPort(a)
			if _, unix := control.IsUnix(a); unix || err != nil || isLoopbackHost(host) {
				continue
			}
			if !f.nbdInsecure {
				return nil, fmt.Errorf("NBD on %s: refusing plain TCP beyond loopback: anyone who reaches it could read and write the volume; "+
					"give it --nbd-tls-cert/--nbd-tls-key (and --nbd-tls-ca for client certificates; see drover certs), listen on 127.0.0.1 or a unix socket, "+
					"or pass --nbd-insecure-listen on a network you trust", a)
			}
			slog.Warn("NBD listens without TLS (--nbd-insecure-listen): anyone who can reach it reads and writes the volume", "addr", a)
		}
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(f.nbdTLS.Cert, f.nbdTLS.Key)
	if err != nil {
		return nil, fmt.Errorf("--nbd-tls-cert/--nbd-tls-key: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pair}}
	if f.nbdTLS.CA != "" {
		pem, err := os.ReadFile(f.nbdTLS.CA)
		if err != nil {
			return nil, fmt.Errorf("--nbd-tls-ca: %w", err)
		}
		cfg.ClientCAs = x509.NewCertPool()
		if !cfg.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--nbd-tls-ca: %s holds no PEM certificate", f.nbdTLS.CA)
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// nbdFrontend serves the volume as the NBD export named volume on every
// address in addrs; with tlsCfg, TCP clients must start TLS.
func nbdFrontend(volume string, addrs []string, tlsCfg *tls.Config, conns *metrics.Frontends) Frontend {
	return func(ctx context.Context, dev device.Device, out io.Writer) (func() error, error) {
		accept := localPeerOnly
		if tlsCfg != nil && tlsCfg.ClientAuth == tls.RequireAndVerifyClientCert {
			accept = unixPeerOnly // TCP clients are checked by their certificates
		}
		srv, err := nbd.NewServer(nbd.Config{Exports: []nbd.Export{{Name: volume, Description: "Drover volume " + volume, Device: dev}},
			TLS: tlsCfg, TLSRequired: tlsCfg != nil, Accept: accept})
		if err != nil {
			return nil, err
		}
		var lns []net.Listener
		var uris []string
		for _, a := range addrs {
			ln, uri, err := listenNBD(a, volume, tlsCfg != nil)
			if err != nil {
				for _, l := range lns {
					l.Close()
				}
				return nil, err
			}
			lns = append(lns, ln)
			uris = append(uris, uri)
		}
		for _, u := range uris {
			fmt.Fprintf(out, "NBD export: %s\n", u)
		}
		conns.Add("nbd", srv.Connections, uris...)
		printNBDHelp(out, uris[0], volume, lns[0].Addr().String())
		return func() error {
			errc := make(chan error, len(lns))
			for _, l := range lns {
				go func() { errc <- srv.Serve(l) }()
			}
			var err error
			select {
			case <-ctx.Done():
			case err = <-errc:
			}
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			if errors.Is(err, nbd.ErrServerClosed) {
				err = nil
			}
			return err
		}, nil
	}
}

// listenNBD listens on one --nbd-listen address and returns the export's
// URI there.
func listenNBD(addr, volume string, withTLS bool) (net.Listener, string, error) {
	path, isUnix := strings.CutPrefix(addr, "unix:")
	if !isUnix && strings.Contains(addr, "/") {
		path, isUnix = addr, true
	}
	if !isUnix {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, "", fmt.Errorf("NBD: %w", err)
		}
		uri := nbd.TCPURI(ln.Addr().String(), volume)
		if withTLS {
			uri = "nbds" + strings.TrimPrefix(uri, "nbd") // STARTTLS; libnbd adds ?tls-certificates=DIR for client certificates
		}
		return ln, uri, nil
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, "", err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, "", fmt.Errorf("NBD: %w", err)
	}
	// Only this user and root open it (the server checks the peer too).
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, "", fmt.Errorf("NBD: %w", err)
	}
	return ln, nbd.UnixURI(path, volume), nil
}

// removeStaleSocket removes a unix socket left by a killed process: one
// that exists but that nothing answers on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil // listening reports what is wrong
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("NBD: socket %s is in use by another process", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("NBD: remove stale socket: %w", err)
	}
	return nil
}

// printNBDHelp tells the user how to attach the export at uri, served
// on the TCP address or unix socket path where.
func printNBDHelp(out io.Writer, uri, volume, where string) {
	fmt.Fprintf(out, `attach it with:
  nbdinfo '%[1]s'
  qemu-io -f raw -c 'read -v 0 512' '%[1]s'
  qemu-img convert -n -O raw IMAGE '%[1]s'     # copy an image in
  mkdir -p mnt && nbdfuse mnt/disk '%[1]s' &   # the volume as the file mnt/disk
`, uri)
	if h, p, err := net.SplitHostPort(where); err == nil {
		fmt.Fprintf(out, "  sudo modprobe nbd && sudo nbd-client %s %s /dev/nbd0 -N %s   # hosts with the nbd kernel module\n", h, p, volume)
	} else {
		fmt.Fprintf(out, "  sudo modprobe nbd && sudo nbd-client -unix %s /dev/nbd0 -N %s   # hosts with the nbd kernel module\n", where, volume)
	}
}

// iscsiFrontend serves the volume as LUN 0 of the target IQN(volume).
func (f *frontendFlags) iscsiFrontend(volume string) (Frontend, error) {
	chap := f.chap
	if chap.Secret == "" {
		chap.Secret = os.Getenv("DROVER_ISCSI_CHAP_SECRET")
	}
	if chap.MutualSecret == "" {
		chap.MutualSecret = os.Getenv("DROVER_ISCSI_CHAP_MUTUAL_SECRET")
	}
	var chapp *iscsi.CHAP
	if chap != (iscsi.CHAP{}) {
		chapp = &chap
	}
	addr, conns := f.iscsiListen, &f.conns
	if host, _, err := net.SplitHostPort(addr); chapp == nil && err == nil && !isLoopbackHost(host) {
		if !f.iscsiInsecure {
			return nil, fmt.Errorf("iSCSI portal on %s: refusing a portal beyond loopback without CHAP: anyone who reaches it could read and write the volume; "+
				"give it --iscsi-chap-user/--iscsi-chap-secret, listen on 127.0.0.1, or pass --iscsi-insecure-listen on a network you trust", addr)
		}
		slog.Warn("iSCSI portal without CHAP (--iscsi-insecure-listen): anyone who can reach it reads and writes the volume", "addr", addr)
	}
	discovery := chapp
	if f.openDiscovery {
		discovery = nil
	}
	return func(ctx context.Context, dev device.Device, out io.Writer) (func() error, error) {
		var accept func(net.Conn) error
		if chapp == nil {
			accept = localPeerOnly
		}
		srv, err := iscsi.Listen(iscsi.Config{Addr: addr, DiscoveryCHAP: discovery, Accept: accept,
			Targets: []iscsi.TargetConfig{{Volume: volume, LUNs: []device.Device{dev}, CHAP: chapp}}})
		if err != nil {
			return nil, err
		}
		portal := srv.Addr().String()
		conns.Add("iscsi", srv.Connections, iscsi.IQN(volume)+" on "+portal)
		fmt.Fprintf(out, "iSCSI target %s on portal %s (CHAP: %v, on discovery too: %v)\n", iscsi.IQN(volume), portal, chapp != nil, discovery != nil)
		fmt.Fprintf(out, "attach it with:\n  sudo iscsiadm -m discovery -t st -p %s && sudo iscsiadm -m node -T %s -p %s --login\n",
			portal, iscsi.IQN(volume), portal)
		return func() error { return srv.Serve(ctx) }, nil
	}, nil
}

// checkListen checks that every address the chosen frontends will listen
// on is free now (nbdDefault as in frontends), so that a command refuses
// one in use before it creates anything. Each is bound and released at
// once; a unix socket is in use if something answers on it.
func (f *frontendFlags) checkListen(volume string, nbdDefault []string) error {
	for _, kind := range strings.Split(f.kinds, ",") {
		switch strings.TrimSpace(kind) {
		case "nbd":
			addrs := f.nbdListen
			if len(addrs) == 0 {
				addrs = nbdDefault
			}
			for _, a := range addrs {
				if err := checkNBDAddr(a); err != nil {
					return fmt.Errorf("%w (pick another with --nbd-listen)", err)
				}
			}
		case "iscsi":
			ln, err := net.Listen("tcp", f.iscsiListen)
			if err != nil {
				return fmt.Errorf("iSCSI portal on %s: %w (pick another with --iscsi-listen)", f.iscsiListen, err)
			}
			ln.Close()
		}
	}
	return nil
}

// checkNBDAddr checks one --nbd-listen address (see checkListen).
func checkNBDAddr(addr string) error {
	path, isUnix := strings.CutPrefix(addr, "unix:")
	if !isUnix && strings.Contains(addr, "/") {
		path, isUnix = addr, true
	}
	if isUnix {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return fmt.Errorf("NBD: socket %s is in use by another process", path)
		}
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("NBD on %s: %w", addr, err)
	}
	return ln.Close()
}
