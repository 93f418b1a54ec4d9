package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/certs"
	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/replicadir"
	"github.com/drover-io/drover/transports/replicarun"
	"github.com/drover-io/drover/transports/tcp"
)

// quietLogger keeps servers' info lines out of the table.
func (e *benchEnv) quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// serveNBD serves dev on the run's unix socket; stop shuts the server
// down, then calls closeDev.
func (e *benchEnv) serveNBD(dev device.Device, closeDev func()) (string, func(), error) {
	srv, err := nbd.NewServer(nbd.Config{Exports: []nbd.Export{{Name: "", Device: dev}}, Logger: e.quietLogger()})
	if err != nil {
		closeDev()
		return "", nil, err
	}
	os.Remove(e.sock)
	l, err := net.Listen("unix", e.sock)
	if err != nil {
		closeDev()
		return "", nil, fmt.Errorf("listen: %w", err)
	}
	go srv.Serve(l)
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		closeDev()
		os.Remove(e.sock)
	}
	return nbd.UnixURI(e.sock, ""), stop, nil
}

func (e *benchEnv) startDroverFile(context.Context) (string, func(), error) {
	d, err := device.OpenFile(e.path, device.FileConfig{})
	if err != nil {
		return "", nil, err
	}
	e.pids = []int{os.Getpid()}
	return e.serveNBD(d, func() { d.Close() })
}

// startDroverLocal runs a volume of n replicas on filestore directories
// under the run's directory, in this process on in-process links (as
// drover dev does), fills it, and serves it over NBD.
func (e *benchEnv) startDroverLocal(ctx context.Context, n int) (string, func(), error) {
	return e.startDroverLocalCrypt(ctx, n, false)
}

// startDroverLocalCrypt is startDroverLocal, with the volume encrypted
// (device.Encrypted, a random key) when encrypt is set.
func (e *benchEnv) startDroverLocalCrypt(ctx context.Context, n int, encrypt bool) (string, func(), error) {
	base := filepath.Join(e.dir, fmt.Sprintf("drover-%dr", n))
	if encrypt {
		base += "-crypt"
	}
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		os.RemoveAll(base)
	}
	runners := map[string]*replicarun.Runner{}
	cfg := enginerun.Config{Volume: "bench", Logger: e.quietLogger()}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("r%d", i)
		r, closeReplica, err := openReplica(filepath.Join(base, id), proto.ReplicaID(id), e.cfg.SizeBytes)
		if err != nil {
			closeAll()
			return "", nil, err
		}
		closers = append(closers, closeReplica)
		runners[id] = r
		cfg.Replicas = append(cfg.Replicas, enginerun.Replica{ID: proto.ReplicaID(id), Addr: id})
	}
	cfg.Dial = replicarun.LocalDialer(runners)
	return e.startEngineCrypt(ctx, cfg, closers, closeAll, encrypt)
}

// startEngine starts an engine on cfg, fills its volume and serves it;
// closers (already registered in closeAll) close what cfg's links reach.
func (e *benchEnv) startEngine(ctx context.Context, cfg enginerun.Config, closers []func(), closeAll func()) (string, func(), error) {
	return e.startEngineCrypt(ctx, cfg, closers, closeAll, false)
}

// startEngineCrypt is startEngine, serving the volume encrypted when
// encrypt is set.
func (e *benchEnv) startEngineCrypt(ctx context.Context, cfg enginerun.Config, closers []func(), closeAll func(), encrypt bool) (string, func(), error) {
	e.pids = append(e.pids, os.Getpid())
	d, err := enginerun.New(cfg)
	if err != nil {
		closeAll()
		return "", nil, err
	}
	closeEngine := func() { d.Close(); closeAll() }
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := d.WaitServing(wctx); err != nil {
		closeEngine()
		return "", nil, err
	}
	var vol device.Device = enginerun.NewVolume(d)
	if encrypt {
		key := make([]byte, device.CryptKeyBytes)
		rand.Read(key)
		if vol, err = device.NewEncrypted(vol, key); err != nil {
			closeEngine()
			return "", nil, err
		}
	}
	if err := fill(ctx, vol); err != nil {
		closeEngine()
		return "", nil, fmt.Errorf("fill volume: %w", err)
	}
	return e.serveNBD(vol, closeEngine)
}

// openReplica creates a replica of sizeBytes on a filestore in dir.
func openReplica(dir string, id proto.ReplicaID, sizeBytes uint64) (*replicarun.Runner, func(), error) {
	rd, err := replicadir.Open(replicadir.Config{Dir: dir, ID: id, CreateSizeBytes: sizeBytes})
	if err != nil {
		return nil, nil, err
	}
	return rd.Runner, func() { rd.Close() }, nil
}

// fill writes every block of the volume once (1 MiB writes, 8 at a
// time) and flushes, so reads hit data on every replica, as they do the
// other targets' backing file, rather than unwritten blocks.
func fill(ctx context.Context, vol device.Device) error {
	return device.Fill(ctx, vol, 1<<20, 8, device.Pattern)
}

// startDroverTCP runs n replica processes (Config.ReplicaCommand)
// listening on loopback and an engine in this process that reaches them
// over TCP.
func (e *benchEnv) startDroverTCP(ctx context.Context, n int) (string, func(), error) {
	return e.startDroverRemote(ctx, n, fmt.Sprintf("drover-%dr-tcp", n), false)
}

func (e *benchEnv) startDroverTLS(ctx context.Context, n int) (string, func(), error) {
	return e.startDroverRemote(ctx, n, fmt.Sprintf("drover-%dr-tls", n), true)
}

