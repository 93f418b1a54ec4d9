package control

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/drover-io/drover/transports/certs"
	"github.com/drover-io/drover/transports/peercred"
)

// Who may call the control API, and how a call names its caller:
//
//   - On the unix socket (the default, mode 0600 in a directory only its
//     owner can enter) the kernel says who connected (SO_PEERCRED); only
//     the server's own user and root are served.
//   - Over TCP with mutual TLS every caller presents a certificate from
//     the cluster's CA; its subject names the caller.
//   - Over TCP without TLS: on loopback the owner of the peer's socket
//     (transports/peercred, from /proc/net/tcp) must be the server's own
//     user or root, as on the unix socket; beyond loopback nobody is
//     authenticated, which only an explicit insecure override allows
//     (see CheckListen).
//
// Every call that changes the volume or reads its data is logged with the
// caller's identity.

// PeerCred is the AuthInfo of a caller on the unix socket.
type PeerCred struct {
	credentials.CommonAuthInfo
	UID, GID uint32
	PID      int32
}

// AuthType implements credentials.AuthInfo.
func (PeerCred) AuthType() string { return "peercred" }

// insecureTCP is the AuthInfo of a caller over plain TCP; on loopback
// its uid is known.
type insecureTCP struct {
	credentials.CommonAuthInfo
	uid      uint32
	knownUID bool
}

func (insecureTCP) AuthType() string { return "insecure" }

// serverCreds are the control server's transport credentials: peer
// credentials on unix sockets, mutual TLS (when configured) on TCP, and
// nothing (loopback by choice, or an explicit insecure listen) otherwise.
type serverCreds struct {
	tls credentials.TransportCredentials // nil: plain TCP
	uid int                              // the server's effective uid
}

func (c *serverCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if uc, ok := conn.(*net.UnixConn); ok {
		pc, err := peerCred(uc)
		if err != nil {
			return nil, nil, fmt.Errorf("control API: peer credentials: %w", err)
		}
		if int(pc.UID) != c.uid && pc.UID != 0 {
			slog.Warn("control API: refused a caller on the unix socket", "caller", describePeerCred(pc))
			return nil, nil, fmt.Errorf("control API: uid %d may not call it", pc.UID)
		}
		return conn, pc, nil
	}
	if c.tls != nil {
		return c.tls.ServerHandshake(conn)
	}
	ai := insecureTCP{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}
	if ta, ok := conn.RemoteAddr().(*net.TCPAddr); ok && ta.IP.IsLoopback() {
		uid, err := peercred.UID(conn)
		if err != nil {
			slog.Warn("control API: refused a loopback caller whose user cannot be told", "remote", conn.RemoteAddr().String(), "err", err)
			return nil, nil, fmt.Errorf("control API: %w", err)
		}
		if int(uid) != c.uid && uid != 0 {
			slog.Warn("control API: refused a loopback caller", "caller", "uid="+peercred.Describe(uid)+" from "+conn.RemoteAddr().String())
			return nil, nil, fmt.Errorf("control API: uid %d may not call it", uid)
		}
		ai.uid, ai.knownUID = uid, true
	}
	return conn, ai, nil
}

func (c *serverCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("control: server credentials used by a client")
}

func (c *serverCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "drover-control"}
}

func (c *serverCreds) Clone() credentials.TransportCredentials { cp := *c; return &cp }

func (c *serverCreds) OverrideServerName(string) error { return nil }

func peerCred(uc *net.UnixConn) (PeerCred, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return PeerCred{}, err
	}
	var ucred *syscall.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		ucred, serr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return PeerCred{}, err
	}
	if serr != nil {
		return PeerCred{}, serr
	}
	return PeerCred{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		UID: ucred.Uid, GID: ucred.Gid, PID: ucred.Pid}, nil
}

