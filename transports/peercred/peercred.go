// Package peercred names the local user at the other end of a
// connection, so a server can serve only its own user (and root) on
// sockets that anyone on the host can reach: the kernel's SO_PEERCRED on
// a unix socket, and, for TCP over loopback, the owner of the peer's
// socket as /proc/net/tcp and /proc/net/tcp6 list it (the peer is on
// this host, in this network namespace, so its socket is there).
package peercred

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// ErrNotLocal is returned for a TCP connection whose peer is not on
// loopback: its user cannot be known.
var ErrNotLocal = errors.New("peer is not on this host's loopback")

// ErrNotAllowed is returned by Check for a peer of another user.
var ErrNotAllowed = errors.New("connection from another user")

// UID returns the uid of the process at the other end of c: a unix
// socket connection, or a TCP connection over loopback.
func UID(c net.Conn) (uint32, error) {
	switch c := c.(type) {
	case *net.UnixConn:
		return unixUID(c)
	case *net.TCPConn:
		local, lok := c.LocalAddr().(*net.TCPAddr)
		remote, rok := c.RemoteAddr().(*net.TCPAddr)
		if !lok || !rok || !remote.IP.IsLoopback() {
			return 0, ErrNotLocal
		}
		return tcpUID(remote, local)
	}
	return 0, fmt.Errorf("peer credentials of a %T: %w", c, ErrNotLocal)
}

// Check returns nil if the peer of c (unix socket or loopback TCP) runs
// as the current effective user or as root, ErrNotAllowed (wrapped, with
// the peer's uid) if not, and another error if its user cannot be told.
func Check(c net.Conn) error {
	uid, err := UID(c)
	if err != nil {
		return err
	}
	if int(uid) != os.Geteuid() && uid != 0 {
		return fmt.Errorf("%w: %s", ErrNotAllowed, Describe(uid))
	}
	return nil
}

// Describe names a uid for logs: "1000(alice)".
func Describe(uid uint32) string {
	s := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(s); err == nil {
		s += "(" + u.Username + ")"
	}
	return s
}

func unixUID(c *net.UnixConn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *syscall.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	return cred.Uid, nil
}

// tcpUID finds the socket whose local address is peer and remote address
// is us, and returns its owner.
func tcpUID(peer, us *net.TCPAddr) (uint32, error) {
	for _, path := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		uid, found, err := scanTCP(path, peer, us)
		if err != nil {
			return 0, err
		}
		if found {
			return uid, nil
		}
	}
	return 0, fmt.Errorf("peer %s: no such socket in /proc/net/tcp{,6}", peer)
}

func scanTCP(path string, peer, us *net.TCPAddr) (uint32, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false, fmt.Errorf("peer credentials: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 {
			continue
		}
		local, err1 := parseAddr(fields[1])
		remote, err2 := parseAddr(fields[2])
		if err1 != nil || err2 != nil || !sameAddr(local, peer) || !sameAddr(remote, us) {
			continue
		}
		uid, err := strconv.ParseUint(fields[7], 10, 32)
		if err != nil {
			return 0, false, fmt.Errorf("peer credentials: %s: uid %q: %w", path, fields[7], err)
		}
		return uint32(uid), true, nil
	}
	return 0, false, sc.Err()
}

// parseAddr parses /proc/net/tcp's "0100007F:1F90": the address as
// 32-bit words in host (little-endian) order, the port in hex.
func parseAddr(s string) (*net.TCPAddr, error) {
	host, port, ok := strings.Cut(s, ":")
	if !ok {
		return nil, fmt.Errorf("address %q", s)
	}
	b, err := hex.DecodeString(host)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return nil, fmt.Errorf("address %q", s)
	}
	ip := make(net.IP, len(b))
	for i := 0; i < len(b); i += 4 {
		binary.BigEndian.PutUint32(ip[i:], binary.LittleEndian.Uint32(b[i:]))
	}
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return nil, fmt.Errorf("port in %q: %w", s, err)
	}
	return &net.TCPAddr{IP: ip, Port: int(p)}, nil
}

func sameAddr(a, b *net.TCPAddr) bool { return a.Port == b.Port && a.IP.Equal(b.IP) }

// LocalOnly wraps l so that Accept returns only connections that pass
// Check, or come from beyond loopback (which the server must
// authenticate itself); refused ones are closed and reported to refused
// (which may be nil). For HTTP and other servers that take a listener.
func LocalOnly(l net.Listener, refused func(c net.Conn, err error)) net.Listener {
	return &localListener{Listener: l, refused: refused}
}

type localListener struct {
	net.Listener
	refused func(net.Conn, error)
}

func (l *localListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
			return c, nil
		}
		if err := Check(c); err != nil {
			if l.refused != nil {
				l.refused(c, err)
			}
			c.Close()
			continue
		}
		return c, nil
	}
}