// startDroverRemote runs n replica processes reached over TCP loopback,
// with mutual TLS under a CA made for the run when withTLS.
func (e *benchEnv) startDroverRemote(ctx context.Context, n int, name string, withTLS bool) (string, func(), error) {
	if len(e.cfg.ReplicaCommand) == 0 {
		return "", nil, fmt.Errorf("%w: no replica command", errSkip)
	}
	base := filepath.Join(e.dir, name)
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		os.RemoveAll(base)
	}
	cfg := enginerun.Config{Volume: "bench", Logger: e.quietLogger()}
	var dc tcp.DialConfig
	var tlsArgs []string
	if withTLS {
		engine, replica, err := benchPKI(filepath.Join(base, "certs"))
		if err == nil {
			dc.TLS, err = engine.ClientConfig()
		}
		if err != nil {
			closeAll()
			return "", nil, err
		}
		tlsArgs = []string{"--tls-cert", replica.Cert, "--tls-key", replica.Key, "--tls-ca", replica.CA}
	}
	for i := 1; i <= n; i++ {
		id := proto.ReplicaID(fmt.Sprintf("r%d", i))
		addr, stop, err := e.startReplicaProcess(ctx, append(append([]string{}, e.cfg.ReplicaCommand...), tlsArgs...),
			filepath.Join(base, string(id)), id, e.cfg.SizeBytes)
		if err != nil {
			closeAll()
			return "", nil, err
		}
		closers = append(closers, stop)
		cfg.Replicas = append(cfg.Replicas, enginerun.Replica{ID: id, Addr: addr})
	}
	cfg.Dial = tcp.NewDialer(dc)
	return e.startEngine(ctx, cfg, closers, closeAll)
}

// benchPKI makes a CA in dir and certificates for the engine and the
// replicas (valid for 127.0.0.1).
func benchPKI(dir string) (engine, replica certs.Files, err error) {
	now := time.Now()
	if err := certs.Init(dir, "bench", now); err != nil {
		return engine, replica, err
	}
	files := func(name string) (certs.Files, error) {
		err := certs.Issue(dir, certs.IssueOptions{Name: name, Hosts: []string{"127.0.0.1"}}, now)
		return certs.Files{Cert: filepath.Join(dir, certs.CertFile(name)), Key: filepath.Join(dir, certs.KeyFile(name)),
			CA: filepath.Join(dir, certs.CAFile)}, err
	}
	if engine, err = files("engine"); err != nil {
		return engine, replica, err
	}
	replica, err = files("replica")
	return engine, replica, err
}

// ReplicaArgs are the arguments appended to Config.ReplicaCommand to run
// one replica: the process must call ServeReplica with them.
func ReplicaArgs(dir string, id proto.ReplicaID, sizeBytes uint64) []string {
	return []string{"--dir", dir, "--id", string(id), "--size", strconv.FormatUint(sizeBytes, 10)}
}

// listeningPrefix starts the line a replica process prints once it
// listens.
const listeningPrefix = "listening "

func (e *benchEnv) startReplicaProcess(ctx context.Context, command []string, dir string, id proto.ReplicaID, sizeBytes uint64) (string, func(), error) {
	args := append(append([]string{}, command[1:]...), ReplicaArgs(dir, id, sizeBytes)...)
	cmd := exec.CommandContext(ctx, command[0], args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe() // closing it (or our exit) stops the replica
	if err != nil {
		return "", nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start replica %s: %w", id, err)
	}
	pid := cmd.Process.Pid
	stop := func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if !strings.HasPrefix(line, listeningPrefix) {
		stop()
		return "", nil, fmt.Errorf("replica %s did not start: %q %v", id, line, err)
	}
	e.pids = append(e.pids, pid)
	return strings.TrimSpace(strings.TrimPrefix(line, listeningPrefix)), stop, nil
}

// ServeReplica runs one replica for TargetDrover3TCP and TargetDrover3TLS:
// it creates the replica (args as ReplicaArgs makes them, after
// --tls-cert/--tls-key/--tls-ca for TLS) on a filestore, serves it over
// TCP on a loopback port, prints "listening ADDR" on out, and serves
// until stdin reaches EOF (its parent closed it or exited) or ctx ends.
func ServeReplica(ctx context.Context, args []string, stdin io.Reader, out io.Writer) error {
	var dir, id string
	var sizeBytes uint64
	var tlsFiles certs.Files
	for i := 0; i+1 < len(args); i += 2 {
		switch args[i] {
		case "--tls-cert":
			tlsFiles.Cert = args[i+1]
		case "--tls-key":
			tlsFiles.Key = args[i+1]
		case "--tls-ca":
			tlsFiles.CA = args[i+1]
		case "--dir":
			dir = args[i+1]
		case "--id":
			id = args[i+1]
		case "--size":
			n, err := strconv.ParseUint(args[i+1], 10, 64)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			sizeBytes = n
		default:
			return fmt.Errorf("unknown argument %q", args[i])
		}
	}
	if dir == "" || id == "" || sizeBytes == 0 {
		return fmt.Errorf("want --dir, --id and --size, got %q", args)
	}
	r, closeReplica, err := openReplica(dir, proto.ReplicaID(id), sizeBytes)
	if err != nil {
		return err
	}
	defer closeReplica()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := tcp.NewServer(r, func(string, ...any) {})
	if !tlsFiles.Empty() {
		cfg, err := tlsFiles.ServerConfig()
		if err != nil {
			return err
		}
		srv.RequireTLS(cfg)
	}
	defer srv.Close()
	go srv.Serve(ln)
	fmt.Fprintf(out, "%s%s\n", listeningPrefix, ln.Addr())
	eof := make(chan struct{})
	go func() { io.Copy(io.Discard, stdin); close(eof) }()
	select {
	case <-eof:
	case <-ctx.Done():
	}
	return nil
}