func describePeerCred(pc PeerCred) string {
	name := strconv.FormatUint(uint64(pc.UID), 10)
	if u, err := user.LookupId(name); err == nil {
		name += "(" + u.Username + ")"
	}
	return fmt.Sprintf("uid=%s pid=%d", name, pc.PID)
}

// Caller names the caller of the call ctx belongs to, for logs.
func Caller(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "unknown"
	}
	switch ai := p.AuthInfo.(type) {
	case PeerCred:
		return "unix " + describePeerCred(ai)
	case credentials.TLSInfo:
		return "tls " + certs.Subject(ai.State) + " from " + p.Addr.String()
	case insecureTCP:
		if ai.knownUID {
			return "tcp uid=" + peercred.Describe(ai.uid) + " from " + p.Addr.String()
		}
	}
	return "unauthenticated tcp " + p.Addr.String()
}

// readOnly are the calls that neither change the volume nor return its
// data; every other call is logged with its caller.
var readOnly = map[string]bool{
	"VolumeInfo": true, "SnapshotList": true, "ReplicaList": true, "ChangedExtents": true,
}

func audit(ctx context.Context, fullMethod string, err error) {
	method := fullMethod[strings.LastIndex(fullMethod, "/")+1:]
	if readOnly[method] {
		return
	}
	attrs := []any{"method", method, "caller", Caller(ctx)}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	slog.Info("control call", attrs...)
}

// ServerConfig says how the control server authenticates callers.
type ServerConfig struct {
	// TLS, when set, is the mutual-TLS configuration of TCP listeners
	// (certs.Files.ServerConfig). Unix sockets never use TLS.
	TLS *tls.Config
}

// ServerOptions are the gRPC options of a control server: message sizes
// for the debug Write, the transport credentials above and the audit log.
func ServerOptions(cfg ...ServerConfig) []grpc.ServerOption {
	var c ServerConfig
	if len(cfg) > 0 {
		c = cfg[0]
	}
	creds := &serverCreds{uid: os.Geteuid()}
	if c.TLS != nil {
		creds.tls = credentials.NewTLS(c.TLS)
	}
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxIOBytes + 1<<20),
		grpc.Creds(creds),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			resp, err := h(ctx, req)
			audit(ctx, info.FullMethod, err)
			return resp, err
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			err := h(srv, ss)
			audit(ss.Context(), info.FullMethod, err)
			return err
		}),
	}
}

// ErrInsecureListen is returned by CheckListen for a plain TCP listen
// beyond loopback.
var ErrInsecureListen = errors.New("refusing an unauthenticated control API beyond loopback")

// CheckListen decides whether the control API may listen on the TCP
// address addr: with mutual TLS anywhere; without it on loopback only,
// unless insecure is set (which the caller then warns about on every
// start).
func CheckListen(addr string, withTLS, insecure bool) error {
	if withTLS || insecure {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("control address %q: %w", addr, err)
	}
	if isLoopback(host) {
		return nil
	}
	return fmt.Errorf("control API on %s: %w: anyone who can reach it could write, revert or delete the volume; "+
		"give it certificates (drover certs init, drover certs issue, then --tls-cert/--tls-key/--tls-ca), "+
		"listen on 127.0.0.1, or pass --insecure-listen on a network you trust", addr, ErrInsecureListen)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// IsUnix reports whether a control address names a unix socket
// ("unix:PATH", or a path with a slash), and returns the path.
func IsUnix(addr string) (string, bool) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return p, true
	}
	if strings.Contains(addr, "/") {
		return addr, true
	}
	return "", false
}

// ListenUnix listens on a unix socket at path, mode 0600, creating its
// directory (0700) if missing. A socket file left by a process that is
// gone is replaced; one a live server answers on is an error.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
		c, derr := net.DialTimeout("unix", path, time.Second)
		if derr == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: another process serves on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket %s: remove stale socket: %w", path, err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	// Between bind and chmod the socket has the umask's mode; the
	// directory (0700 when made here) and the uid check in
	// ServerHandshake keep others out meanwhile.
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return lis, nil
}
